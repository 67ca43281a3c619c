"""The core's words: the closed sets of strings its records carry.

``Literal`` types, so the values stay the plain strings of the protocol and the logs while
``mypy --strict`` refuses a misspelt one (in a constructor, a ``replace`` or a comparison).
The reason codes are :class:`receiver.core.reasons.Reason`.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

Phase = Literal["pending", "warming", "playing", "reconnecting", "suspended", "ended"]
"""Where an item is: waiting for media or its start, amplifier warming, sounding, a live
stream retrying, preempted (resumes later), or taken out for good."""

Origin = Literal["command", "schedule"]
Priority = Literal["normal", "priority", "emergency"]
RelayMode = Literal["on", "off"]
"""A manual relay override (``auto`` is no override at all)."""

EventKind = Literal[
    "accepted", "rejected", "started", "finished", "stopped", "preempted", "failed", "fault"
]
"""The ``kind`` of a device event (``schemas/event.json``)."""

PRIORITIES: Final[tuple[Priority, ...]] = get_args(Priority)
EVENT_KINDS: Final[tuple[EventKind, ...]] = get_args(EventKind)
PRIORITY_RANK: Final[dict[Priority, int]] = {p: rank for rank, p in enumerate(PRIORITIES)}
ORIGIN_RANK: Final[dict[Origin, int]] = {"schedule": 0, "command": 1}
