"""The media fetcher: downloads pinned files into a content-addressed cache.

This module owns ``cache_dir`` (the verified files, one per SHA-256, named by the hash alone) and
``cache_dir/.partial`` (downloads in progress), and the worker threads that fill them. It decides
nothing about *when* to fetch: the core emits ``Fetch`` effects, the runtime calls
:meth:`Fetcher.fetch`, and the outcome comes back as one
:class:`~receiver.core.events.FetchFinished` or :class:`~receiver.core.events.FetchFailed` per
call, through the ``on_event`` callback.

Security properties (SECURITY.md, Media, 12-13), and where they are enforced:

* A file is pinned by SHA-256 and size. At most ``size + 1`` body bytes are ever read; the bytes
  are hashed while they are written to ``.partial/<sha256>.part``, fsynced, checked, and only then
  renamed to ``<sha256>`` (and the directory fsynced). Bytes that do not match are deleted; they
  never appear under a cache name.
* Only ``http``/``https`` URLs whose scheme and host are on the local allowlist are fetched, and
  every redirect target is checked again (:func:`check_url`). An allowlist entry ``host`` allows
  any port, ``host:port`` (``[v6addr]:port``) only that port; hosts are compared lowercase with a
  trailing dot removed; there are no wildcards.
* Nothing from a URL, a header or the body becomes a path: the file name is the hash, and the hash
  must be 64 lowercase hex digits.
* Each download has a total deadline (``fetch_deadline_s``) and a per-read socket timeout. The
  deadline is enforced by a timer that shuts the socket down, so a server trickling its headers, a
  chunk header or the body one byte at a time still fails on time. (Name resolution is the one
  step a socket shutdown cannot interrupt; the system resolver's own timeouts bound it.)
* ``detail`` strings are built from our own words and numbers (status codes, byte counts, hosts
  that passed validation), never from exception messages or other server-supplied text.

Reason codes (PROTOCOL.md): ``bad_body`` (malformed sha256, negative size, unparseable URL),
``too_large`` (pinned size above ``max_file_bytes``), ``policy`` (scheme or host not allowed,
credentials in the URL, a redirect leaving the allowlist), ``download_failed`` (HTTP status other
than 200, connection or TLS error, transfer cut short, deadline, more than 3 redirects, cannot
write the cache), ``hash_mismatch`` (a completed transfer whose length or SHA-256 differs from
the pin).

Threads: :meth:`Fetcher.fetch` is meant for the loop thread. Checks that need no network (format,
size, allowlist, cache hit) post their event *synchronously*, before ``fetch`` returns, on the
caller's thread; everything else posts from a worker thread. ``on_event`` must therefore be
thread-safe and must not block (or call back into the fetcher). After :meth:`Fetcher.close`
returns, ``on_event`` is not called again.

Not yet here (a later issue): resuming with HTTP ``Range`` (see ``_download``: a partial file
would be kept, ``Range: bytes=N-`` sent, a 206 appended to and a 200 restarted from zero) and the
cache quota with LRU eviction (see ``_download``, before the body is written). Today a stale
``.part`` file is simply deleted, at start-up and on every failure.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import ipaddress
import logging
import os
import queue
import re
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urljoin, urlsplit

from receiver.config_model import MediaConfig
from receiver.core.events import Event, FetchFailed, FetchFinished

__all__ = ["FetchError", "Fetcher", "Target", "check_url", "copy_limited", "host_allowed"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

CHUNK_BYTES = 64 * 1024
READ_TIMEOUT_S = 30.0  # one read (or the connect) that waits longer than this fails
MAX_REDIRECTS = 3
MAX_URL_CHARS = 2048
MAX_DETAIL_CHARS = 160
JOIN_TIMEOUT_S = 5.0  # how long close() waits for each worker

_SHA256 = re.compile(r"[0-9a-f]{64}")
_HOSTNAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_PARTIAL_DIR = ".partial"
_PARTIAL_SUFFIX = ".part"
_HEADERS = {"User-Agent": "loa-receiver", "Accept-Encoding": "identity", "Connection": "close"}


class FetchError(Exception):
    """A fetch that failed, as a PROTOCOL.md reason code and a short, safe ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail[:MAX_DETAIL_CHARS]


