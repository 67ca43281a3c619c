"""The media fetcher: downloads pinned files into a content-addressed cache with a quota.

Owns ``cache_dir`` (verified files named by their SHA-256), ``cache_dir/.partial`` (downloads
under way or interrupted) and the worker threads that fill them. It decides nothing about when
to fetch: the loop calls :meth:`Fetcher.fetch` for each ``Fetch`` effect and gets one
``FetchFinished`` or ``FetchFailed`` back through ``on_event``. Pinning, resuming, the quota,
the disk reserve, the allowlist on every redirect, deadlines and the reason codes are described
in ``docs/adapters.md``. Logs through structlog.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import queue
import re
import socket
import ssl
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar
from urllib.parse import urljoin

import structlog

from receiver.config_model import MediaConfig
from receiver.core import reasons, urls
from receiver.core.events import Event, FetchFailed, FetchFinished
from receiver.core.record import record
from receiver.core.urls import Target, host_allowed
from receiver.errors import MediaError

__all__ = [
    "CacheUsage",
    "FetchError",
    "Fetcher",
    "Target",
    "check_url",
    "copy_limited",
    "host_allowed",
]

log = structlog.get_logger("receiver.fetcher")
_T = TypeVar("_T")

CHUNK_BYTES = 64 * 1024
READ_TIMEOUT_S = 30.0  # one read (or the connect) that waits longer than this fails
MAX_REDIRECTS = 3
MAX_DETAIL_CHARS = 160
JOIN_TIMEOUT_S = 5.0  # how long close() waits for each worker
# A part file whose modification time is further than this from now (either way: the wall clock
# of a board without an RTC jumps when NTP syncs) is deleted rather than resumed: a day-old
# download is most likely for a file nobody needs any more, and it holds quota.
PART_MAX_AGE_S = 24 * 3600
# Free space that the cache leaves on its filesystem for everything else that writes there, above
# all the state store (SQLite: replay floors must always be persistable, or the daemon cannot act)
# and the journal. The larger of a fixed floor, ample for the store on the smallest card, and a
# share of the filesystem, so a big card keeps room for apt and logs too. ``f_bavail`` already
# leaves out ext4's root-reserved blocks, which this unprivileged daemon could not use anyway.
DISK_RESERVE_BYTES = 64 * 1024 * 1024
DISK_RESERVE_FRACTION = 0.02
DISK_CHECK_EVERY_BYTES = 1024 * 1024  # free space is checked again after this many bytes written

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes +([0-9]{1,20})-([0-9]{1,20})/([0-9]{1,20}|\*)", re.IGNORECASE)
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_PARTIAL_DIR = ".partial"
_PARTIAL_SUFFIX = ".part"
_HEADERS = {"User-Agent": "loa-receiver", "Accept-Encoding": "identity", "Connection": "close"}
_MIB = 1024 * 1024


class FetchError(MediaError):
    """A fetch that failed, as a reason code and a short, safe ``detail``."""

    def __init__(self, reason: reasons.Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail[:MAX_DETAIL_CHARS]


class _RestartError(FetchError):
    """A resumed transfer that cannot go on: the part file is dropped and a request from zero
    follows. Only raised by an attempt that resumed (offset > 0), so it cannot loop."""


@record
class CacheUsage:
    """What the cache holds: verified files (``bytes``, ``files``) and part files kept for
    resuming (``partial_bytes``, which counts against the quota too)."""

    bytes: int
    files: int
    partial_bytes: int = 0


def check_url(url: str, media: MediaConfig) -> Target:
    """Check ``url`` against the allowlist in ``media``; raise :class:`FetchError` if refused."""
    try:
        return urls.check_url(url, media.allowed_schemes, media.allowed_hosts)
    except urls.UrlRefused as refused:
        raise FetchError(refused.reason, refused.detail) from refused


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


class _PartFile(NamedTuple):
    sha256: str
    path: Path
    size: int
    mtime: float
    usable: bool  # a regular file, named by a hash, not too big, not stale


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
    """Downloads pinned media into ``cache_dir`` on ``workers`` threads, within a quota."""

    def __init__(
        self,
        config: MediaConfig,
        cache_dir: Path,
        on_event: Callable[[Event], None],
        workers: int = 2,
        *,
        tls_context: ssl.SSLContext | None = None,
        disk_reserve_bytes: int | None = None,
    ) -> None:
        """``tls_context`` defaults to the system's CA store with certificate checks on.

        ``disk_reserve_bytes`` overrides the free space kept on the cache's filesystem (default:
        the larger of :data:`DISK_RESERVE_BYTES` and :data:`DISK_RESERVE_FRACTION` of it).
        """
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if disk_reserve_bytes is not None and disk_reserve_bytes < 0:
            raise ValueError("disk_reserve_bytes must not be negative")
        self._config = config
        self._cache_dir = Path(cache_dir)
        self._partial_dir = self._cache_dir / _PARTIAL_DIR
        self._on_event = on_event
        # The system's CA store costs about 2 MiB once loaded; the daemon downloads rarely, so
        # without a context given, each HTTPS connection loads it and lets it go afterwards.
        self._tls = tls_context
        self._disk_reserve = disk_reserve_bytes
        self._lock = threading.Lock()
        self._inflight: dict[str, _Job] = {}
        self._active: set[_Abort] = set()
        self._closed = False
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # Guarded by _lock: the verified files (sha256 -> size), least recently used first; the
        # pinned sizes of the downloads under way (their room is taken); the protected hashes.
        self._files: OrderedDict[str, int] = OrderedDict()
        self._reserved: dict[str, int] = {}
        self._protected: frozenset[str] = frozenset()

        self._partial_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        # Part files are kept for resuming, except those that can never be resumed.
        for part in self._scan_parts():
            if not part.usable:
                _remove_quietly(part.path)
        self._index_cache()

        self._threads = [
            threading.Thread(target=self._work, name=f"fetcher-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def fetch(self, url: str, sha256: str, size: int) -> None:
        """Fetch ``url``, pinned to ``sha256`` and ``size``; the outcome comes as one event.

        Refusals that need no network, and cache hits, are posted before this returns; a cache
        hit counts as a use (see :meth:`touch`), but does not change the file's mtime.
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

    def set_protected(self, hashes: Iterable[str]) -> None:
        """Replace the set of files that eviction must never delete (the files that upcoming
        schedule entries, pending commands and the current playback need). Thread-safe."""
        protected = frozenset(hashes)
        with self._lock:
            self._protected = protected

    def touch(self, sha256: str) -> None:
        """Mark a cached file as just used (call it when the file is played): it becomes the last
        to be evicted. Its mtime is set too, so the order survives a restart. No-op for a file
        that is not cached."""
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            return
        with self._lock:
            if sha256 not in self._files:
                return
            self._files.move_to_end(sha256)
        with contextlib.suppress(OSError):  # evicted meanwhile, or a read-only card: order only
            os.utime(self._cache_dir / sha256, follow_symlinks=False)

    def usage(self) -> CacheUsage:
        """What the cache holds now (verified files, and part files kept for resuming)."""
        with self._lock:
            total = sum(self._files.values())
            files = len(self._files)
        partial = sum(part.size for part in self._scan_parts())
        return CacheUsage(bytes=total, files=files, partial_bytes=partial)

    def missing(self, hashes: Iterable[str]) -> int:
        """How many of the distinct ``hashes`` have no verified file in the cache."""
        wanted = set(hashes)
        with self._lock:
            return sum(1 for sha256 in wanted if sha256 not in self._files)

    def close(self) -> None:
        """Stop the workers; downloads in progress are abandoned, their part files kept.

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
            raise FetchError(reasons.BAD_BODY, "sha256 must be 64 lowercase hex digits")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise FetchError(reasons.BAD_BODY, "size must be a non-negative integer")
        if size > self._config.max_file_bytes:
            raise FetchError(
                reasons.TOO_LARGE,
                f"pinned size {size} bytes is above the limit of "
                f"{self._config.max_file_bytes} bytes",
            )
        if size > self._config.cache_quota_bytes:  # config.py forbids it; MediaConfig does not
            raise FetchError(
                reasons.TOO_LARGE,
                f"pinned size {size} bytes is above the cache quota of "
                f"{self._config.cache_quota_bytes} bytes",
            )

    def _cache_hit(self, sha256: str, size: int) -> Event | None:
        """The event for a file already in the cache, or ``None`` if it is not there.

        Called with ``_lock`` held; keeps the index in step with what is on disk.
        """
        path = self._cache_dir / sha256
        try:
            info = path.stat()
        except OSError:
            self._files.pop(sha256, None)
            return None
        if not stat.S_ISREG(info.st_mode):
            self._files.pop(sha256, None)
            return None
        self._files[sha256] = info.st_size
        self._files.move_to_end(sha256)
        if info.st_size != size:
            # The cached bytes hash to sha256 and have another length: no bytes fit this pin.
            detail = f"the cached file has {info.st_size} bytes, the pin says {size}"
            return FetchFailed(sha256, reasons.HASH_MISMATCH, detail)
        return FetchFinished(sha256, str(path))

    # -- the cache -----------------------------------------------------------------------------

    def _index_cache(self) -> None:
        """Seed the order of use from the verified files' modification times."""
        found: list[tuple[float, str, int]] = []
        with os.scandir(self._cache_dir) as entries:
            for entry in entries:
                if not _SHA256.fullmatch(entry.name):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    found.append((info.st_mtime, entry.name, info.st_size))
        with self._lock:
            for _, sha256, size in sorted(found):
                self._files[sha256] = size

    def _scan_parts(self) -> list[_PartFile]:
        """The part files in ``.partial`` (other names and directories are not ours: left)."""
        parts: list[_PartFile] = []
        now = time.time()
        try:
            with os.scandir(self._partial_dir) as entries:
                for entry in entries:
                    if not entry.name.endswith(_PARTIAL_SUFFIX):
                        continue
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(info.st_mode):
                        continue
                    sha256 = entry.name.removesuffix(_PARTIAL_SUFFIX)
                    usable = (
                        _SHA256.fullmatch(sha256) is not None
                        and stat.S_ISREG(info.st_mode)
                        and info.st_size <= self._config.max_file_bytes
                        and abs(now - info.st_mtime) <= PART_MAX_AGE_S
                    )
                    path = Path(entry.path)
                    parts.append(_PartFile(sha256, path, info.st_size, info.st_mtime, usable))
        except OSError:
            pass
        return parts

    def _make_room(self, job: _Job) -> None:
        """Take room for ``job`` under the quota, evicting if need be. Called with ``_lock``."""
        quota = self._config.cache_quota_bytes
        leftovers: list[_PartFile] = []
        for part in self._scan_parts():
            if part.sha256 in self._reserved or part.sha256 == job.sha256:
                continue  # a download under way (its pinned size is reserved), or this one's
            if part.usable:
                leftovers.append(part)
            else:
                _remove_quietly(part.path)
        used = (
            sum(self._files.values())
            + sum(self._reserved.values())
            + sum(part.size for part in leftovers)
        )
        excess = used + job.size - quota
        victims: list[tuple[str, Path, int, bool]] = []  # (sha256, path, size, is a part file)
        if excess > 0:
            protected = self._protected
            candidates = [
                (part.sha256, part.path, part.size, True)
                for part in sorted(leftovers, key=lambda part: part.mtime)
                if part.sha256 not in protected
            ]
            candidates += [
                (sha256, self._cache_dir / sha256, size, False)
                for sha256, size in self._files.items()
                if sha256 not in protected
            ]
            for candidate in candidates:
                if excess <= 0:
                    break
                victims.append(candidate)
                excess -= candidate[2]
            if excess > 0:
                raise FetchError(
                    reasons.POLICY,
                    f"cache quota full of protected files ({job.size} bytes needed, "
                    f"{quota - used} of {quota} bytes free)",
                )
        for sha256, path, size, is_part in victims:
            try:
                _remove(path)
            except OSError as exc:
                raise FetchError(
                    reasons.DOWNLOAD_FAILED, f"cannot evict from the cache ({_errno_name(exc)})"
                ) from exc
            if not is_part:
                del self._files[sha256]
            kind = "partial download" if is_part else "file"
            log.info("cache_evicted", what=kind, sha256=sha256[:12], bytes=size, why="making room")
        self._reserved[job.sha256] = job.size

    def _check_disk(self, to_write: int) -> None:
        """Refuse to write ``to_write`` more bytes if the filesystem would drop below the
        reserve."""
        fs = _disk(lambda: os.statvfs(self._cache_dir))
        free = fs.f_bavail * fs.f_frsize
        reserve = self._disk_reserve
        if reserve is None:
            share = int(fs.f_blocks * fs.f_frsize * DISK_RESERVE_FRACTION)
            reserve = max(DISK_RESERVE_BYTES, share)
        if free - to_write < reserve:
            raise FetchError(
                reasons.DOWNLOAD_FAILED,
                f"disk nearly full ({free // _MIB} MiB free, {to_write} bytes to write, "
                f"{reserve // _MIB} MiB kept in reserve)",
            )

    # -- workers -------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self._run(job)
            except Exception:  # a bug here must not kill the worker
                log.exception("fetch_worker_error")

    def _run(self, job: _Job) -> None:
        handle = _Abort()
        with self._lock:
            closing = self._closed
            if not closing:
                self._active.add(handle)
        outcome: FetchError | None = FetchError(
            reasons.DOWNLOAD_FAILED, "abandoned: fetcher closed"
        )
        part = self._partial_dir / f"{job.sha256}{_PARTIAL_SUFFIX}"
        if not closing:
            deadline_s = self._config.fetch_deadline_s
            deadline = time.monotonic() + deadline_s
            timer = threading.Timer(deadline_s, handle.abort, args=("deadline",))
            timer.daemon = True
            timer.start()
            bytes_wrong = False
            try:
                with self._lock:
                    self._make_room(job)
                self._download(job, part, handle, deadline)
                outcome = None
            except Exception as exc:
                outcome = _classify(exc)
                # A transfer cut by our own deadline or close() can look like a short body:
                # those bytes are not proven wrong, and are kept for resuming.
                bytes_wrong = outcome.reason == reasons.HASH_MISMATCH and handle.reason is None
                if handle.reason == "deadline" or time.monotonic() >= deadline:
                    outcome = FetchError(
                        reasons.DOWNLOAD_FAILED, f"deadline of {deadline_s:g} s passed"
                    )
            finally:
                timer.cancel()
                with self._lock:
                    self._active.discard(handle)
                    self._reserved.pop(job.sha256, None)
                    if outcome is None:
                        self._files[job.sha256] = job.size
                        self._files.move_to_end(job.sha256)
                if outcome is not None:
                    _drop_part(part, always=bytes_wrong)

        self._report(job, handle, outcome)

    def _report(self, job: _Job, handle: _Abort, outcome: FetchError | None) -> None:
        """One event per fetch() call that joined ``job``."""
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
                event = FetchFailed(job.sha256, reasons.HASH_MISMATCH, detail)
            else:
                event = FetchFinished(job.sha256, str(self._cache_dir / job.sha256))
            try:
                self._post(event)
            except Exception:  # on_event raised: still tell the other callers
                log.exception("fetch_report_failed", why="on_event raised")

    def _post(self, event: Event) -> None:
        if not self._closed:
            self._on_event(event)

    # -- one download --------------------------------------------------------------------------

    def _download(self, job: _Job, part: Path, handle: _Abort, deadline: float) -> None:
        """Resume from the part file if there is a usable one, else download from zero."""
        offset = self._usable_part(job, part)
        if offset and offset == job.size:
            if self._finish_kept(job, part):
                return
            offset = 0
        self._check_disk(job.size - offset)
        if offset:
            try:
                self._attempt(job, part, handle, deadline, offset)
                return
            except _RestartError as restart:
                log.info("fetch_resume_failed", sha256=job.sha256[:12], detail=restart.detail)
                _disk(lambda: _remove(part))
                self._check_disk(job.size)
        self._attempt(job, part, handle, deadline, 0)

    def _usable_part(self, job: _Job, part: Path) -> int:
        """How many bytes of ``part`` can be resumed from (a part that cannot is deleted)."""
        try:
            info = os.lstat(part)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise FetchError(
                reasons.DOWNLOAD_FAILED, f"cannot read the cache ({_errno_name(exc)})"
            ) from exc
        fresh = abs(time.time() - info.st_mtime) <= PART_MAX_AGE_S
        if stat.S_ISREG(info.st_mode) and info.st_size <= job.size and fresh:
            return info.st_size
        log.info("partial_download_dropped", sha256=job.sha256[:12], why="stale or oversized")
        _disk(lambda: _remove(part))
        return 0

    def _finish_kept(self, job: _Job, part: Path) -> bool:
        """A part file as long as the pin (say, cut off just before its rename): checked locally
        and moved into the cache if it matches, deleted if not."""
        digest = hashlib.sha256()
        fd = _disk(lambda: os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC))
        with os.fdopen(fd, "rb") as kept:
            length = _disk(lambda: copy_limited(kept.read, digest.update, job.size + 1))
            matches = length == job.size and digest.hexdigest() == job.sha256
            if matches:
                _disk(lambda: os.fsync(kept.fileno()))
        if not matches:
            _disk(lambda: _remove(part))
            return False
        self._commit(job, part)
        return True

    def _attempt(self, job: _Job, part: Path, handle: _Abort, deadline: float, offset: int) -> None:
        """One request (following redirects) asking for the bytes from ``offset`` on."""
        headers = dict(_HEADERS)
        if offset:
            headers["Range"] = f"bytes={offset}-"
        url = job.url
        for hop in range(MAX_REDIRECTS + 1):
            try:
                target = check_url(url, self._config)
            except FetchError as exc:
                if hop == 0:
                    raise
                if exc.reason == reasons.POLICY:
                    # The redirect target is server-supplied: not repeated in the detail.
                    raise FetchError(
                        reasons.POLICY, "redirected to a scheme or host not on the allowlist"
                    ) from exc
                raise FetchError(reasons.DOWNLOAD_FAILED, "redirected to an invalid URL") from exc
            conn, sock = self._connect(target, handle, deadline)
            response: http.client.HTTPResponse | None = None
            try:
                conn.request("GET", target.path, headers=headers)
                response = conn.getresponse()
                if response.status in _REDIRECT_STATUSES:
                    location = response.getheader("Location")
                    if not location:
                        raise FetchError(
                            reasons.DOWNLOAD_FAILED, f"HTTP {response.status} without a Location"
                        )
                    url = urljoin(url, location.strip())
                    continue
                if response.status == 416 and offset:
                    raise _RestartError(reasons.DOWNLOAD_FAILED, "HTTP 416 to a resumed request")
                if response.status not in (200, 206):
                    raise FetchError(reasons.DOWNLOAD_FAILED, f"HTTP {response.status}")
                self._receive(response, sock, job, part, deadline=deadline, offset=offset)
                return
            finally:
                handle.detach()
                if response is not None:
                    response.close()
                conn.close()
                sock.close()
        raise FetchError(reasons.DOWNLOAD_FAILED, f"more than {MAX_REDIRECTS} redirects")

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
            tls = self._tls or ssl.create_default_context()
            sock = tls.wrap_socket(sock, server_hostname=target.host, do_handshake_on_connect=False)
            handle.attach(sock)
            sock.do_handshake()
            https = http.client.HTTPSConnection(
                target.host, target.port, timeout=timeout, context=tls
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
        *,
        deadline: float,
        offset: int,
    ) -> None:
        """Write the body of a 200 (from byte zero) or a 206 (after the ``offset`` kept bytes)
        to ``part``, check the whole file against the pin and move it into the cache."""
        announced = response.length  # None: chunked, or the body ends when the connection does
        start = _body_start(response, job, offset)

        def read(n: int) -> bytes:
            sock.settimeout(_timeout(deadline))
            return response.read1(n)

        digest = hashlib.sha256()
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = _disk(lambda: os.open(part, flags, 0o640))
        with os.fdopen(fd, "r+b") as out:
            if start:  # the hash covers the whole file: the kept bytes go in first
                kept = _disk(lambda: copy_limited(out.read, digest.update, start))
                if kept != start:
                    raise _RestartError(reasons.DOWNLOAD_FAILED, "the partial file shrank")
            _disk(lambda: out.seek(start))
            _disk(lambda: out.truncate(start))  # a 200 while resuming starts again from zero
            position = start
            unchecked = 0

            def write(data: bytes) -> None:
                nonlocal position, unchecked
                digest.update(data)
                _disk(lambda: out.write(data))
                position += len(data)
                unchecked += len(data)
                if unchecked >= DISK_CHECK_EVERY_BYTES:
                    unchecked = 0
                    self._check_disk(max(0, job.size - position))

            received = start + copy_limited(read, write, job.size - start + 1)
            if received > job.size:
                raise FetchError(reasons.HASH_MISMATCH, f"server sent more than {job.size} bytes")
            if received < job.size:
                if announced is not None:
                    raise FetchError(
                        reasons.DOWNLOAD_FAILED,
                        f"connection closed after {received} of {job.size} bytes",
                    )
                raise FetchError(
                    reasons.HASH_MISMATCH, f"server sent {received} bytes, the pin says {job.size}"
                )
            if digest.hexdigest() != job.sha256:
                if start:
                    raise _RestartError(
                        reasons.HASH_MISMATCH, "the resumed file does not match its sha256"
                    )
                raise FetchError(reasons.HASH_MISMATCH, "the bytes do not match the pinned sha256")
            _disk(out.flush)
            _disk(lambda: os.fsync(out.fileno()))
        self._commit(job, part)

    def _commit(self, job: _Job, part: Path) -> None:
        """Move a verified, fsynced part file to its cache name."""
        _disk(lambda: os.replace(part, self._cache_dir / job.sha256))
        _disk(lambda: _fsync_dir(self._cache_dir))


