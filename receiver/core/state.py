"""The core's state: settings fixed by the config, and everything the receiver knows now.

All frozen: ``step`` returns a new state rather than changing one, so a test can hold any
state it saw and compare it with the next.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from receiver.core import commands
from receiver.core.amp import Amp, RelayOverride
from receiver.core.events import MessageReceived
from receiver.core.limits import RejectionWindow
from receiver.core.schedule import Schedule
from receiver.core.trust import Keyring
from receiver.core.vocabulary import ORIGIN_RANK, PRIORITY_RANK, Origin, Phase, Priority

__all__ = [
    "ORIGIN_RANK",
    "PRIORITY_RANK",
    "Amp",
    "Item",
    "RejectionWindow",
    "RelayOverride",
    "Settings",
    "Staged",
    "State",
    "initial_state",
    "needed_media",
    "state_fields",
]


@dataclass(frozen=True)
class Settings:
    """What the technician's config fixes for the life of the process.

    No defaults here: they are the config's (``receiver/config_model.py``), and every Settings,
    the tests' too, is made from a parsed config by ``receiver.assembly.settings_from_config``.
    """

    device_id: str
    env: str
    groups: tuple[str, ...]
    topic_prefix: str
    default_volume: int
    max_volume: int
    emergency_volume: int
    max_play_duration_s: int
    warm_up_s: float
    tail_s: float
    relay_max_toggles_per_min: int
    allowed_schemes: tuple[str, ...]
    allowed_hosts: tuple[str, ...]
    max_skew_s: float
    max_command_age_s: float
    timezone: str
    quiet_hours: tuple[tuple[int, int], ...]  # (from, to) minutes after local midnight
    late_join_s: float
    stall_timeout_s: float
    stream_max_restarts: int
    # A relay that has played this long without a stall resets its restart count: the budget
    # is for consecutive failures, not for every blip of an hour-long relay.
    stream_healthy_s: float
    fallback_file: str | None
    max_file_bytes: int
    # After start-up, commands wait this long for NTP before they are judged without a
    # trusted clock: a backlog queued during an outage then meets a synchronised clock.
    sync_grace_s: float
    rejections_per_window: int
    rejection_window_s: float
    prefetch_s: float = 48 * 3600.0  # not a setting: how far ahead a programme's files come


@dataclass(frozen=True)
class Item:
    """One thing to play: from a command or a schedule occurrence.

    Phases: ``pending`` (waiting for media or its start), ``warming`` (amplifier warming up),
    ``playing``, ``reconnecting`` (a live stream dropped; retry at ``retry_mono``),
    ``suspended`` (preempted; resumes at ``index``/``offset_ms`` while its window is open),
    ``ended`` (taken out, being reported).
    """

    ref: str
    origin: Origin
    priority: Priority
    title: str
    files: tuple[commands.MediaFile, ...]
    stream_url: str | None
    volume: int
    max_duration_s: int
    not_before_mono: float
    window_end_mono: float
    seq: int  # arrival order, for ties
    repeats_left: int = 0
    occurrence: str | None = None
    late_by_s: float = 0.0
    ready: Mapping[str, str] = field(default_factory=dict)  # sha256 -> cached path
    phase: Phase = "pending"
    index: int = 0
    offset_ms: int = 0
    token: int = 0
    played_since_mono: float | None = None  # when the current file started sounding
    since_utc: float | None = None  # when it first started sounding
    stop_mono: float | None = None
    restarts: int = 0
    retry_mono: float | None = None
    progress_ms: int = -1
    progress_mono: float = 0.0
    on_fallback: bool = False
    preroll_token: int = 0  # the token its file was opened under ahead of its start, if any
    healthy_since_mono: float | None = None  # a stream's first progress since its (re)start
    resuming: bool = False  # preempted: its next start is reported (``started``) again

    @property
    def is_stream(self) -> bool:
        return self.stream_url is not None

    @property
    def media_ready(self) -> bool:
        return self.is_stream or all(f.sha256 in self.ready for f in self.files)


@dataclass(frozen=True)
class Staged:
    """A schedule version accepted but not yet in force: its media are being fetched."""

    schedule: Schedule
    body: bytes
    digest: str
    ready: frozenset[str] = frozenset()
    attempts: int = 1
    retry_mono: float | None = None

    @property
    def needed(self) -> frozenset[str]:
        return frozenset(f.sha256 for e in self.schedule.entries for f in e.files)


@dataclass(frozen=True)
class Intent:
    """A command accepted but not yet carried out to its end, stored with its replay floor.

    Written in the same transaction as the floor (write-ahead), so a crash between accepting a
    command and acting on it cannot leave the command spent and silent: after a restart it is
    carried out if ``window_end_utc`` has not passed, else reported ``failed``. ``stage`` is
    ``accepted`` until a play's sound is about to start, then ``started`` (a play cut off by a
    restart is reported, never sounded twice). The row goes when the command is done.
    """

    ref: str
    body: bytes  # the verified command payload (strict JSON), to act on after a restart
    window_end_utc: float  # after this instant there is no point in carrying it out
    stage: str = "accepted"  # accepted | started


@dataclass(frozen=True)
class State:
    settings: Settings
    keyring: Keyring
    floors: Mapping[str, tuple[int, str]]
    time_floor: float
    volume: int
    # None until the first synchronised clock after the store was empty (a new or reset
    # device): commands issued before that instant are refused (docs/security.md).
    reset_floor: float | None = None
    trust_digest: str = ""
    schedules: Mapping[str, Schedule] = field(default_factory=dict)
    schedule_digests: Mapping[str, str] = field(default_factory=dict)
    staged: Mapping[str, Staged] = field(default_factory=dict)
    done: frozenset[str] = frozenset()  # schedule occurrences already played or given up
    next_schedule_check_mono: float = 0.0
    prefetched: frozenset[str] = frozenset()
    active: Item | None = None
    queue: tuple[Item, ...] = ()
    next_seq: int = 1
    next_token: int = 1
    amp: Amp = field(default_factory=Amp)  # the amplifier's relay (receiver/core/amp.py)
    mic_active: bool = False
    faults: frozenset[str] = frozenset()
    booted_mono: float = 0.0
    rejection_window: RejectionWindow = field(default_factory=RejectionWindow)
    held: tuple[MessageReceived, ...] = ()  # commands waiting for a synchronised clock
    # Commands a previous run accepted and did not finish (oldest first): settled once the
    # clock can tell whether their windows are still open.
    recovered: tuple[Intent, ...] = ()

    def items(self) -> tuple[Item, ...]:
        return ((self.active,) if self.active is not None else ()) + self.queue


def initial_state(
    settings: Settings,
    keyring: Keyring,
    *,
    floors: Mapping[str, tuple[int, str]],
    time_floor: float,
    reset_floor: float | None = None,
    trust_digest: str = "",
    schedules: Mapping[str, tuple[Schedule, str]] | None = None,
    done: frozenset[str] = frozenset(),
    recovered: tuple[Intent, ...] = (),
) -> State:
    stored = schedules or {}
    return State(
        settings=settings,
        keyring=keyring,
        floors=dict(floors),
        time_floor=time_floor,
        volume=min(settings.default_volume, settings.max_volume),
        reset_floor=reset_floor,
        trust_digest=trust_digest,
        schedules={sid: schedule for sid, (schedule, _) in stored.items()},
        schedule_digests={sid: digest for sid, (_, digest) in stored.items()},
        done=done,
        recovered=recovered,
    )


def state_fields(state: State) -> dict[str, Any]:
    """The parts of the published device state that the core owns."""
    item = state.active
    sounding = item is not None and item.since_utc is not None and item.phase == "playing"
    fields: dict[str, Any] = {
        "state": "playing" if sounding else "idle",
        # The level the speaker gets now: an item's own (emergency level, capped request) while
        # it sounds, else the device's volume.
        "volume": item.volume if sounding and item is not None else state.volume,
        "relays": {"amp": "on" if state.amp.on else "off"},
        "trust_version": state.keyring.version,
        "schedules": {sid: s.version for sid, s in sorted(state.schedules.items())},
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
    hashes = {f.sha256 for item in state.items() for f in item.files}
    for schedule in state.schedules.values():
        hashes.update(f.sha256 for entry in schedule.entries for f in entry.files)
    for staged in state.staged.values():
        hashes.update(staged.needed)
    return frozenset(hashes)
