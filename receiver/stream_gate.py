"""A gate on loopback between libVLC and one Icecast/HTTP station, so that a station that breaks
in the middle of a relay is never asked in a tight loop.

Why: an answer with Icecast's ``icy-*`` headers puts libVLC 3 on its legacy ``http`` access,
which reconnects whenever a read ends, at once and whatever the media options say. A station
that starts answering and hanging up at once in the middle of a relay (its source died, a
misconfigured mount) was so asked about a thousand times a second, with no event, until the
stall watchdog stopped the item 8 s later. The resolver's first-bytes probe catches that only at
the start of a relay.

:class:`StreamGate` listens on ``127.0.0.1`` (a free port); libVLC opens :attr:`StreamGate.url`.
For each of libVLC's requests the gate asks the station itself (one ``GET``, the connection
made by :func:`receiver.streams.connect`, bounded like the resolver's and called off by
:meth:`StreamGate.close`) and passes the body back under plain HTTP headers (no
``icy-*``, so libVLC keeps its newer access, which with ``:http-continuous`` reconnects once
per close). Its rules:

* at most one request to the station every :data:`MIN_INTERVAL_S`;
* once the station hung up without sending any audio, or answered anything but 200, every
  later request of libVLC is answered 503 without asking the station: libVLC ends the item
  (``PlaybackEnded``) and the daemon's restart budget decides, with its backoff.

:meth:`StreamGate.close` ends every connection at once (the player calls it when the item
is stopped or replaced). It only shuts the sockets down, which wakes the thread blocked on each;
each socket is closed by the one thread that uses it, the listener by the accept thread. Why:
CPython's socket calls read the descriptor, let go of the interpreter lock, then make the system
call, so a socket closed by another thread may be used by number after its number went to the
next socket of the process (the kernel hands out the lowest free one): the next relay's gate, or
libVLC's connection to it, which would then lose its connection or carry the old station's audio.
A shut-down socket keeps its number until its thread closes it, and fails every later call.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

from receiver.core import urls
from receiver.streams import RESOLVE_DEADLINE_S, Deadline, StreamRefused, connect, get_head

__all__ = ["MIN_INTERVAL_S", "StreamGate"]

MIN_INTERVAL_S: Final = 1.0  # between two requests to the station
POLL_S: Final = 0.25  # how often a blocked wait asks whether the gate was closed
ACCEPT_END_S: Final = 1.0  # close() waits this long at most for the accept thread (woken at once)
_REQUEST_LIMIT: Final = 16 * 1024  # libVLC's request head
_REFUSED: Final = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"


class StreamGate:
    """Passes libVLC's requests for ``url`` (already resolved and checked) to the station."""

    def __init__(self, url: str) -> None:
        self._target = _target(url)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        # The sockets not yet closed by their thread (listener included): close() shuts these
        # down under the lock, and a thread takes its socket out under the lock before closing
        # it, so close() never touches a number that may already name another socket.
        self._open: set[socket.socket] = {self._listener}
        self._threads: set[threading.Thread] = set()  # the gate's threads still running
        self._closed = False
        self._spent = False  # the station hung up without audio: libVLC gets 503 from now on
        self._last_asked = -MIN_INTERVAL_S
        self._turn = threading.Lock()  # one request to the station at a time
        self._acceptor = self._start(self._accept, "stream-gate")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/stream"

    def close(self) -> None:
        """End the listener and every connection (libVLC's and the station's). Idempotent.

        Shuts them down (their threads close them and end within :data:`POLL_S`, see
        :meth:`join`) and waits for the accept thread, which ends at once: the listener is
        closed on return, and a closed gate never accepts again."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for sock in self._open:
                # socket.socket's own shutdown, also for an ``https`` station: SSLSocket's
                # would drop the TLS object under the thread reading it (a ValueError there).
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
        self._acceptor.join(ACCEPT_END_S)

    def join(self, timeout_s: float) -> bool:
        """Wait for every thread of the (closed) gate to end, at most ``timeout_s``; whether
        they all have."""
        give_up = time.monotonic() + timeout_s
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, give_up - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    # --- threads ------------------------------------------------------------------------------

    def _start(self, work: Callable[..., None], name: str, *args: object) -> threading.Thread:
        """A thread of the gate, known to :meth:`join` (called before the gate is shared, or
        under the lock by the accept thread, having seen the gate still open)."""
        thread = threading.Thread(target=self._run, args=(work, *args), name=name, daemon=True)
        self._threads.add(thread)
        thread.start()
        return thread

    def _run(self, work: Callable[..., None], *args: object) -> None:
        try:
            work(*args)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _accept(self) -> None:
        """libVLC's connections, each to a thread of its own; the listener is closed here only."""
        try:
            while not self._closed:
                try:
                    client, _ = self._listener.accept()
                except OSError:
                    return  # shut down by close() (or out of descriptors: libVLC is refused)
                with self._lock:
                    if self._closed:
                        client.close()
                        return
                    self._open.add(client)
                    self._start(self._serve, "stream-gate-serve", client)
        finally:
            self._drop(self._listener)

    def _keep(self, sock: socket.socket) -> bool:
        """Whether ``sock`` (the caller's) joins the gate's open sockets; closed if not."""
        with self._lock:
            if self._closed:
                sock.close()
                return False
            self._open.add(sock)
            return True

    def _drop(self, sock: socket.socket) -> None:
        """Close ``sock``: only by the thread using it, out of close()'s reach first."""
        with self._lock:
            self._open.discard(sock)
        sock.close()

    def _serve(self, client: socket.socket) -> None:
        station: socket.socket | None = None
        try:
            if not self._read_request(client):
                return
            with self._turn:
                answered = self._ask_station()
            if answered is None:
                if not self._closed:  # closing hangs up on libVLC, with no answer
                    client.sendall(_REFUSED)
                return
            station, head, rest = answered
            client.sendall(head + rest)
            if not self._pump(station, client, bool(rest)):
                self._spent = True
        except OSError:
            pass
        finally:
            if station is not None:
                self._drop(station)
            self._drop(client)

    def _read_request(self, client: socket.socket) -> bool:
        data = b""
        client.settimeout(POLL_S)
        while b"\r\n\r\n" not in data and len(data) < _REQUEST_LIMIT:
            if self._closed:
                return False
            try:
                chunk = client.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                return False
            data += chunk
        return b"\r\n\r\n" in data

    def _ask_station(self) -> tuple[socket.socket, bytes, bytes] | None:
        """A ``GET`` to the station, at most one every MIN_INTERVAL_S: (its connection, the
        head to give libVLC, the first bytes of the body); None: refuse libVLC."""
        while not self._spent and not self._closed:
            wait = self._last_asked + MIN_INTERVAL_S - time.monotonic()
            if wait <= 0:
                break
            time.sleep(min(wait, POLL_S))
        if self._spent or self._closed:
            return None
        self._last_asked = time.monotonic()
        # The station's name is looked up again for each request (a station may move), within
        # the request's deadline, which close() calls off: a silent name server holds neither
        # the gate nor a stop (libVLC gets a 503 once the lookup gives up).
        deadline = Deadline.after(RESOLVE_DEADLINE_S, lambda: self._closed)
        try:
            sock = connect(self._target, deadline)
        except StreamRefused:
            return None
        if not self._keep(sock):
            return None
        try:
            status, headers, rest = get_head(sock, self._target, deadline)
        except StreamRefused:
            self._drop(sock)
            return None
        if status != 200:
            self._spent = True
            self._drop(sock)
            return None
        content_type = headers.get("content-type", "application/octet-stream")
        head = (
            f"HTTP/1.0 200 OK\r\nContent-Type: {_printable(content_type)}\r\n"
            "Cache-Control: no-cache\r\n\r\n"
        ).encode("latin-1")
        return sock, head, rest

    def _pump(self, station: socket.socket, client: socket.socket, had_audio: bool) -> bool:
        """Station to libVLC until either hangs up or the gate closes; whether audio came.

        The station's socket keeps blocking reads with a short timeout, not select(): an
        ``https`` station's socket may hold decrypted bytes that select() does not see."""
        station.settimeout(POLL_S)
        client.settimeout(None)
        while not self._closed:
            if _hung_up(client):
                return True  # libVLC let go (stopped, or reconnecting on its own)
            try:
                chunk = station.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return had_audio
            had_audio = True
            client.sendall(chunk)
        return True


def _hung_up(client: socket.socket) -> bool:
    """Whether libVLC closed its side (it sends nothing after its request)."""
    readable, _, _ = select.select([client], [], [], 0)
    if not readable:
        return False
    try:
        return not client.recv(4096, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False


def _target(url: str) -> urls.Target:
    """Where the gate's requests go: ``url`` has already passed the allowlist (the resolver)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    port = parts.port or (443 if scheme == "https" else 80)
    return urls.Target(scheme, (parts.hostname or "").rstrip("."), port, path)


def _printable(value: str) -> str:
    return "".join(c for c in value if " " <= c <= "~")[:200]
