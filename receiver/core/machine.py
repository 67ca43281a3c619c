"""The receiver's decisions: ``step(state, event, now) -> Step``.

Pure: no clock, no I/O, no logging. Everything that decides lives here or in the modules it
calls — envelope checks, authorisation, replay floors, preemption, relay timing, policy caps —
so it can be tested in microseconds with a fake clock. The shell runs the returned effects in
order and calls ``step`` again with ``TimerFired`` once ``deadline`` (monotonic) has passed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final
from urllib.parse import urlsplit

from receiver.core import admission, commands, reasons
from receiver.core.clock import Instant
from receiver.core.effects import (
    Effect,
    Emit,
    Fetch,
    PersistFloors,
    PersistResetFloor,
    PersistTrust,
    Play,
    PublishState,
    SetVolume,
    StopPlayback,
    SwitchRelay,
)
from receiver.core.events import (
    Event,
    FetchFailed,
    FetchFinished,
    LinkChanged,
    MessageReceived,
    PlaybackEnded,
    PlaybackFailed,
    PlaybackStarted,
    TimerFired,
)
from receiver.core.reasons import Rejection
from receiver.core.trust import Keyring

PRIORITY_RANK: Final = {"normal": 0, "priority": 1, "emergency": 2}
MAX_STOPPED_IDS: Final = 64  # ids named by recent stops, refused if their play comes later


@dataclass(frozen=True)
class Settings:
    """What the technician's config fixes for the life of the process."""

    device_id: str
    env: str
    groups: tuple[str, ...]
    topic_prefix: str = "loa/v1"
    default_volume: int = 70
    max_volume: int = 100
    max_play_duration_s: int = 3600
    warm_up_s: float = 1.0
    tail_s: float = 5.0
    allowed_schemes: tuple[str, ...] = ("https",)
    allowed_hosts: tuple[str, ...] = ()
    max_skew_s: float = 300.0
    max_command_age_s: float = 3600.0


@dataclass(frozen=True)
class Item:
    """The one thing being prepared or played. Phases: fetching -> waiting -> playing."""

    ref: str
    priority: str
    title: str
    files: tuple[commands.MediaFile, ...]
    stream_url: str | None
    volume: int
    max_duration_s: int
    start_at_utc: float | None
    repeats_left: int
    ready: Mapping[str, str] = field(default_factory=dict)  # sha256 -> cached path
    phase: str = "fetching"
    index: int = 0
    token: int = 0
    start_mono: float | None = None
    stop_mono: float | None = None
    since_utc: float | None = None  # when the player reported it playing

    @property
    def media(self) -> str:
        if self.stream_url is not None:
            return self.stream_url
        return self.ready[self.files[self.index].sha256]


@dataclass(frozen=True)
class State:
    settings: Settings
    keyring: Keyring
    floors: Mapping[str, tuple[int, str]]
    time_floor: float
    volume: int
    # None until the first synchronised clock after the store was empty (a new or reset
    # device): commands issued before that instant are refused (SECURITY.md property 10).
    reset_floor: float | None = None
    trust_digest: str = ""
    stopped_ids: tuple[str, ...] = ()
    relay_on: bool = False
    relay_off_mono: float | None = None
    item: Item | None = None
    next_token: int = 1


@dataclass(frozen=True)
class Step:
    state: State
    effects: tuple[Effect, ...]
    deadline: float | None


def initial_state(
    settings: Settings,
    keyring: Keyring,
    *,
    floors: Mapping[str, tuple[int, str]],
    time_floor: float,
    reset_floor: float | None = None,
    trust_digest: str = "",
) -> State:
    return State(
        settings=settings,
        keyring=keyring,
        floors=dict(floors),
        time_floor=time_floor,
        volume=min(settings.default_volume, settings.max_volume),
        reset_floor=reset_floor,
        trust_digest=trust_digest,
    )


def boot(state: State, now: Instant) -> Step:
    """The first step: the relay is forced off and the state is published."""
    state = replace(state, relay_on=False, relay_off_mono=None)
    return Step(state, (SwitchRelay(on=False), _state_effect(state)), None)