@dataclass(frozen=True)
class Target:
    """Where one HTTP request goes: a URL that passed :func:`check_url`."""

    scheme: str  # "http" | "https"
    host: str  # lowercase, no trailing dot, no brackets around an IPv6 address
    port: int
    path: str  # path and query, as sent in the request line; the fragment is dropped


def check_url(url: str, media: MediaConfig) -> Target:
    """Check ``url`` against the allowlist in ``media``; raise :class:`FetchError` if refused.

    ``bad_body`` for a URL that cannot be a URL (control characters, over 2048 characters, bad
    port, no host), ``policy`` for a scheme or host that is not allowed or credentials in the URL.
    """
    if not url or len(url) > MAX_URL_CHARS:
        raise FetchError("bad_body", f"URL is empty or longer than {MAX_URL_CHARS} characters")
    if not (url.isascii() and url.isprintable()) or " " in url:
        raise FetchError("bad_body", "URL has spaces, control or non-ASCII characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchError("bad_body", "URL cannot be parsed (bad host or port)") from exc
    scheme = parts.scheme.lower()
    allowed_schemes = {s.lower() for s in media.allowed_schemes}
    if scheme not in _DEFAULT_PORTS or scheme not in allowed_schemes:
        shown = scheme[:16] if scheme else "(none)"
        raise FetchError("policy", f"URL scheme {shown!r} is not allowed")
    if "@" in parts.netloc:
        raise FetchError("policy", "credentials in the URL are not allowed")
    host = _normalise_host(parts.hostname or "")
    if host is None:
        raise FetchError("bad_body", "URL has no valid host")
    if port == 0:
        raise FetchError("bad_body", "URL has port 0")
    port = port or _DEFAULT_PORTS[scheme]
    if not host_allowed(host, port, media.allowed_hosts):
        raise FetchError("policy", f"host {host} port {port} is not on the allowlist")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(scheme, host, port, path)


def host_allowed(host: str, port: int, allowed_hosts: tuple[str, ...]) -> bool:
    """Whether ``host`` (as returned in :class:`Target`) on ``port`` matches an allowlist entry.

    Entries: ``name``, ``name:port``, ``1.2.3.4``, ``1.2.3.4:port``, ``::1``, ``[::1]``,
    ``[::1]:port``. An entry that cannot be parsed matches nothing.
    """
    for entry in allowed_hosts:
        parsed = _parse_allowed_host(entry)
        if parsed is not None and parsed[0] == host and parsed[1] in (None, port):
            return True
    return False


def copy_limited(read: Callable[[int], bytes], write: Callable[[bytes], object], limit: int) -> int:
    """Copy from ``read`` to ``write`` until ``read`` returns ``b""`` or ``limit`` bytes are copied.

    Never asks ``read`` for more than ``limit`` bytes in total (and never passes more on, should
    ``read`` return more than it was asked for). Returns the number of bytes copied.
    """
    copied = 0
    while copied < limit:
        want = min(CHUNK_BYTES, limit - copied)
        data = read(want)
        if not data:
            break
        data = data[:want]
        write(data)
        copied += len(data)
    return copied


@dataclass
class _Job:
    url: str
    sha256: str
    size: int
    waiter_sizes: list[int] = field(default_factory=list)  # one entry per fetch() call


class _Abort:
    """Lets another thread cut a download short: shuts the socket down so a blocked read returns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.reason: str | None = None  # "deadline" | "closing"

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.reason is not None:
                _shutdown(sock)

    def detach(self) -> None:
        with self._lock:
            self._sock = None

    def abort(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            if self._sock is not None:
                _shutdown(self._sock)


class Fetcher:
    """Downloads pinned media into ``cache_dir`` on ``workers`` threads."""

    def __init__(
        self,
        config: MediaConfig,
        cache_dir: Path,
        on_event: Callable[[Event], None],
        workers: int = 2,
        *,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        """``tls_context`` defaults to the system's CA store with certificate checks on."""
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._config = config
        self._cache_dir = Path(cache_dir)
        self._partial_dir = self._cache_dir / _PARTIAL_DIR
        self._on_event = on_event
        self._tls = tls_context or ssl.create_default_context()
        self._lock = threading.Lock()
        self._inflight: dict[str, _Job] = {}
        self._active: set[_Abort] = set()
        self._closed = False
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()

        self._partial_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        # No resume yet: whatever a previous run left half-done is useless.
        for stale in self._partial_dir.glob(f"*{_PARTIAL_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

        self._threads = [
            threading.Thread(target=self._work, name=f"fetcher-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def fetch(self, url: str, sha256: str, size: int) -> None:
        """Fetch ``url``, pinned to ``sha256`` and ``size``; the outcome comes as one event.

        Refusals that need no network, and cache hits, are posted before this returns.
        Concurrent calls for the same ``sha256`` share one download (the first call's URL);
        each call gets its own event.
        """
        if self._closed:
            raise RuntimeError("the fetcher is closed")
        try:
            self._check_pin(sha256, size)
            check_url(url, self._config)
        except FetchError as exc:
            self._post(FetchFailed(sha256, exc.reason, exc.detail))
            return
        event: Event | None = None
        with self._lock:
            job = self._inflight.get(sha256)
            if job is not None:
                job.waiter_sizes.append(size)
                return
            event = self._cache_hit(sha256, size)
            if event is None:
                job = _Job(url, sha256, size, [size])
                self._inflight[sha256] = job
                self._queue.put(job)
        if event is not None:
            self._post(event)

    def cached_path(self, sha256: str) -> Path | None:
        """The verified file for ``sha256``, or ``None`` if it is not in the cache."""
        if not _SHA256.fullmatch(sha256):
            return None
        path = self._cache_dir / sha256
        return path if path.is_file() else None

    def close(self) -> None:
        """Stop the workers; downloads in progress are abandoned and their partial files removed.

        Calls whose download had not finished get no event. Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            active = list(self._active)
        for handle in active:
            handle.abort("closing")
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT_S)

    # -- checks --------------------------------------------------------------------------------

    def _check_pin(self, sha256: str, size: int) -> None:
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise FetchError("bad_body", "sha256 must be 64 lowercase hex digits")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise FetchError("bad_body", "size must be a non-negative integer")
        if size > self._config.max_file_bytes:
            raise FetchError(
                "too_large",
                f"pinned size {size} bytes is above the limit of "
                f"{self._config.max_file_bytes} bytes",
            )

    def _cache_hit(self, sha256: str, size: int) -> Event | None:
        """The event for a file already in the cache, or ``None`` if it is not there."""
        path = self._cache_dir / sha256
        try:
            info = path.stat()
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size != size:
            # The cached bytes hash to sha256 and have another length: no bytes fit this pin.
            detail = f"the cached file has {info.st_size} bytes, the pin says {size}"
            return FetchFailed(sha256, "hash_mismatch", detail)
        return FetchFinished(sha256, str(path))

    # -- workers -------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self._run(job)
            except Exception:  # a bug here must not kill the worker
                log.exception("fetcher: unexpected error in a worker")

    def _run(self, job: _Job) -> None:
        handle = _Abort()
        with self._lock:
            closing = self._closed
            if not closing:
                self._active.add(handle)
        outcome: FetchError | None = FetchError("download_failed", "abandoned: fetcher closed")
        part = self._partial_dir / f"{job.sha256}{_PARTIAL_SUFFIX}"
        if not closing:
            deadline_s = self._config.fetch_deadline_s
            deadline = time.monotonic() + deadline_s
            timer = threading.Timer(deadline_s, handle.abort, args=("deadline",))
            timer.daemon = True
            timer.start()
            try:
                self._download(job, part, handle, deadline)
                outcome = None
            except Exception as exc:
                outcome = _classify(exc)
                if handle.reason == "deadline" or time.monotonic() >= deadline:
                    outcome = FetchError("download_failed", f"deadline of {deadline_s:g} s passed")
            finally:
                timer.cancel()
                with self._lock:
                    self._active.discard(handle)
                if outcome is not None:
                    with contextlib.suppress(OSError):
                        part.unlink()

        with self._lock:
            self._inflight.pop(job.sha256, None)
            sizes = job.waiter_sizes
            if handle.reason == "closing" or self._closed:
                return
        for size in sizes:
            event: Event
            if outcome is not None:
                event = FetchFailed(job.sha256, outcome.reason, outcome.detail)
            elif size != job.size:
                detail = f"the file has {job.size} bytes, the pin says {size}"
                event = FetchFailed(job.sha256, "hash_mismatch", detail)
            else:
                event = FetchFinished(job.sha256, str(self._cache_dir / job.sha256))
            try:
                self._post(event)
            except Exception:  # on_event raised: still tell the other callers
                log.exception("fetcher: on_event raised")

    def _post(self, event: Event) -> None:
        if not self._closed:
            self._on_event(event)

    # -- one download --------------------------------------------------------------------------

    def _download(self, job: _Job, part: Path, handle: _Abort, deadline: float) -> None:
        url = job.url
        for hop in range(MAX_REDIRECTS + 1):
            try:
                target = check_url(url, self._config)
            except FetchError as exc:
                if hop == 0:
                    raise
                if exc.reason == "policy":
                    # The redirect target is server-supplied: not repeated in the detail.
                    raise FetchError(
                        "policy", "redirected to a scheme or host not on the allowlist"
                    ) from exc
                raise FetchError("download_failed", "redirected to an invalid URL") from exc
            conn, sock = self._connect(target, handle, deadline)
            response: http.client.HTTPResponse | None = None
            try:
                conn.request("GET", target.path, headers=_HEADERS)
                response = conn.getresponse()
                if response.status in _REDIRECT_STATUSES:
                    location = response.getheader("Location")
                    if not location:
                        raise FetchError(
                            "download_failed", f"HTTP {response.status} without a Location"
                        )
                    url = urljoin(url, location.strip())
                    continue
                if response.status != 200:
                    raise FetchError("download_failed", f"HTTP {response.status}")
                # Later issue: resume from an existing .part with Range (206 appends, 200
                # restarts from zero), and make room under the cache quota before writing.
                self._receive(response, sock, job, part, deadline)
                return
            finally:
                handle.detach()
                if response is not None:
                    response.close()
                conn.close()
                sock.close()
        raise FetchError("download_failed", f"more than {MAX_REDIRECTS} redirects")

    def _connect(
        self, target: Target, handle: _Abort, deadline: float
    ) -> tuple[http.client.HTTPConnection, socket.socket]:
        """A connection with its socket already open (http.client forgets ``conn.sock`` once
        a response that closes the connection arrives, so the socket is returned as well)."""
        timeout = _timeout(deadline)
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
        try:
            handle.attach(sock)
            if target.scheme == "http":
                conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
                conn.sock = sock
                return conn, sock
            sock = self._tls.wrap_socket(
                sock, server_hostname=target.host, do_handshake_on_connect=False
            )
            handle.attach(sock)
            sock.do_handshake()
            https = http.client.HTTPSConnection(
                target.host, target.port, timeout=timeout, context=self._tls
            )
            https.sock = sock
            return https, sock
        except BaseException:
            handle.detach()
            sock.close()
            raise

    def _receive(
        self,
        response: http.client.HTTPResponse,
        sock: socket.socket,
        job: _Job,
        part: Path,
        deadline: float,
    ) -> None:
        announced = response.length  # None: chunked, or the body ends when the connection does
        if announced is not None and announced != job.size:
            raise FetchError(
                "hash_mismatch", f"server announces {announced} bytes, the pin says {job.size}"
            )

        def read(n: int) -> bytes:
            sock.settimeout(_timeout(deadline))
            return response.read1(n)

        digest = hashlib.sha256()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = _disk(lambda: os.open(part, flags, 0o640))
        with os.fdopen(fd, "wb") as out:

            def write(data: bytes) -> None:
                digest.update(data)
                _disk(lambda: out.write(data))

            received = copy_limited(read, write, job.size + 1)
            if received > job.size:
                raise FetchError("hash_mismatch", f"server sent more than {job.size} bytes")
            if received < job.size:
                if announced is not None:
                    raise FetchError(
                        "download_failed",
                        f"connection closed after {received} of {job.size} bytes",
                    )
                raise FetchError(
                    "hash_mismatch", f"server sent {received} bytes, the pin says {job.size}"
                )
            if digest.hexdigest() != job.sha256:
                raise FetchError("hash_mismatch", "the bytes do not match the pinned sha256")
            _disk(out.flush)
            _disk(lambda: os.fsync(out.fileno()))
        _disk(lambda: os.replace(part, self._cache_dir / job.sha256))
        _disk(lambda: _fsync_dir(self._cache_dir))


def _normalise_host(host: str) -> str | None:
    """``host`` lowercase without a trailing dot, if it is a DNS name or an IP address."""
    host = host.lower()
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            return None
    host = host.removesuffix(".")
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):
        return None
    return host


def _parse_allowed_host(entry: str) -> tuple[str, int | None] | None:
    text = entry.strip().lower()
    port_text: str | None = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host = text
    normalised = _normalise_host(host)
    if normalised is None:
        return None
    if port_text is None:
        return normalised, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return normalised, int(port_text)


def _timeout(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchError("download_failed", "deadline passed")
    return min(READ_TIMEOUT_S, remaining)


def _disk(action: Callable[[], _T]) -> _T:
    try:
        return action()
    except OSError as exc:
        raise FetchError("download_failed", f"cannot write the cache ({_errno_name(exc)})") from exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _shutdown(sock: socket.socket) -> None:
    # socket.socket.shutdown, not SSLSocket.shutdown: the latter also tears down the TLS state
    # that the worker thread may be using at this moment. This only wakes a blocked read.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _classify(exc: Exception) -> FetchError:
    """An exception from a download as a reason and a detail with no server-supplied text."""
    if isinstance(exc, FetchError):
        return exc
    if isinstance(exc, TimeoutError):
        return FetchError("download_failed", f"no data for {READ_TIMEOUT_S:g} s (timed out)")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return FetchError("download_failed", "TLS certificate verification failed")
    if isinstance(exc, ssl.SSLError):
        return FetchError("download_failed", f"TLS error ({type(exc).__name__})")
    if isinstance(exc, socket.gaierror):
        return FetchError("download_failed", "cannot resolve the host name")
    if isinstance(exc, OSError):
        return FetchError("download_failed", f"connection error ({_errno_name(exc)})")
    if isinstance(exc, http.client.HTTPException):
        return FetchError("download_failed", f"bad HTTP response ({type(exc).__name__})")
    log.error("fetcher: unexpected error", exc_info=exc)
    return FetchError("download_failed", f"unexpected error ({type(exc).__name__})")


def _errno_name(exc: OSError) -> str:
    if exc.errno is not None and exc.errno in errno.errorcode:
        return errno.errorcode[exc.errno]
    return type(exc).__name__