def _timeout(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchError(reasons.DOWNLOAD_FAILED, "deadline passed")
    return min(READ_TIMEOUT_S, remaining)


def _disk(action: Callable[[], _T]) -> _T:
    try:
        return action()
    except OSError as exc:
        raise FetchError(
            reasons.DOWNLOAD_FAILED, f"cannot write the cache ({_errno_name(exc)})"
        ) from exc


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
        return FetchError(reasons.DOWNLOAD_FAILED, f"no data for {READ_TIMEOUT_S:g} s (timed out)")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return FetchError(reasons.DOWNLOAD_FAILED, "TLS certificate verification failed")
    if isinstance(exc, ssl.SSLError):
        return FetchError(reasons.DOWNLOAD_FAILED, f"TLS error ({type(exc).__name__})")
    if isinstance(exc, socket.gaierror):
        return FetchError(reasons.DOWNLOAD_FAILED, "cannot resolve the host name")
    if isinstance(exc, OSError):
        return FetchError(reasons.DOWNLOAD_FAILED, f"connection error ({_errno_name(exc)})")
    if isinstance(exc, http.client.HTTPException):
        return FetchError(reasons.DOWNLOAD_FAILED, f"bad HTTP response ({type(exc).__name__})")
    log.error("fetch_unexpected_error", exc_info=exc)
    return FetchError(reasons.DOWNLOAD_FAILED, f"unexpected error ({type(exc).__name__})")


def _errno_name(exc: OSError) -> str:
    if exc.errno is not None and exc.errno in errno.errorcode:
        return errno.errorcode[exc.errno]
    return type(exc).__name__


def _body_start(response: http.client.HTTPResponse, job: _Job, offset: int) -> int:
    """Where the body of ``response`` goes in the file: 0 for a 200, ``offset`` for a 206 that
    answers the ``Range: bytes={offset}-`` asked for. Raises :class:`_RestartError` for a 206
    that does not."""
    announced = response.length
    if response.status != 206:
        if announced is not None and announced != job.size:
            raise FetchError(
                reasons.HASH_MISMATCH,
                f"server announces {announced} bytes, the pin says {job.size}",
            )
        return 0
    if not offset:
        raise FetchError(reasons.DOWNLOAD_FAILED, "HTTP 206 to a request without Range")
    span = _content_range(response.getheader("Content-Range"))
    if span is None or span[:2] != (offset, job.size - 1) or span[2] not in (None, job.size):
        raise _RestartError(
            reasons.DOWNLOAD_FAILED, "HTTP 206 with another Content-Range than asked"
        )
    if announced is not None and announced != job.size - offset:
        raise _RestartError(reasons.DOWNLOAD_FAILED, "HTTP 206 whose length is not the range's")
    return offset


def _content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``Content-Range: bytes first-last/total`` as numbers (total ``None`` for ``*``)."""
    if value is None:
        return None
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if match is None:
        return None
    first, last, total = match.groups()
    return int(first), int(last), None if total == "*" else int(total)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _remove_quietly(path: Path) -> None:
    try:
        _remove(path)
    except OSError as exc:
        log.warning("partial_file_not_removed", error=_errno_name(exc))


def _drop_part(part: Path, *, always: bool) -> None:
    """After a failed download: delete the part file if its bytes are wrong or it is empty."""
    try:
        if always or os.lstat(part).st_size == 0:
            _remove(part)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("partial_file_not_removed", error=_errno_name(exc))
