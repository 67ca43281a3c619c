"""Real radio stations for tests: Icecast2 fed by FFmpeg, and an HLS live stream made by FFmpeg
from a test tone, served over HTTP with a request log the test reads.

* :class:`WebServer` serves a directory on 127.0.0.1 (a free port), plus fixed answers a test
  registers (:meth:`WebServer.route`): a web page, a redirect, a playlist, a server trickling a
  byte a second. Every request is logged (:attr:`WebServer.requests`: monotonic time, path,
  status), so a test can assert there was no request storm.
* :class:`HlsStation` runs ``ffmpeg -re`` on a sine tone into a live HLS playlist (1 s segments,
  a sliding window of 6) in a :class:`WebServer`'s directory.
* :class:`IcecastStation` runs Debian's ``icecast2`` on a free port with a generated config, and
  ``ffmpeg -re`` as its source (MP3 at 128 kbit/s on ``/live.mp3``). Icecast serves
  ``/live.mp3.m3u`` (a playlist naming the stream) by itself. Its access log is read by
  :meth:`IcecastStation.requests` (Icecast writes a line when a connection ends).

Both binaries come from Debian packages that ``scripts/bootstrap.sh`` installs; a missing one
raises (a test must fail loudly, never be skipped as a pass).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.lab.tools import free_port, need
from tests.lab.web import LabServer, QuietHttpServer

__all__ = ["HlsStation", "IcecastStation", "Request", "WebServer"]


@dataclass
class Request:
    """One request: when it came (monotonic), its path, the status answered (0: none, the
    listener hung up first) and when the server was done with it (None: still serving)."""

    mono: float
    path: str
    status: int = 0
    ended: float | None = None


Route = Callable[[SimpleHTTPRequestHandler], int]  # answers, returns the status it sent


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        owner = self.server.owner
        route = owner.routes.get(self.path.split("?", 1)[0])
        request = owner.log(self.path)
        try:
            if route is not None:
                request.status = route(self)
            else:
                request.status = 200 if owner.exists(self.path) else 404
                super().do_GET()
        except OSError:
            pass  # the listener hung up
        finally:
            request.ended = time.monotonic()

    def end_headers(self) -> None:
        if self.path.endswith(".m3u8"):
            self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def guess_type(self, path: Any) -> str:
        text = str(path)
        if text.endswith(".m3u8"):
            return "application/vnd.apple.mpegurl"
        if text.endswith(".ts"):
            return "video/mp2t"
        return str(super().guess_type(path))

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(QuietHttpServer):
    owner: WebServer


class WebServer(LabServer):
    """Files from ``directory`` and registered routes, on 127.0.0.1; logs every request."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        super().__init__(_make_handler(directory), server_class=_Server, start=False)
        assert isinstance(self.httpd, _Server)
        self.httpd.owner = self
        self.start()

    def route(self, path: str, answer: Route) -> str:
        self.routes[path] = answer
        return self.url(path)

    def exists(self, path: str) -> bool:
        return (self.directory / path.split("?", 1)[0].lstrip("/")).is_file()

    def log(self, path: str) -> Request:
        request = Request(time.monotonic(), path)
        with self._lock:
            self._requests.append(request)
        return request

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    @property
    def serving(self) -> int:
        """How many requests are still being answered (a hung-up listener is seen at the
        server's next write)."""
        with self._lock:
            return sum(1 for r in self._requests if r.ended is None)


def _make_handler(directory: Path) -> type[_Handler]:
    class Handler(_Handler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)

    return Handler


# --- fixed answers for bad input ----------------------------------------------------------


def answer(status: int, content_type: str, body: bytes, **headers: str) -> Route:
    def route(handler: SimpleHTTPRequestHandler) -> int:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.end_headers()
        handler.wfile.write(body)
        return status

    return route


def redirect(location: str) -> Route:
    return answer(302, "text/plain", b"moved", Location=location)


def trickle(byte_every_s: float = 1.0, limit_s: float = 60.0) -> Route:
    """Answers one byte of the status line each ``byte_every_s`` (a dying uplink)."""

    def route(handler: SimpleHTTPRequestHandler) -> int:
        reply = b"HTTP/1.0 200 OK\r\nContent-Type: audio/mpeg\r\n\r\n" + b"\xff" * 1000
        end = time.monotonic() + limit_s
        for byte in reply:
            if time.monotonic() > end:
                break
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(byte_every_s)
        return 200  # a hung-up listener shows as an OSError at the next write

    return route


# --- the stations --------------------------------------------------------------------------


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _live_tone(freq_hz: float) -> list[str]:
    """FFmpeg reading a sine tone at real time (``-re``), as a station's source; its output
    options follow."""
    return [
        need("ffmpeg", package="ffmpeg"),
        "-nostdin",
        "-loglevel",
        "error",
        "-re",
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency={freq_hz:g}:sample_rate=44100",
    ]