def step(state: State, event: Event, now: Instant) -> Step:
    effects: list[Effect] = []
    if state.reset_floor is None and now.utc_trusted:
        # The first trusted instant of a fresh store: from now on, older commands are stale.
        state = replace(state, reset_floor=now.utc)
        effects.append(PersistResetFloor(now.utc))
    if isinstance(event, MessageReceived):
        state = _on_message(state, event, now, effects)
    elif isinstance(event, FetchFinished | FetchFailed):
        state = _on_fetch(state, event, now, effects)
    elif isinstance(event, PlaybackStarted | PlaybackEnded | PlaybackFailed):
        state = _on_playback(state, event, now, effects)
    elif isinstance(event, TimerFired | LinkChanged):
        pass  # timers are handled below for every event; the link is the shell's business
    state = _run_timers(state, now, effects)
    return Step(state, tuple(effects), _next_deadline(state))


# --- messages ------------------------------------------------------------------------------


def _context(state: State) -> admission.Context:
    settings = state.settings
    return admission.Context(
        device_id=settings.device_id,
        env=settings.env,
        groups=settings.groups,
        keyring=state.keyring,
        floors=state.floors,
        time_floor=state.time_floor,
        reset_floor=state.reset_floor,
        trust_digest=state.trust_digest,
        stopped_ids=state.stopped_ids,
        max_skew_s=settings.max_skew_s,
        max_command_age_s=settings.max_command_age_s,
    )


def _on_message(state: State, event: MessageReceived, now: Instant, out: list[Effect]) -> State:
    try:
        admitted = admission.admit(_context(state), event.topic, event.payload, event.retained, now)
        if isinstance(admitted, admission.AdmittedCommand) and not admitted.duplicate:
            _check_policy(state, admitted.command, now)
    except Rejection as rejection:
        out.append(
            Emit("rejected", ref=rejection.ref, reason=rejection.reason, detail=rejection.detail)
        )
        return state
    if isinstance(admitted, admission.AdmittedTrust):
        return _accept_trust(state, admitted, out)
    header = admitted.command.header
    if admitted.duplicate:
        out.append(Emit("accepted", ref=header.id, detail="duplicate of the last accepted"))
        return state
    changed = {
        admission.command_stream(key): (header.seq, admitted.digest) for key in admitted.signers
    }
    body = admitted.command.body
    if isinstance(body, commands.Stop):
        changed.update(_stop_floor(state, header, body))
    floors = {**state.floors, **changed}
    time_floor = max(state.time_floor, header.iat, now.utc if now.utc_trusted else 0.0)
    state = replace(state, floors=floors, time_floor=time_floor)
    # Durable before the action: a power cut after this line can no longer let it replay.
    out.append(PersistFloors(changed, time_floor))
    out.append(Emit("accepted", ref=header.id, detail=header.type))
    return _act(state, admitted.command, now, out)


def _stop_floor(
    state: State, header: commands.Header, body: commands.Stop
) -> dict[str, tuple[int, str]]:
    """A stop of everything raises the floor below which older plays are refused."""
    if body.target != "all":
        return {}
    issued_ms = int(header.iat * 1000)
    current = state.floors.get(admission.STOP_ALL_STREAM)
    if current is not None and current[0] >= issued_ms:
        return {}
    return {admission.STOP_ALL_STREAM: (issued_ms, header.id)}


def _accept_trust(state: State, admitted: admission.AdmittedTrust, out: list[Effect]) -> State:
    document = admitted.document
    if admitted.duplicate:
        out.append(Emit("accepted", ref=document.id, detail="duplicate of the last accepted"))
        return state
    out.append(PersistTrust(document.version, admitted.body, admitted.digest))
    state = replace(state, keyring=document.keyring, trust_digest=admitted.digest)
    out.append(Emit("accepted", ref=document.id, detail=f"trust version {document.version}"))
    out.append(_state_effect(state))
    return state


def _url_allowed(settings: Settings, url: str) -> bool:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        return False
    return parts.scheme in settings.allowed_schemes and (
        host in settings.allowed_hosts or f"{host}:{port}" in settings.allowed_hosts
    )


