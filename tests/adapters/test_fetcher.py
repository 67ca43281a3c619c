"""The media fetcher against a real HTTP server on 127.0.0.1 (no mocks).

The ``server`` fixture is the lab's :class:`~tests.lab.web.RoutedServer`: its behaviour per path
is set by each test and it records every request it receives, so "no request was made" can be
asserted.
"""

from __future__ import annotations

import hashlib
import os
import queue
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from receiver.config_model import MediaConfig
from receiver.core.events import Event, FetchFailed, FetchFinished
from receiver.fetcher import Fetcher, FetchError, check_url, copy_limited, host_allowed
from tests.lab.ca import TestCa
from tests.lab.web import Behaviour, RoutedServer, send, serve

BODY = b"loa-receiver test tone " * 1000  # 23,000 bytes
SHA = hashlib.sha256(BODY).hexdigest()
EVENT_TIMEOUT_S = 5.0


def redirect(location: str, status: int = 302) -> Behaviour:
    def behaviour(handler: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
        send(handler, status, b"", {"Location": location})

    return behaviour


@pytest.fixture
def server() -> Iterator[RoutedServer]:
    s = RoutedServer()
    yield s
    s.close()


class Events:
    """Collects what the fetcher posts, and from which thread."""

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[Event, str]] = queue.Queue()

    def __call__(self, event: Event) -> None:
        self.queue.put((event, threading.current_thread().name))

    def get(self, timeout: float = EVENT_TIMEOUT_S) -> Event:
        return self.queue.get(timeout=timeout)[0]

    def now(self) -> Event:
        """The event posted synchronously by the fetch() that just returned."""
        event, thread = self.queue.get_nowait()
        assert thread == threading.current_thread().name
        return event

    def assert_none(self, wait_s: float = 0.2) -> None:
        with pytest.raises(queue.Empty):
            self.queue.get(timeout=wait_s)


def media(**overrides: Any) -> MediaConfig:
    settings: dict[str, Any] = {
        "allowed_schemes": ("http",),
        "allowed_hosts": ("127.0.0.1",),
        "fetch_deadline_s": 5.0,
        "max_file_bytes": 1_000_000,
    }
    settings.update(overrides)
    return MediaConfig(**settings)


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def make_fetcher(tmp_path: Path, events: Events) -> Iterator[Callable[..., Fetcher]]:
    made: list[Fetcher] = []

    def make(**overrides: Any) -> Fetcher:
        fetcher = Fetcher(media(**overrides), tmp_path / "cache", events)
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        fetcher.close()


def cache_contents(tmp_path: Path) -> list[str]:
    """Every file under the cache, partial ones included, relative to it."""
    root = tmp_path / "cache"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def failed(reason: str, sha: str = SHA) -> Callable[[Event], bool]:
    def check(event: Event) -> bool:
        assert isinstance(event, FetchFailed), event
        assert event.sha256 == sha
        assert event.reason == reason, event
        assert event.detail and len(event.detail) <= 160
        return True

    return check


PART = f".partial/{SHA}.part"


def part_path(tmp_path: Path, sha: str = SHA) -> Path:
    return tmp_path / "cache" / ".partial" / f"{sha}.part"


