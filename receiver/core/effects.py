"""Effects: what the core asks the shell to do, in order. Plain frozen data, imperative mood.

The shell executes a step's effects in the order given; the core relies on that, e.g. a
``PersistFloors`` placed before the ``Play`` it allows is durable before any sound comes out.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from receiver.core.intents import Intent
from receiver.core.reasons import Reason
from receiver.core.record import record
from receiver.core.vocabulary import EventKind


@record
class Fetch:
    """Make the pinned file available in the cache (the fetcher answers with an event)."""

    url: str
    sha256: str
    size: int


@record
class Play:
    """Start playing ``media`` (a cached file path or a stream URL) at ``volume``, from
    ``start_ms`` into it; the player's events about it carry ``token``.

    With ``at_mono``, not now but at that instant (monotonic): the file was prerolled under
    ``token``, and the player resumes it itself when the instant comes (a ``StopPlayback`` or
    another ``Play`` before it cancels that)."""

    token: int
    media: str
    volume: int
    start_ms: int = 0
    live: bool = False  # a live relay, not a file: the player may reconnect to it
    at_mono: float | None = None


@record
class Preroll:
    """Open the file ``media`` now, paused at ``start_ms``, ahead of its start at an instant: the
    ``Play`` with the same token, media and offset then only resumes it."""

    token: int
    media: str
    volume: int
    start_ms: int = 0


@record
class DropPreroll:
    """The item prerolled under ``token`` will not start after all: let the player drop it."""

    token: int


@record
class StopPlayback:
    """Stop whatever the player is playing."""


@record
class SetVolume:
    """Change the volume of what is playing now."""

    level: int


@record
class SwitchRelay:
    """Power the amplifier on or off."""

    on: bool


@record
class PersistFloors:
    """Durably store replay floors before the action they allow takes effect.

    ``floors`` maps a stream name to ``(seq, digest)``; ``time_floor`` is the newest trusted UTC.
    ``intent``, when a command was accepted, is stored in the same transaction (write-ahead):
    whatever happens next, a restart finds either neither or both.
    """

    floors: dict[str, tuple[int, str]]
    time_floor: float
    intent: Intent | None = None


@record
class PersistIntentStarted:
    """Durably note that the command's sound is about to start (before the ``Play``)."""

    ref: str


@record
class PersistIntentDone:
    """Durably forget a command's intent: it was carried out, or its end was reported."""

    ref: str


@record
class PersistTrust:
    """Durably store an accepted trust document (its verified payload) before it takes effect."""

    version: int
    body: bytes
    digest: str


@record
class PersistResetFloor:
    """Durably store the first trusted instant of a fresh store."""

    utc: float


@record
class PersistSchedule:
    """Durably store a schedule version now in force (and its replay floor)."""

    schedule_id: str
    version: int
    body: bytes
    digest: str


@record
class PersistDone:
    """Durably note a schedule occurrence as played or given up, so a reboot does not repeat it."""

    key: str


@record
class Emit:
    """Report an event on the events topic (the shell numbers it and adds the device and time)."""

    kind: EventKind
    ref: str | None = None
    reason: Reason | None = None
    detail: str | None = None


@record
class PublishState:
    """Publish the retained device state; ``fields`` are the parts the core owns."""

    fields: dict[str, Any] = field(default_factory=dict)


Effect = (
    Fetch
    | Play
    | Preroll
    | DropPreroll
    | StopPlayback
    | SetVolume
    | SwitchRelay
    | PersistFloors
    | PersistIntentStarted
    | PersistIntentDone
    | PersistTrust
    | PersistResetFloor
    | PersistSchedule
    | PersistDone
    | Emit
    | PublishState
)