def _check_policy(state: State, command: commands.Command, now: Instant) -> None:
    body = command.body
    ref = command.header.id
    if isinstance(body, commands.Relay):
        raise Rejection(reasons.POLICY, "manual relay control is not enabled", ref)
    if not isinstance(body, commands.Play):
        return
    urls = [f.url for f in body.files] + ([body.stream_url] if body.stream_url else [])
    for url in urls:
        if not _url_allowed(state.settings, url):
            raise Rejection(reasons.POLICY, "url scheme or host not on the allowlist", ref)
    if body.start_at is not None and not now.utc_trusted:
        raise Rejection(reasons.CLOCK_UNTRUSTED, "start_at needs a synchronised clock", ref)
    current = state.item
    if current is not None and PRIORITY_RANK[body.priority] < PRIORITY_RANK[current.priority]:
        raise Rejection(reasons.POLICY, f"a {current.priority} item is playing", ref)


def _act(state: State, command: commands.Command, now: Instant, out: list[Effect]) -> State:
    body = command.body
    ref = command.header.id
    if isinstance(body, commands.Play):
        return _start_item(state, ref, body, now, out)
    if isinstance(body, commands.Stop):
        if body.target != "all":
            state = replace(
                state, stopped_ids=(*state.stopped_ids[-(MAX_STOPPED_IDS - 1) :], body.target)
            )
        item = state.item
        if item is not None and body.target in ("all", item.ref):
            state = _end_item(state, now, out, "stopped", detail=f"by {ref}")
        return state
    if isinstance(body, commands.Volume):
        level = min(body.level, state.settings.max_volume)
        state = replace(state, volume=level)
        if state.item is not None:
            state = replace(state, item=replace(state.item, volume=level))
            out.append(SetVolume(level))
        out.append(_state_effect(state))
        return state
    out.append(_state_effect(state))  # report
    return state


def _start_item(
    state: State, ref: str, body: commands.Play, now: Instant, out: list[Effect]
) -> State:
    settings = state.settings
    if state.item is not None:
        state = _end_item(state, now, out, "preempted", detail=f"by {ref}", keep_relay=True)
    volume = min(body.volume if body.volume is not None else state.volume, settings.max_volume)
    item = Item(
        ref=ref,
        priority=body.priority,
        title=body.title,
        files=body.files,
        stream_url=body.stream_url,
        volume=volume,
        max_duration_s=min(body.max_duration_s, settings.max_play_duration_s),
        start_at_utc=body.start_at,
        repeats_left=body.repeat - 1,
    )
    requested: set[str] = set()
    for media in body.files:
        if media.sha256 not in requested:
            requested.add(media.sha256)
            out.append(Fetch(media.url, media.sha256, media.size))
    state = replace(state, item=item)
    if not body.files:
        state = _ready_to_start(state, now)
    return state


def _ready_to_start(state: State, now: Instant) -> State:
    """All media are at hand: fix the instant to start (after warm-up, or at start_at)."""
    item = state.item
    if item is None:
        return state
    start = now.mono if state.relay_on else now.mono + state.settings.warm_up_s
    if item.start_at_utc is not None:
        start = max(start, now.mono + (item.start_at_utc - now.utc))
    return replace(state, item=replace(item, phase="waiting", start_mono=start))


def _end_item(
    state: State,
    now: Instant,
    out: list[Effect],
    kind: str,
    *,
    reason: str | None = None,
    detail: str | None = None,
    keep_relay: bool = False,
) -> State:
    item = state.item
    if item is None:
        return state
    if item.phase == "playing":
        out.append(StopPlayback())
    out.append(Emit(kind, ref=item.ref, reason=reason, detail=detail))
    relay_off = None if keep_relay or not state.relay_on else now.mono + state.settings.tail_s
    state = replace(state, item=None, relay_off_mono=relay_off)
    if not keep_relay:
        out.append(_state_effect(state))
    return state


# --- adapters' reports ---------------------------------------------------------------------


