"""The fetcher's cache: quota, least-recently-used eviction, protected files, free disk space.

Against the same real local HTTP server as ``test_fetcher.py`` (its helpers are reused), no mocks.
Every file here has the same size, so a quota of ``3 * SIZE`` holds exactly three.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from receiver.core.events import FetchFailed, FetchFinished
from receiver.fetcher import CacheUsage, Fetcher
from tests.adapters.test_fetcher import (
    Events,
    Ranged,
    cache_contents,
    failed,
    keep_part,
    media,
    part_path,
)
from tests.lab.web import RoutedServer, serve

SIZE = 20_000
BODIES = {name: name.encode() * SIZE for name in "abcde"}  # one letter repeated, SIZE bytes
SHAS = {name: hashlib.sha256(body).hexdigest() for name, body in BODIES.items()}
QUOTA = 3 * SIZE


@pytest.fixture
def server() -> Iterator[RoutedServer]:
    s = RoutedServer()
    for name, body in BODIES.items():
        s.routes[f"/{name}.ogg"] = serve(body)
    yield s
    s.close()


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def make_fetcher(tmp_path: Path, events: Events) -> Iterator[Callable[..., Fetcher]]:
    made: list[Fetcher] = []

    def make(disk_reserve_bytes: int | None = None, **overrides: Any) -> Fetcher:
        overrides.setdefault("cache_quota_bytes", QUOTA)
        fetcher = Fetcher(
            media(**overrides),
            tmp_path / "cache",
            events,
            disk_reserve_bytes=disk_reserve_bytes,
        )
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        fetcher.close()


def get(
    fetcher: Fetcher, server: RoutedServer, events: Events, name: str
) -> FetchFinished | FetchFailed:
    """Fetch one of BODIES and wait for its event."""
    fetcher.fetch(server.url(f"/{name}.ogg"), SHAS[name], SIZE)
    event = events.get()
    assert isinstance(event, FetchFinished | FetchFailed)
    assert event.sha256 == SHAS[name]
    return event


def cached(fetcher: Fetcher) -> str:
    """The names of the cached files, e.g. "acd"."""
    return "".join(name for name, sha in SHAS.items() if fetcher.cached_path(sha) is not None)


def test_the_least_recently_used_file_is_evicted(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events
) -> None:
    fetcher = make_fetcher()
    for name in "abc":
        assert isinstance(get(fetcher, server, events, name), FetchFinished)
    assert fetcher.usage() == CacheUsage(bytes=3 * SIZE, files=3, partial_bytes=0)

    fetcher.touch(SHAS["a"])  # played: now b is the least recently used
    assert isinstance(get(fetcher, server, events, "d"), FetchFinished)
    assert cached(fetcher) == "acd"

    # Order of use now c, a, d; a cache hit counts as a use too: after c's, a is the oldest.
    fetcher.fetch(server.url("/c.ogg"), SHAS["c"], SIZE)
    assert isinstance(events.now(), FetchFinished)
    assert isinstance(get(fetcher, server, events, "e"), FetchFinished)
    assert cached(fetcher) == "cde"
    assert fetcher.usage() == CacheUsage(bytes=3 * SIZE, files=3, partial_bytes=0)


def test_protected_files_are_never_evicted(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    fetcher = make_fetcher()
    for name in "abc":
        get(fetcher, server, events, name)
    fetcher.set_protected([SHAS["a"], SHAS["b"], SHAS["c"]])
    requests_before = list(server.requests)

    event = get(fetcher, server, events, "d")
    assert failed("policy", sha=SHAS["d"])(event)
    assert isinstance(event, FetchFailed)
    assert "cache quota full of protected files" in event.detail
    assert server.requests == requests_before  # no request was made
    assert cached(fetcher) == "abc"  # nothing was deleted for a download that cannot fit
    assert not part_path(tmp_path, SHAS["d"]).exists()

    fetcher.set_protected([SHAS["a"], SHAS["b"], SHAS["d"]])  # a is the oldest, but protected
    assert isinstance(get(fetcher, server, events, "d"), FetchFinished)
    assert cached(fetcher) == "abd"


def test_usage_and_missing(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events
) -> None:
    fetcher = make_fetcher()
    assert fetcher.usage() == CacheUsage(bytes=0, files=0, partial_bytes=0)
    assert fetcher.missing([]) == 0
    get(fetcher, server, events, "a")
    get(fetcher, server, events, "b")
    assert fetcher.usage() == CacheUsage(bytes=2 * SIZE, files=2, partial_bytes=0)
    assert fetcher.missing([SHAS["a"], SHAS["b"]]) == 0
    # Counted once each; a malformed hash can never be in the cache.
    assert fetcher.missing(iter([SHAS["a"], SHAS["c"], SHAS["c"], SHAS["d"], "../x"])) == 3


def test_partial_downloads_count_and_are_evicted_first(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    fetcher = make_fetcher()
    get(fetcher, server, events, "a")
    get(fetcher, server, events, "b")
    leftover = keep_part(tmp_path, BODIES["c"][:5000], sha=SHAS["c"])
    assert fetcher.usage() == CacheUsage(bytes=2 * SIZE, files=2, partial_bytes=5000)

    # a + b + 5000 bytes of c + d's 20,000 is above the quota: c's part file goes, not a.
    assert isinstance(get(fetcher, server, events, "d"), FetchFinished)
    assert cached(fetcher) == "abd"
    assert not leftover.exists()
    assert fetcher.usage() == CacheUsage(bytes=3 * SIZE, files=3, partial_bytes=0)


def test_an_interrupted_download_keeps_its_part_file_within_the_quota(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    ranged = Ranged(BODIES["a"], cut_at=8000)
    server.routes["/a.ogg"] = ranged
    fetcher = make_fetcher()
    assert failed("download_failed", sha=SHAS["a"])(get(fetcher, server, events, "a"))
    assert fetcher.usage() == CacheUsage(bytes=0, files=0, partial_bytes=8000)
    assert fetcher.missing([SHAS["a"]]) == 1
    assert isinstance(get(fetcher, server, events, "a"), FetchFinished)
    assert ranged.sent == [8000, SIZE - 8000]
    assert fetcher.usage() == CacheUsage(bytes=SIZE, files=1, partial_bytes=0)


def test_order_of_use_survives_a_restart(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    first = make_fetcher()
    for name in "abc":
        get(first, server, events, name)
    now = time.time()
    for age, name in ((300, "a"), (200, "b"), (100, "c")):
        os.utime(tmp_path / "cache" / SHAS[name], (now - age, now - age))
    first.touch(SHAS["a"])  # sets a's mtime: a is now the most recently used, b the least
    first.close()

    second = make_fetcher()  # seeds its order from the mtimes
    assert second.usage() == CacheUsage(bytes=3 * SIZE, files=3, partial_bytes=0)
    assert isinstance(get(second, server, events, "d"), FetchFinished)
    assert cached(second) == "acd"


def test_touch_of_a_file_not_in_the_cache_does_nothing(
    make_fetcher: Callable[..., Fetcher], tmp_path: Path
) -> None:
    fetcher = make_fetcher()
    fetcher.touch(SHAS["a"])
    fetcher.touch("../../etc/passwd")
    assert cache_contents(tmp_path) == []


def test_pin_above_the_whole_quota_is_too_large(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events
) -> None:
    fetcher = make_fetcher(cache_quota_bytes=SIZE - 1)
    fetcher.fetch(server.url("/a.ogg"), SHAS["a"], SIZE)
    assert failed("too_large", sha=SHAS["a"])(events.now())
    assert server.requests == []


def test_disk_nearly_full(
    server: RoutedServer, make_fetcher: Callable[..., Fetcher], events: Events, tmp_path: Path
) -> None:
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    fetcher = make_fetcher(disk_reserve_bytes=free)  # any write would eat into the reserve
    event = get(fetcher, server, events, "a")
    assert failed("download_failed", sha=SHAS["a"])(event)
    assert isinstance(event, FetchFailed)
    assert "disk nearly full" in event.detail
    assert server.requests == []
    assert cache_contents(tmp_path) == []

    roomy = make_fetcher(disk_reserve_bytes=0)
    assert isinstance(get(roomy, server, events, "a"), FetchFinished)
