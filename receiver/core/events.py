"""Events: what happened, told to the core by the shell. Plain frozen data, past tense."""

from __future__ import annotations

from dataclasses import dataclass, field

from receiver.core.reasons import Reason


@dataclass(frozen=True)
class MessageReceived:
    """An MQTT message arrived on one of our subscriptions.

    ``mid`` and ``qos`` are the link's, for acknowledging it once it has been handled; the core
    never looks at them.
    """

    topic: str
    payload: bytes
    retained: bool = False
    mid: int = field(default=0, compare=False)
    qos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class PlaybackStarted:
    """libVLC reports the item with this token as playing."""

    token: int


@dataclass(frozen=True)
class PlaybackEnded:
    """The item with this token reached its end."""

    token: int


@dataclass(frozen=True)
class PlaybackFailed:
    """libVLC could not play the item with this token."""

    token: int
    detail: str = ""


@dataclass(frozen=True)
class PlayerCrashed:
    """The media engine (libVLC's process) died or stopped answering; a new one is started for
    the next item. Whatever was sounding is gone."""

    detail: str = ""


@dataclass(frozen=True)
class PlaybackProgress:
    """Where the player is in the item with this token (polled while a live stream plays)."""

    token: int
    position_ms: int


@dataclass(frozen=True)
class LocalInputChanged:
    """A local input changed: ``mic`` (the office microphone's priority switch) or
    ``amp_fault`` (the amplifier's fault contact)."""

    name: str
    active: bool


@dataclass(frozen=True)
class FetchFinished:
    """A pinned file is in the cache, verified, at ``path``."""

    sha256: str
    path: str


@dataclass(frozen=True)
class FetchFailed:
    """A pinned file could not be fetched, for ``reason``."""

    sha256: str
    reason: Reason
    detail: str = ""


@dataclass(frozen=True)
class TimerFired:
    """The deadline the core asked for has passed (the shell sends this; the core checks what)."""


@dataclass(frozen=True)
class LinkChanged:
    """The broker connection went up or down."""

    up: bool


Event = (
    MessageReceived
    | PlaybackStarted
    | PlaybackEnded
    | PlaybackFailed
    | PlaybackProgress
    | PlayerCrashed
    | LocalInputChanged
    | FetchFinished
    | FetchFailed
    | TimerFired
    | LinkChanged
)