def keep_part(tmp_path: Path, data: bytes, sha: str = SHA) -> Path:
    """A part file as an interrupted download would have left it."""
    path = part_path(tmp_path, sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


class Ranged:
    """Serves ``body``, answering ``Range: bytes=N-`` with a 206 unless told otherwise.

    Records the Range header and the body bytes sent for every request. ``cut_at``: the first
    request's body stops after that many bytes (the connection then closes). ``on_range``:
    "206" (honour it), "200" (ignore it, send everything), "416", or "bad-range" (a 206 whose
    Content-Range starts elsewhere than asked).
    """

    def __init__(self, body: bytes, cut_at: int | None = None, on_range: str = "206") -> None:
        self.body = body
        self.cut_at = cut_at
        self.on_range = on_range
        self.ranges: list[str | None] = []
        self.sent: list[int] = []

    def __call__(self, handler: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
        header = handler.headers.get("Range")
        self.ranges.append(header)
        body, status, headers = self.body, 200, {}
        if header is not None and self.on_range != "200":
            first = int(header.removeprefix("bytes=").removesuffix("-"))
            if self.on_range == "416":
                self.sent.append(0)
                send(handler, 416, b"", {"Content-Range": f"bytes */{len(self.body)}"})
                return
            if self.on_range == "bad-range":
                first = max(0, first - 10)
            body, status = self.body[first:], 206
            headers = {"Content-Range": f"bytes {first}-{len(self.body) - 1}/{len(self.body)}"}
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        if self.cut_at is not None and len(self.sent) == 0:
            body = body[: self.cut_at]
        handler.wfile.write(body)
        self.sent.append(len(body))


# -- downloads ---------------------------------------------------------------------------------


def test_ok_then_served_from_cache(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    server.routes["/tone.ogg"] = serve(BODY)
    fetcher = make_fetcher()
    assert fetcher.cached_path(SHA) is None

    fetcher.fetch(server.url("/tone.ogg"), SHA, len(BODY))
    event = events.get()
    path = tmp_path / "cache" / SHA
    assert event == FetchFinished(SHA, str(path))
    assert path.read_bytes() == BODY
    assert fetcher.cached_path(SHA) == path
    assert cache_contents(tmp_path) == [SHA]
    assert server.requests == ["/tone.ogg"]

    fetcher.fetch(server.url("/tone.ogg"), SHA, len(BODY))
    assert events.now() == FetchFinished(SHA, str(path))  # posted before fetch() returned
    assert server.requests == ["/tone.ogg"]

    # A new fetcher on the same directory finds the file too.
    fetcher.close()
    again = make_fetcher()
    again.fetch(server.url("/elsewhere"), SHA, len(BODY))
    assert events.now() == FetchFinished(SHA, str(path))
    assert server.requests == ["/tone.ogg"]


def test_cached_file_with_another_size_than_the_pin(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events
) -> None:
    server.routes["/tone.ogg"] = serve(BODY)
    fetcher = make_fetcher()
    fetcher.fetch(server.url("/tone.ogg"), SHA, len(BODY))
    assert isinstance(events.get(), FetchFinished)
    fetcher.fetch(server.url("/tone.ogg"), SHA, len(BODY) + 1)
    assert failed("hash_mismatch")(events.now())
    assert server.requests == ["/tone.ogg"]


def test_chunked_transfer(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events
) -> None:
    def chunked(handler: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
        handler.protocol_version = "HTTP/1.1"
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.send_header("Connection", "close")
        handler.end_headers()
        for start in range(0, len(BODY), 5000):
            piece = BODY[start : start + 5000]
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        handler.wfile.write(b"0\r\n\r\n")

    server.routes["/chunked"] = chunked
    make_fetcher().fetch(server.url("/chunked"), SHA, len(BODY))
    assert isinstance(events.get(), FetchFinished)


def test_not_found(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    make_fetcher().fetch(server.url("/missing"), SHA, len(BODY))
    event = events.get()
    assert failed("download_failed")(event)
    assert isinstance(event, FetchFailed)
    assert "404" in event.detail
    assert cache_contents(tmp_path) == []


def test_connection_refused(make_fetcher: Callable[..., Fetcher], events: Events) -> None:
    # A port that was just free: nothing listens there.
    closed = RoutedServer()
    closed.close()
    make_fetcher().fetch(closed.url("/tone.ogg"), SHA, len(BODY))
    assert failed("download_failed")(events.get())


def test_wrong_bytes_are_not_kept(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    forged = bytes(len(BODY))  # right size, wrong bytes
    server.routes["/tone.ogg"] = serve(forged)
    fetcher = make_fetcher()
    fetcher.fetch(server.url("/tone.ogg"), SHA, len(BODY))
    assert failed("hash_mismatch")(events.get())
    assert cache_contents(tmp_path) == []
    assert fetcher.cached_path(SHA) is None


@pytest.mark.parametrize("served", [BODY[:-1], BODY + b"!"])
def test_announced_length_differs_from_pin(
    server: RoutedServer,
    make_fetcher: Callable[..., Fetcher],
    events: Events,
    tmp_path: Path,
    served: bytes,
) -> None:
    server.routes["/tone.ogg"] = serve(served)
    make_fetcher().fetch(server.url("/tone.ogg"), SHA, len(BODY))
    assert failed("hash_mismatch")(events.get())
    assert cache_contents(tmp_path) == []


def test_body_shorter_than_pin_without_length(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    def short(handler: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
        handler.send_response(200)
        handler.end_headers()  # HTTP/1.0, no length: the body ends when the connection closes
        handler.wfile.write(BODY[:1000])

    server.routes["/short"] = short
    make_fetcher().fetch(server.url("/short"), SHA, len(BODY))
    assert failed("hash_mismatch")(events.get())
    assert cache_contents(tmp_path) == []


def test_connection_cut_before_announced_length(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    def cut(handler: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(BODY)))
        handler.end_headers()
        handler.wfile.write(BODY[:1000])  # then the handler returns and the server closes

    server.routes["/cut"] = cut
    make_fetcher().fetch(server.url("/cut"), SHA, len(BODY))
    assert failed("download_failed")(events.get())
    # Interrupted, not wrong: the bytes so far are kept for resuming, under no cache name.
    assert cache_contents(tmp_path) == [PART]
    assert part_path(tmp_path).read_bytes() == BODY[:1000]


def test_endless_body_stops_after_size_plus_one(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    sent = [0]

    def endless(handler: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
        handler.send_response(200)
        handler.end_headers()
        block = BODY[:4096]
        while not stopping.is_set():
            handler.wfile.write(block)
            sent[0] += len(block)

    server.routes["/endless"] = endless
    started = time.monotonic()
    make_fetcher().fetch(server.url("/endless"), SHA, len(BODY))
    event = events.get()
    assert failed("hash_mismatch")(event)
    assert isinstance(event, FetchFailed)
    assert f"more than {len(BODY)} bytes" in event.detail
    assert time.monotonic() - started < 2.0  # stopped at once, not at the 5 s deadline
    assert cache_contents(tmp_path) == []


def test_copy_limited_never_asks_for_more_than_the_limit() -> None:
    asked: list[int] = []

    def endless(n: int) -> bytes:
        asked.append(n)
        return b"x" * (n + 10)  # a reader that even returns more than asked for

    written: list[bytes] = []
    limit = 200_001
    assert copy_limited(endless, written.append, limit) == limit
    assert sum(asked) == limit
    assert sum(len(w) for w in written) == limit


def test_trickling_body_fails_by_the_deadline(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    def trickle(handler: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(BODY)))
        handler.end_headers()
        for byte in BODY:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            if stopping.wait(0.5):
                return

    server.routes["/trickle"] = trickle
    started = time.monotonic()
    make_fetcher(fetch_deadline_s=1.5).fetch(server.url("/trickle"), SHA, len(BODY))
    event = events.get()
    elapsed = time.monotonic() - started
    assert failed("download_failed")(event)
    assert isinstance(event, FetchFailed)
    assert "deadline" in event.detail
    assert 1.4 < elapsed < 3.0
    assert cache_contents(tmp_path) == [PART]  # kept for resuming
    kept = part_path(tmp_path).read_bytes()
    assert 0 < len(kept) < len(BODY)
    assert BODY.startswith(kept)


def test_trickling_headers_fail_by_the_deadline(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events
) -> None:
    def trickle_headers(handler: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
        handler.wfile.write(b"HTTP/1.0 200 OK\r\n")
        handler.wfile.flush()
        for byte in b"X-Slow: " + b"a" * 1000:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            if stopping.wait(0.2):
                return

    server.routes["/slow-headers"] = trickle_headers
    started = time.monotonic()
    make_fetcher(fetch_deadline_s=1.0).fetch(server.url("/slow-headers"), SHA, len(BODY))
    event = events.get()
    assert failed("download_failed")(event)
    assert isinstance(event, FetchFailed)
    assert "deadline" in event.detail
    assert time.monotonic() - started < 2.5


# -- resuming ----------------------------------------------------------------------------------


def test_resume_after_a_dropped_connection(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    ranged = Ranged(BODY, cut_at=9000)
    server.routes["/tone.ogg"] = ranged
    fetcher = make_fetcher()
    fetcher.fetch(server.url("/tone.ogg"), SHA, len(BODY))
    assert failed("download_failed")(events.get())
    assert part_path(tmp_path).read_bytes() == BODY[:9000]

    fetcher.fetch(server.url("/tone.ogg"), SHA, len(BODY))
    path = tmp_path / "cache" / SHA
    assert events.get() == FetchFinished(SHA, str(path))
    assert path.read_bytes() == BODY
    assert cache_contents(tmp_path) == [SHA]
    assert ranged.ranges == [None, "bytes=9000-"]
    assert ranged.sent == [9000, len(BODY) - 9000]  # the second time, only the rest


def test_resume_across_a_restart(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    keep_part(tmp_path, BODY[:20_000])
    ranged = Ranged(BODY)
    server.routes["/tone.ogg"] = ranged
    make_fetcher().fetch(server.url("/tone.ogg"), SHA, len(BODY))
    assert isinstance(events.get(), FetchFinished)
    assert (tmp_path / "cache" / SHA).read_bytes() == BODY
    assert ranged.ranges == ["bytes=20000-"]
    assert ranged.sent == [len(BODY) - 20_000]


def test_server_that_ignores_range_restarts_from_zero(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    keep_part(tmp_path, BODY[:5000])
    ranged = Ranged(BODY, on_range="200")
    server.routes["/tone.ogg"] = ranged
    make_fetcher().fetch(server.url("/tone.ogg"), SHA, len(BODY))
    assert isinstance(events.get(), FetchFinished)
    assert (tmp_path / "cache" / SHA).read_bytes() == BODY  # not the kept bytes + the whole body
    assert ranged.ranges == ["bytes=5000-"]
    assert cache_contents(tmp_path) == [SHA]


@pytest.mark.parametrize("on_range", ["416", "bad-range"])
def test_416_or_another_range_restarts_from_zero(
    *,
    server: RoutedServer,
    make_fetcher: Callable[..., Fetcher],
    events: Events,
    tmp_path: Path,
    on_range: str,
) -> None:
    keep_part(tmp_path, BODY[:5000])
    ranged = Ranged(BODY, on_range=on_range)
    server.routes["/tone.ogg"] = ranged
    make_fetcher().fetch(server.url("/tone.ogg"), SHA, len(BODY))
    assert isinstance(events.get(), FetchFinished)
    assert (tmp_path / "cache" / SHA).read_bytes() == BODY
    assert ranged.ranges == ["bytes=5000-", None]  # a second request, from zero
    assert cache_contents(tmp_path) == [SHA]


def test_corrupt_kept_bytes_are_dropped_and_downloaded_again(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    keep_part(tmp_path, bytes(5000))  # say, zeros left by a power cut
    ranged = Ranged(BODY)
    server.routes["/tone.ogg"] = ranged
    make_fetcher().fetch(server.url("/tone.ogg"), SHA, len(BODY))
    assert isinstance(events.get(), FetchFinished)
    assert (tmp_path / "cache" / SHA).read_bytes() == BODY
    assert ranged.ranges == ["bytes=5000-", None]


def test_wrong_bytes_from_zero_after_a_resume_fail_and_are_deleted(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    keep_part(tmp_path, BODY[:5000])
    ranged = Ranged(bytes(len(BODY)))  # a server with other bytes of the same length
    server.routes["/tone.ogg"] = ranged
    make_fetcher().fetch(server.url("/tone.ogg"), SHA, len(BODY))
    assert failed("hash_mismatch")(events.get())
    assert ranged.ranges == ["bytes=5000-", None]
    assert cache_contents(tmp_path) == []  # not kept: the bytes are proven wrong


def test_part_file_as_long_as_the_pin_needs_no_request(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    keep_part(tmp_path, BODY)  # finished, but cut off before its rename
    make_fetcher().fetch(server.url("/tone.ogg"), SHA, len(BODY))
    assert events.get() == FetchFinished(SHA, str(tmp_path / "cache" / SHA))
    assert server.requests == []
    assert cache_contents(tmp_path) == [SHA]


def test_part_file_longer_than_the_pin_is_removed(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    keep_part(tmp_path, BODY + b"extra bytes")
    ranged = Ranged(BODY)
    server.routes["/tone.ogg"] = ranged
    make_fetcher().fetch(server.url("/tone.ogg"), SHA, len(BODY))
    assert isinstance(events.get(), FetchFinished)
    assert ranged.ranges == [None]  # not resumed
    assert cache_contents(tmp_path) == [SHA]


def test_day_old_part_file_is_not_resumed(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    fetcher = make_fetcher()
    part = keep_part(tmp_path, BODY[:5000])  # appears after start-up, then ages
    two_days_ago = time.time() - 2 * 86400
    os.utime(part, (two_days_ago, two_days_ago))
    ranged = Ranged(BODY)
    server.routes["/tone.ogg"] = ranged
    fetcher.fetch(server.url("/tone.ogg"), SHA, len(BODY))
    assert isinstance(events.get(), FetchFinished)
    assert ranged.ranges == [None]


def test_resume_keeps_asking_for_the_range_across_redirects(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    keep_part(tmp_path, BODY[:5000])
    ranged = Ranged(BODY)
    server.routes["/tone.ogg"] = ranged
    server.routes["/moved"] = redirect("/tone.ogg")
    make_fetcher().fetch(server.url("/moved"), SHA, len(BODY))
    assert isinstance(events.get(), FetchFinished)
    assert ranged.ranges == ["bytes=5000-"]
    assert (tmp_path / "cache" / SHA).read_bytes() == BODY


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[RoutedServer, Path]]:
    ca = TestCa(tmp_path / "pki")
    server_files = ca.issue("127.0.0.1", server_hosts=["127.0.0.1"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_files.cert, server_files.key)
    s = RoutedServer(tls=context)
    yield s, ca.cert_file
    s.close()


def test_https_with_a_trusted_ca(
    tls_server: tuple[RoutedServer, Path], events: Events, tmp_path: Path
) -> None:
    server, ca = tls_server
    server.routes["/tone.ogg"] = serve(BODY)
    context = ssl.create_default_context(cafile=str(ca))
    fetcher = Fetcher(
        media(allowed_schemes=("https",)), tmp_path / "cache", events, tls_context=context
    )
    try:
        fetcher.fetch(server.url("/tone.ogg"), SHA, len(BODY))
        assert events.get() == FetchFinished(SHA, str(tmp_path / "cache" / SHA))
    finally:
        fetcher.close()


def test_https_with_an_unknown_ca(
    tls_server: tuple[RoutedServer, Path], make_fetcher: Callable[..., Fetcher], events: Events
) -> None:
    server, _ = tls_server
    server.routes["/tone.ogg"] = serve(BODY)
    make_fetcher(allowed_schemes=("https",)).fetch(server.url("/tone.ogg"), SHA, len(BODY))
    event = events.get()
    assert failed("download_failed")(event)
    assert isinstance(event, FetchFailed)
    assert "certificate" in event.detail
    assert server.requests == []


# -- policy ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "policy"),
        ("ftp://127.0.0.1/tone.ogg", "policy"),
        ("https://127.0.0.1/tone.ogg", "policy"),  # scheme not on this device's list
        ("http://localhost/tone.ogg", "policy"),  # the same machine, but not the allowed name
        ("http://user:pw@127.0.0.1/tone.ogg", "policy"),
        ("http://127.0.0.1@evil.example/tone.ogg", "policy"),
        ("http://127.0.0.1\n.evil.example/", "bad_body"),
        ("http:///tone.ogg", "bad_body"),
        ("http://127.0.0.1:99999/tone.ogg", "bad_body"),
        ("http://127.0.0.1/" + "a" * 3000, "bad_body"),
    ],
)
def test_refused_urls_make_no_request(
    *,
    server: RoutedServer,
    make_fetcher: Callable[..., Fetcher],
    events: Events,
    tmp_path: Path,
    url: str,
    reason: str,
) -> None:
    make_fetcher().fetch(url, SHA, len(BODY))
    event = events.now()
    assert failed(reason)(event)
    assert isinstance(event, FetchFailed)
    assert "\n" not in event.detail
    assert server.requests == []
    assert cache_contents(tmp_path) == []


def test_host_with_port_allows_only_that_port(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events
) -> None:
    server.routes["/tone.ogg"] = serve(BODY)
    other_port = make_fetcher(allowed_hosts=(f"127.0.0.1:{server.port + 1}",))
    other_port.fetch(server.url("/tone.ogg"), SHA, len(BODY))
    assert failed("policy")(events.now())
    assert server.requests == []

    this_port = make_fetcher(allowed_hosts=(f"127.0.0.1:{server.port}",))
    this_port.fetch(server.url("/tone.ogg"), SHA, len(BODY))
    assert isinstance(events.get(), FetchFinished)


def test_redirect_to_a_disallowed_host(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    server.routes["/tone.ogg"] = serve(BODY)
    server.routes["/moved"] = redirect(server.url("/tone.ogg", host="localhost"))
    make_fetcher().fetch(server.url("/moved"), SHA, len(BODY))
    assert failed("policy")(events.get())
    assert server.requests == ["/moved"]
    assert cache_contents(tmp_path) == []


def test_redirect_to_a_disallowed_scheme(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events
) -> None:
    server.routes["/moved"] = redirect("file:///etc/passwd", status=301)
    make_fetcher().fetch(server.url("/moved"), SHA, len(BODY))
    assert failed("policy")(events.get())


def test_redirects_within_the_allowlist_are_followed(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events
) -> None:
    server.routes["/tone.ogg"] = serve(BODY)
    server.routes["/a"] = redirect("/b", status=301)
    server.routes["/b"] = redirect(server.url("/c"), status=307)
    server.routes["/c"] = redirect("tone.ogg", status=308)
    make_fetcher().fetch(server.url("/a"), SHA, len(BODY))
    assert isinstance(events.get(), FetchFinished)
    assert server.requests == ["/a", "/b", "/c", "/tone.ogg"]


def test_redirect_loop(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events
) -> None:
    server.routes["/loop"] = redirect("/loop")
    make_fetcher().fetch(server.url("/loop"), SHA, len(BODY))
    assert failed("download_failed")(events.get())
    assert server.requests == ["/loop"] * 4  # the request and three redirects


# -- pins --------------------------------------------------------------------------------------


def test_pinned_size_above_the_limit(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events
) -> None:
    server.routes["/tone.ogg"] = serve(BODY)
    make_fetcher(max_file_bytes=len(BODY) - 1).fetch(server.url("/tone.ogg"), SHA, len(BODY))
    assert failed("too_large")(events.now())
    assert server.requests == []


@pytest.mark.parametrize(
    ("sha", "size"),
    [
        (SHA.upper(), len(BODY)),
        (SHA[:-1], len(BODY)),
        ("../../etc/passwd", len(BODY)),
        (SHA + "\n", len(BODY)),
        (SHA, -1),
    ],
)
def test_malformed_pin(
    *,
    server: RoutedServer,
    make_fetcher: Callable[..., Fetcher],
    events: Events,
    tmp_path: Path,
    sha: str,
    size: int,
) -> None:
    server.routes["/tone.ogg"] = serve(BODY)
    fetcher = make_fetcher()
    fetcher.fetch(server.url("/tone.ogg"), sha, size)
    assert failed("bad_body", sha=sha)(events.now())
    assert server.requests == []
    assert fetcher.cached_path(sha) is None
    assert cache_contents(tmp_path) == []


# -- concurrency and shutdown ------------------------------------------------------------------


def test_same_file_twice_in_flight_shares_one_download(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    server.routes["/tone.ogg"] = serve(BODY, delay_s=0.3)
    server.routes["/mirror.ogg"] = serve(BODY)
    fetcher = make_fetcher()
    fetcher.fetch(server.url("/tone.ogg"), SHA, len(BODY))
    fetcher.fetch(server.url("/mirror.ogg"), SHA, len(BODY))  # joins the first download
    assert events.queue.empty()
    finished = FetchFinished(SHA, str(tmp_path / "cache" / SHA))
    assert events.get() == finished
    assert events.get() == finished
    events.assert_none()
    assert server.requests == ["/tone.ogg"]


def test_close_abandons_a_download(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    started = threading.Event()

    def slow(handler: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(BODY)))
        handler.end_headers()
        handler.wfile.write(BODY[:100])
        handler.wfile.flush()
        started.set()
        stopping.wait(10)

    server.routes["/slow"] = slow
    fetcher = make_fetcher()
    fetcher.fetch(server.url("/slow"), SHA, len(BODY))
    assert started.wait(EVENT_TIMEOUT_S)
    time.sleep(0.1)  # let the worker block in its next read
    begun = time.monotonic()
    fetcher.close()
    assert time.monotonic() - begun < 1.0
    events.assert_none()
    assert cache_contents(tmp_path) == [PART]  # kept for resuming
    assert part_path(tmp_path).read_bytes() == BODY[:100]
    with pytest.raises(RuntimeError):
        fetcher.fetch(server.url("/slow"), SHA, len(BODY))


def test_partial_files_at_start(make_fetcher: Callable[..., Fetcher], tmp_path: Path) -> None:
    partial = tmp_path / "cache" / ".partial"
    partial.mkdir(parents=True)
    fresh = partial / f"{SHA}.part"
    fresh.write_bytes(BODY[:500])
    old_sha = "a" * 64
    old = partial / f"{old_sha}.part"
    old.write_bytes(b"old")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    huge = partial / f"{'b' * 64}.part"
    huge.write_bytes(bytes(2001))  # above max_file_bytes: no pin could ever want it
    (partial / "not-a-hash.part").write_bytes(b"x")
    (partial / f"{'c' * 64}.part").symlink_to(fresh)
    make_fetcher(max_file_bytes=2000)
    assert cache_contents(tmp_path) == [PART]  # a fresh one is kept: resuming needs it
    assert fresh.read_bytes() == BODY[:500]


# -- the allowlist, as a table -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "allowed", "expected"),
    [
        ("media.example", 443, ("media.example",), True),
        ("media.example", 8443, ("media.example",), True),  # a bare host allows any port
        ("media.example", 443, ("MEDIA.Example.",), True),  # case and trailing dot ignored
        ("media.example", 443, ("media.example:443",), True),
        ("media.example", 8443, ("media.example:443",), False),
        ("cdn.media.example", 443, ("media.example",), False),  # no implicit subdomains
        ("media.example.evil", 443, ("media.example",), False),
        ("::1", 8080, ("[::1]:8080",), True),
        ("::1", 8081, ("[::1]:8080",), False),
        ("::1", 8081, ("::1",), True),
        ("media.example", 443, ("media.example:notaport",), False),
        ("media.example", 443, (), False),
    ],
)
def test_host_allowed(host: str, port: int, allowed: tuple[str, ...], expected: bool) -> None:
    assert host_allowed(host, port, allowed) is expected


def test_check_url_normalises() -> None:
    config = MediaConfig(allowed_schemes=("https",), allowed_hosts=("media.example",))
    target = check_url("HTTPS://Media.Example./a/b.ogg?v=1#frag", config)
    assert (target.scheme, target.host, target.port, target.path) == (
        "https",
        "media.example",
        443,
        "/a/b.ogg?v=1",
    )
    with pytest.raises(FetchError) as info:
        check_url("http://media.example/a.ogg", config)
    assert info.value.reason == "policy"
