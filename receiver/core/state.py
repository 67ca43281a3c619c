"""The core's state: the composition of its parts, each owned by one module, plus the few
facts the machine keeps itself.

| part | record | owner |
| --- | --- | --- |
| trust and replay floors | ``Floors`` | :mod:`floors` |
| programme (schedules in force, staged, done) | ``Programme`` | :mod:`programme` |
| playback (the active item, the queue, tokens) | ``Playback`` | :mod:`engine` |
| the amplifier relay | ``Amp`` | :mod:`amp` |
| the flood limit on rejection reports | ``RejectionWindow`` | :mod:`limits` |

Each owner changes its part with pure functions ``(part, input, now) -> (part, effects)``;
:mod:`machine` composes them. All frozen: ``step`` returns a new state rather than changing
one, so a test can hold any state it saw and compare it with the next.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import Any

from receiver.core.amp import Amp, RelayOverride
from receiver.core.engine import Item, Playback
from receiver.core.events import MessageReceived
from receiver.core.floors import Floors
from receiver.core.intents import Intent
from receiver.core.limits import RejectionWindow
from receiver.core.programme import Programme, Staged
from receiver.core.record import record
from receiver.core.schedule import Schedule
from receiver.core.settings import Settings
from receiver.core.trust import Keyring
from receiver.core.vocabulary import ORIGIN_RANK, PRIORITY_RANK

__all__ = [
    "ORIGIN_RANK",
    "PRIORITY_RANK",
    "Amp",
    "Floors",
    "Intent",
    "Item",
    "Playback",
    "Programme",
    "RejectionWindow",
    "RelayOverride",
    "Settings",
    "Staged",
    "State",
    "initial_state",
    "needed_media",
    "state_fields",
]


@record
class State:
    settings: Settings
    floors: Floors  # trust and replay floors (receiver/core/floors.py)
    volume: int  # the device's volume (the machine's: set by a volume command)
    programme: Programme = field(default_factory=Programme)  # receiver/core/programme.py
    playback: Playback = field(default_factory=Playback)  # receiver/core/engine.py
    amp: Amp = field(default_factory=Amp)  # the amplifier's relay (receiver/core/amp.py)
    rejection_window: RejectionWindow = field(default_factory=RejectionWindow)  # limits.py
    # The machine's own: the local inputs, when this run started, and the commands that wait
    # for a synchronised clock.
    mic_active: bool = False
    faults: frozenset[str] = frozenset()
    booted_mono: float = 0.0
    held: tuple[MessageReceived, ...] = ()  # commands waiting for a synchronised clock
    # Commands a previous run accepted and did not finish (oldest first): settled once the
    # clock can tell whether their windows are still open.
    recovered: tuple[Intent, ...] = ()


def initial_state(
    settings: Settings,
    keyring: Keyring,
    *,
    floors: Mapping[str, tuple[int, str]],
    time_floor: float,
    reset_floor: float | None = None,
    trust_digest: str = "",
    schedules: Mapping[str, tuple[Schedule, str]] | None = None,
    stored_schedules: Mapping[str, bytes] | None = None,
    done: frozenset[str] = frozenset(),
    recovered: tuple[Intent, ...] = (),
) -> State:
    stored = schedules or {}
    return State(
        settings=settings,
        floors=Floors(
            keyring=keyring,
            streams=dict(floors),
            time_floor=time_floor,
            reset_floor=reset_floor,
            trust_digest=trust_digest,
        ),
        volume=min(settings.default_volume, settings.max_volume),
        programme=Programme(
            schedules={sid: schedule for sid, (schedule, _) in stored.items()},
            digests={sid: digest for sid, (_, digest) in stored.items()},
            stored={sid: raw for sid, raw in (stored_schedules or {}).items() if sid in stored},
            done=done,
        ),
        recovered=recovered,
    )


def state_fields(state: State) -> dict[str, Any]:
    """The parts of the published device state that the core owns."""
    item = state.playback.active
    sounding = item is not None and item.since_utc is not None and item.phase == "playing"
    fields: dict[str, Any] = {
        "state": "playing" if sounding else "idle",
        # The level the speaker gets now: an item's own (emergency level, capped request) while
        # it sounds, else the device's volume.
        "volume": item.volume if sounding and item is not None else state.volume,
        "relays": {"amp": "on" if state.amp.on else "off"},
        "trust_version": state.floors.keyring.version,
        "schedules": {sid: s.version for sid, s in sorted(state.programme.schedules.items())},
    }
    if sounding and item is not None:
        fields["playing"] = {
            "ref": item.ref,
            "title": item.title,
            "priority": item.priority,
            "since": item.since_utc,
        }
    if state.faults:
        fields["faults"] = sorted(state.faults)
    if state.amp.override is not None:
        fields["relay_override"] = state.amp.override.mode
    return fields


def needed_media(state: State) -> frozenset[str]:
    """Files that upcoming plays need: never to be evicted from the cache."""
    hashes = {f.sha256 for item in state.playback.items() for f in item.files}
    for schedule in state.programme.schedules.values():
        hashes.update(f.sha256 for entry in schedule.entries for f in entry.files)
    for staged in state.programme.staged.values():
        hashes.update(staged.needed)
    return frozenset(hashes)
