"""The shell's ports: what the loop needs from each adapter, as small Protocols of our own.

:class:`~receiver.runtime.Runtime` sees only these. :func:`receiver.assembly.real_ports` builds
the real adapters (libVLC, gpiozero, the fetcher, paho, SQLite, the system clock) behind them;
the shell tests (``tests/shell/``) hand in doubles kept in memory. The adapters call back only
through :class:`Hooks`, whose functions queue an event and return.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from receiver.core.clock import Instant
from receiver.core.events import Event, MessageReceived
from receiver.core.record import record
from receiver.core.state import Intent
from receiver.device_key import DeviceKey

__all__ = [
    "CacheUsage",
    "Clock",
    "Fetcher",
    "Hooks",
    "Inputs",
    "Link",
    "Outbox",
    "Player",
    "Ports",
    "Relay",
    "Store",
]

# ``Player.preroll``'s token for a file opened before its play is named: the next ``play`` of
# that file and offset adopts it (``receiver.player.ANY_TOKEN``).
ANY_TOKEN = 0


class Clock(Protocol):
    """Both clocks at once; ``speed`` is how much faster than real time it runs (tests)."""

    speed: float

    def now(self) -> Instant: ...


class Player(Protocol):
    """One item at a time; reports ``PlaybackStarted/Ended/Failed`` through ``Hooks.report``."""

    def play(
        self,
        token: int,
        media: str,
        volume: int,
        start_ms: int = 0,
        *,
        live: bool = False,
        at: float | None = None,
    ) -> None: ...
    def preroll(self, token: int, media: str, volume: int, start_ms: int = 0) -> None: ...
    def drop_preroll(self, token: int) -> None: ...
    def stop(self) -> None: ...
    def set_volume(self, level: int) -> None: ...
    def position_ms(self) -> int: ...
    def close(self) -> None: ...


class Relay(Protocol):
    """The amplifier's power relay; ``close`` leaves it off."""

    def switch(self, on: bool) -> None: ...
    def close(self) -> None: ...


class Inputs(Protocol):
    """The local inputs (microphone switch, amplifier fault); changes go to ``Hooks.input``."""

    def current(self) -> list[tuple[str, bool]]: ...
    def close(self) -> None: ...


class CacheUsage(Protocol):
    @property
    def bytes(self) -> int: ...
    @property
    def files(self) -> int: ...


class Fetcher(Protocol):
    """Pinned files into the cache; each ``fetch`` is answered by one event on ``Hooks.report``."""

    def fetch(self, url: str, sha256: str, size: int) -> None: ...
    def cached_path(self, sha256: str) -> Path | None: ...
    def set_protected(self, hashes: Iterable[str]) -> None: ...
    def touch(self, sha256: str) -> None: ...
    def usage(self) -> CacheUsage: ...
    def missing(self, hashes: Iterable[str]) -> int: ...
    def close(self) -> None: ...


class Link(Protocol):
    """The broker connection. ``publish`` never blocks; ``on_ack`` fires once the broker has
    the message. ``ack`` releases a received message (its PUBACK)."""

    @property
    def connected(self) -> bool: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def status(self) -> Mapping[str, Any]: ...
    @property
    def socket_inode(self) -> int | None:
        """The broker connection's socket, for the traffic meter; None when there is none."""

    def start(self) -> None: ...
    def publish(
        self,
        topic: str,
        payload: bytes,
        retain: bool = False,
        on_ack: Callable[[], None] | None = None,
    ) -> bool: ...
    def ack(self, message: MessageReceived) -> None: ...
    def stop(self, final_topic: str | None = None, final_payload: bytes | None = None) -> None: ...


class Store(Protocol):
    """Durable state: every ``save_*`` returns only once it is on disk, but ``save_floors``
    with ``wait=False``, whose commit :meth:`settle` waits for."""

    recovered_from: Path | None

    def floors(self) -> dict[str, tuple[int, str]]: ...
    def time_floor(self) -> float: ...
    def reset_floor(self) -> float | None: ...
    def trust(self) -> tuple[int, bytes, str] | None: ...
    def schedules(self) -> dict[str, tuple[int, bytes, str]]: ...
    def done(self) -> frozenset[str]: ...
    def intents(self) -> tuple[Intent, ...]: ...
    def save_floors(
        self,
        changed: dict[str, tuple[int, str]],
        time_floor: float,
        intent: Intent | None = None,
        *,
        wait: bool = True,
    ) -> None: ...
    def settle(self) -> None: ...
    def mark_intent_started(self, ref: str) -> None: ...
    def forget_intent(self, ref: str) -> None: ...
    def save_reset_floor(self, utc: float) -> None: ...
    def save_time_floor(self, utc: float) -> None: ...
    def save_trust(self, version: int, body: bytes, digest: str) -> None: ...
    def save_schedule(self, schedule_id: str, version: int, body: bytes, digest: str) -> None: ...
    def save_done(self, key: str) -> None: ...
    def next_event_number(self) -> int: ...
    def close(self) -> None: ...


class Outbox(Protocol):
    """Events on disk until the broker has them. ``add`` is durable once it returns, or, inside
    ``batch()``, once the batch ends."""

    recovered_from: Path | None

    def add(self, n: int, payload: bytes) -> int: ...
    def batch(self) -> AbstractContextManager[None]: ...
    def pending(self, limit: int | None = None) -> list[tuple[int, bytes]]: ...
    def ack(self, n: int) -> None: ...
    def __len__(self) -> int: ...
    @property
    def dropped_total(self) -> int: ...
    def close(self) -> None: ...


@record
class Hooks:
    """What adapters may call, from any thread: each only queues for the loop and returns."""

    report: Callable[[Event], None]
    message: Callable[[MessageReceived], None]
    input: Callable[[str, bool], None]
    connected: Callable[[], None]


@dataclass
class Ports:
    """Every adapter the loop uses, and the device's own key (it signs every report)."""

    device_key: DeviceKey
    clock: Clock
    store: Store
    outbox: Outbox
    relay: Relay
    inputs: Inputs
    player: Player
    fetcher: Fetcher
    link: Link
    device_key_made: bool = False  # made on this start: to be enrolled

    def closers(self) -> Iterator[tuple[str, Callable[[], None]]]:
        """The adapters to close at shutdown, the sound and the relay first."""
        yield from (
            ("player", self.player.close),
            ("relay", self.relay.close),
            ("inputs", self.inputs.close),
            ("fetcher", self.fetcher.close),
        )