class HlsStation:
    """A live HLS stream of a sine tone at ``/live/index.m3u8`` on a :class:`WebServer`."""

    def __init__(self, root: Path, freq_hz: float = 440.0) -> None:
        self.dir = root / "hls"
        (self.dir / "live").mkdir(parents=True, exist_ok=True)
        self.web = WebServer(self.dir)
        self.playlist = self.dir / "live" / "index.m3u8"
        self._ffmpeg: subprocess.Popen[bytes] | None = subprocess.Popen(
            [
                *_live_tone(freq_hz),
                "-c:a",
                "aac",
                "-b:a",
                "64k",
                "-f",
                "hls",
                "-hls_time",
                "1",
                "-hls_list_size",
                "6",
                "-hls_flags",
                "delete_segments+omit_endlist",
                str(self.playlist),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _wait(self._ready, 20, "ffmpeg's first HLS segments")
        except BaseException:
            self.close()
            raise

    def _ready(self) -> bool:
        if self._ffmpeg is not None and self._ffmpeg.poll() is not None:
            raise RuntimeError(f"ffmpeg (HLS) exited {self._ffmpeg.returncode}")
        try:
            return self.playlist.read_text().count("#EXTINF") >= 3
        except OSError:
            return False

    @property
    def url(self) -> str:
        return self.web.url("/live/index.m3u8")

    def freeze(self) -> None:
        """The encoder stops: the playlist stays as it is, and never gets a new segment."""
        _stop(self._ffmpeg)
        self._ffmpeg = None

    def close(self) -> None:
        _stop(self._ffmpeg)
        self.web.close()


_ICECAST_XML = """<icecast>
  <location>test</location><admin>test@localhost</admin>
  <hostname>127.0.0.1</hostname>
  <limits><clients>20</clients><sources>2</sources><burst-size>65535</burst-size></limits>
  <authentication>
    <source-password>{password}</source-password>
    <relay-password>{password}</relay-password>
    <admin-user>admin</admin-user><admin-password>{password}</admin-password>
  </authentication>
  <listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
  <fileserve>1</fileserve>
  <paths>
    <basedir>{root}</basedir><logdir>{root}</logdir>
    <webroot>/usr/share/icecast2/web</webroot><adminroot>/usr/share/icecast2/admin</adminroot>
  </paths>
  <logging>
    <accesslog>access.log</accesslog><errorlog>error.log</errorlog><loglevel>2</loglevel>
  </logging>
  <security><chroot>0</chroot>{changeowner}</security>
</icecast>
"""


class IcecastStation:
    """Icecast2 on a free port with ``/live.mp3`` fed by FFmpeg (a sine tone, MP3 128 kbit/s)."""

    password = "loa-test-source"  # a throw-away server on loopback

    def __init__(self, root: Path, freq_hz: float = 440.0) -> None:
        self.port = free_port()
        changeowner = ""
        if os.geteuid() == 0:
            # icecast2 refuses to run as root: it drops to nobody, who must reach its log
            # directory (a test's tmp_path is private to root), so that lives in /tmp itself.
            changeowner = "<changeowner><user>nobody</user><group>nogroup</group></changeowner>"
            self.root = Path(tempfile.mkdtemp(prefix="loa-icecast-"))
            os.chmod(self.root, 0o777)  # noqa: S103 - a throw-away log directory
        else:
            self.root = root / "icecast"
            self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "icecast.xml"
        config.write_text(
            _ICECAST_XML.format(
                password=self.password, port=self.port, root=self.root, changeowner=changeowner
            ),
            encoding="utf-8",
        )
        self._icecast: subprocess.Popen[bytes] | None = subprocess.Popen(
            [need("icecast2", package="icecast2"), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._ffmpeg: subprocess.Popen[bytes] | None = None
        try:
            _wait(self._listening, 20, "icecast2 to listen")
            self._ffmpeg = subprocess.Popen(
                [
                    *_live_tone(freq_hz),
                    "-c:a",
                    "libmp3lame",
                    "-b:a",
                    "128k",
                    "-content_type",
                    "audio/mpeg",
                    "-f",
                    "mp3",
                    f"icecast://source:{self.password}@127.0.0.1:{self.port}/live.mp3",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _wait(self._on_air, 20, "ffmpeg's source on icecast2")
        except BaseException:
            self.close()
            raise

    def url(self, path: str = "/live.mp3") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _listening(self) -> bool:
        if self._icecast is not None and self._icecast.poll() is not None:
            raise RuntimeError(f"icecast2 exited {self._icecast.returncode}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def _on_air(self) -> bool:
        if self._ffmpeg is not None and self._ffmpeg.poll() is not None:
            raise RuntimeError(f"ffmpeg (icecast source) exited {self._ffmpeg.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"GET /status-json.xsl HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
        except OSError:
            return False
        return b"/live.mp3" in data

    def requests(self) -> list[str]:
        """The request lines of the connections that ended (Icecast's access log)."""
        log = self.root / "access.log"
        if not log.exists():
            return []
        return [line for line in log.read_text(errors="replace").splitlines() if '"GET ' in line]

    def stop_source(self) -> None:
        _stop(self._ffmpeg)
        self._ffmpeg = None

    def close(self) -> None:
        _stop(self._ffmpeg)
        _stop(self._icecast)
        if self.root.name.startswith("loa-icecast-"):
            shutil.rmtree(self.root, ignore_errors=True)