def _on_fetch(
    state: State, event: FetchFinished | FetchFailed, now: Instant, out: list[Effect]
) -> State:
    item = state.item
    if item is None or item.phase != "fetching":
        return state
    if event.sha256 not in {f.sha256 for f in item.files}:
        return state
    if isinstance(event, FetchFailed):
        return _end_item(state, now, out, "failed", reason=event.reason, detail=event.detail)
    ready = {**item.ready, event.sha256: event.path}
    state = replace(state, item=replace(item, ready=ready))
    if all(f.sha256 in ready for f in item.files):
        state = _ready_to_start(state, now)
    return state


def _on_playback(
    state: State,
    event: PlaybackStarted | PlaybackEnded | PlaybackFailed,
    now: Instant,
    out: list[Effect],
) -> State:
    item = state.item
    if item is None or item.phase != "playing" or event.token != item.token:
        return state  # a late report about something already stopped
    if isinstance(event, PlaybackStarted):
        if item.since_utc is None:
            state = replace(state, item=replace(item, since_utc=now.utc))
            out.append(Emit("started", ref=item.ref, detail=item.title))
            out.append(_state_effect(state))
        return state
    if isinstance(event, PlaybackFailed):
        item = replace(item, phase="failed")
        state = replace(state, item=item)
        return _end_item(
            state, now, out, "failed", reason=reasons.PLAYBACK_FAILED, detail=event.detail
        )
    if item.index + 1 < len(item.files):
        return _play(state, replace(item, index=item.index + 1), out)
    if item.repeats_left > 0:
        return _play(state, replace(item, index=0, repeats_left=item.repeats_left - 1), out)
    state = replace(state, item=replace(item, phase="ended"))
    return _end_item(state, now, out, "finished", detail=item.title)


def _play(state: State, item: Item, out: list[Effect]) -> State:
    token = state.next_token
    item = replace(item, phase="playing", token=token)
    out.append(Play(token, item.media, item.volume))
    return replace(state, item=item, next_token=token + 1)


# --- time ----------------------------------------------------------------------------------


def _run_timers(state: State, now: Instant, out: list[Effect]) -> State:
    settings = state.settings
    item = state.item
    if item is not None and item.phase == "waiting" and item.start_mono is not None:
        if not state.relay_on and now.mono >= item.start_mono - settings.warm_up_s:
            out.append(SwitchRelay(on=True))
            state = replace(state, relay_on=True, relay_off_mono=None)
        if now.mono >= item.start_mono:
            item = replace(item, stop_mono=now.mono + item.max_duration_s)
            state = _play(state, item, out)
    item = state.item
    if (
        item is not None
        and item.phase == "playing"
        and item.stop_mono is not None
        and now.mono >= item.stop_mono
    ):
        state = _end_item(state, now, out, "stopped", detail="max_duration_s reached")
    if (
        state.item is None
        and state.relay_on
        and state.relay_off_mono is not None
        and now.mono >= state.relay_off_mono
    ):
        out.append(SwitchRelay(on=False))
        state = replace(state, relay_on=False, relay_off_mono=None)
        out.append(_state_effect(state))
    return state


def _next_deadline(state: State) -> float | None:
    candidates: list[float] = []
    item = state.item
    if item is not None and item.phase == "waiting" and item.start_mono is not None:
        candidates.append(item.start_mono)
        if not state.relay_on:
            candidates.append(item.start_mono - state.settings.warm_up_s)
    if item is not None and item.phase == "playing" and item.stop_mono is not None:
        candidates.append(item.stop_mono)
    if item is None and state.relay_on and state.relay_off_mono is not None:
        candidates.append(state.relay_off_mono)
    return min(candidates) if candidates else None


def state_fields(state: State) -> dict[str, Any]:
    """The parts of the published device state that the core owns."""
    item = state.item
    fields: dict[str, Any] = {
        "state": "playing" if item is not None and item.since_utc is not None else "idle",
        "volume": state.volume,
        "relays": {"amp": "on" if state.relay_on else "off"},
        "trust_version": state.keyring.version,
    }
    if item is not None and item.since_utc is not None:
        fields["playing"] = {
            "ref": item.ref,
            "title": item.title,
            "priority": item.priority,
            "since": item.since_utc,
        }
    return fields


def _state_effect(state: State) -> PublishState:
    return PublishState(state_fields(state))
