"""The lab's HTTP servers: one way to run a server in a thread, and the plain servers on it.

* :class:`LabServer` runs any request handler on a free port of one address (loopback unless
  told; the link tier gives central's address), in a daemon thread, quiet when a client hangs up
  (the player and the fetcher hang up on purpose), optionally over TLS. Every other server of the
  lab is one of these: :class:`MediaServer`, :class:`RoutedServer`, the stations' web server
  (:mod:`tests.lab.stations`) and the live stream (:mod:`tests.lab.streams`).
* :class:`MediaServer` serves a directory and records each request line (what the daemon
  fetched, how often).
* :class:`RoutedServer` answers each path as the test says (:data:`Behaviour`: a body, a
  redirect, a stall, a cut) and records each path asked, so "no request was made" can be
  asserted.
"""

from __future__ import annotations

import functools
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import BaseRequestHandler
from types import TracebackType
from typing import Any, Self

#: What a :class:`RoutedServer` does for one path: answer through the handler; the event is set
#: when the server closes (a behaviour that stalls waits on it).
Behaviour = Callable[[BaseHTTPRequestHandler, threading.Event], None]


class QuietHttpServer(ThreadingHTTPServer):
    """A threading HTTP server that prints nothing when a client hangs up mid-answer."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up are part of these tests


class QuietHandler(SimpleHTTPRequestHandler):
    """Files from a directory, without a log line per request."""

    def log_message(self, format: str, *args: object) -> None:
        pass


class RecordingHandler(QuietHandler):
    """Also appends each request line to ``requests`` (so a test can count what was fetched)."""

    def __init__(self, *args: Any, requests: list[str], **kwargs: Any) -> None:
        self._requests = requests  # set first: the base class handles the request in __init__
        super().__init__(*args, **kwargs)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self._requests.append(self.requestline)
        return ok


class LabServer:
    """``handler`` served on a free port of ``host`` from a daemon thread.

    Serving starts at once unless ``start=False`` (then :meth:`start` does). :meth:`close` (or the
    end of a ``with``) shuts it down and joins its thread.
    """

    def __init__(
        self,
        handler: Callable[..., BaseRequestHandler],
        *,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
        server_class: type[QuietHttpServer] = QuietHttpServer,
        start: bool = True,
    ) -> None:
        self.host = host
        self.httpd = server_class((host, 0), handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "http" if tls is None else "https"
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        if start:
            self.start()

    def url(self, path: str) -> str:
        """The URL of ``path`` (which starts with ``/``) on this server."""
        return f"{self.scheme}://{self.host}:{self.port}{path}"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
            self._thread.join()
        self.httpd.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class MediaServer(LabServer):
    """A plain HTTP server serving one directory.

    ``requests`` lists the request line of every request it received, in order.
    """

    def __init__(self, directory: Path, *, host: str = "127.0.0.1") -> None:
        self.directory = directory
        self.requests: list[str] = []
        super().__init__(
            functools.partial(RecordingHandler, directory=str(directory), requests=self.requests),
            host=host,
        )

    def url(self, name: str) -> str:
        """The URL of the file ``name`` in the served directory."""
        return super().url(f"/{name}")


class RoutedServer(LabServer):
    """``routes[path]`` decides what a GET of ``path`` gets (404 for a path with no route);
    ``requests`` lists every path asked, in order."""

    def __init__(self, *, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Behaviour] = {}
        self.requests: list[str] = []
        self.stopping = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append(self.path)
                behaviour = owner.routes.get(self.path)
                try:
                    if behaviour is None:
                        send(self, 404, b"not found")
                    else:
                        behaviour(self, owner.stopping)
                except OSError:
                    pass  # the client went away: expected in several tests

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(Handler, host=host, tls=tls)

    def url(self, path: str, host: str | None = None) -> str:
        """The URL of ``path``, naming the server as ``host`` if given (a name for the same
        address, to test an allowlist)."""
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def close(self) -> None:
        self.stopping.set()
        super().close()


def send(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> None:
    """A complete answer with a ``Content-Length``."""
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def serve(body: bytes, delay_s: float = 0.0, headers: dict[str, str] | None = None) -> Behaviour:
    """A route answering ``body`` after ``delay_s``."""

    def behaviour(handler: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
        stopping.wait(delay_s)
        send(handler, 200, body, headers)

    return behaviour
