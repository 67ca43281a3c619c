"""Events: what happened, told to the core by the shell. Plain frozen data, past tense."""

from __future__ import annotations

from dataclasses import field

from receiver.core.reasons import Reason
from receiver.core.record import record


@record
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


@record
class PlaybackStarted:
    """libVLC reports the item with this token as playing."""

    token: int


@record
class PlaybackEnded:
    """The item with this token reached its end."""

    token: int


@record
class PlaybackFailed:
    """libVLC could not play the item with this token."""

    token: int
    detail: str = ""


@record
class PlayerCrashed:
    """The media engine (libVLC's process) died or stopped answering; a new one is started for
    the next item. Whatever was sounding is gone."""

    detail: str = ""


@record
class PlaybackProgress:
    """Where the player is in the item with this token (polled while a live stream plays)."""

    token: int
    position_ms: int


@record
class LocalInputChanged:
    """A local input changed: ``mic`` (the office microphone's priority switch) or
    ``amp_fault`` (the amplifier's fault contact)."""

    name: str
    active: bool


@record
class FetchFinished:
    """A pinned file is in the cache, verified, at ``path``."""

    sha256: str
    path: str


@record
class FetchFailed:
    """A pinned file could not be fetched, for ``reason``."""

    sha256: str
    reason: Reason
    detail: str = ""


@record
class TimerFired:
    """The deadline the core asked for has passed (the shell sends this; the core checks what)."""


@record
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
