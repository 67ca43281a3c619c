"""The receiver's decisions: ``step(state, event, now) -> Step``.

Pure: no clock, no I/O, no logging. A message is admitted (:mod:`admission`), checked against
local policy (:mod:`policy`) and acted on here; what plays when is the engine's
(:mod:`engine`), and schedules are :mod:`programme`'s. The shell runs the returned effects in
order and calls ``step`` again with ``TimerFired`` once ``deadline`` (monotonic) has passed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Final

from receiver.core import admission, commands, engine, limits, programme, reasons
from receiver.core.clock import Instant
from receiver.core.effects import (
    Effect,
    Emit,
    PersistFloors,
    PersistIntentDone,
    PersistResetFloor,
    PersistTrust,
    SetVolume,
    SwitchRelay,
)
from receiver.core.events import (
    Event,
    FetchFailed,
    FetchFinished,
    LocalInputChanged,
    MessageReceived,
    PlaybackEnded,
    PlaybackFailed,
    PlaybackProgress,
    PlaybackStarted,
    PlayerCrashed,
)
from receiver.core.policy import in_quiet_hours, url_allowed, volume_for
from receiver.core.reasons import Rejection
from receiver.core.state import (
    Intent,
    Item,
    RelayOverride,
    Settings,
    State,
    initial_state,
    needed_media,
    state_fields,
)
from receiver.core.strict_json import StrictJsonError, loads_strict

__all__ = [
    "Settings",
    "State",
    "Step",
    "boot",
    "initial_state",
    "needed_media",
    "state_fields",
    "step",
]

MAX_SETTLE_ROUNDS: Final = 4
MAX_HELD: Final = 64
CARRIED_OUT: Final = "carried out after a restart"  # the detail of a recovered `accepted`
MAX_DETAIL_CHARS: Final = 200  # the bound of an event's detail (schemas/event.json)


@dataclass(frozen=True)
class Step:
    state: State
    effects: tuple[Effect, ...]
    deadline: float | None


def boot(state: State, now: Instant) -> Step:
    """The first step: the relay is forced off and the state is published."""
    state = replace(state, amp=replace(state.amp, on=False, off_mono=None), booted_mono=now.mono)
    out: list[Effect] = [SwitchRelay(on=False)]
    # Before the first state: whoever sees it and signs a command then must be served.
    state = _fix_reset_floor(state, now, out)
    out.append(engine.publish_state(state))
    return Step(state, tuple(out), now.mono)


def _fix_reset_floor(state: State, now: Instant, out: list[Effect]) -> State:
    """The first trusted instant of a fresh store: from then on, older commands are stale.

    Cut to the millisecond, the precision of ``iat`` on the wire, so a command signed in the
    same millisecond is not refused for a fraction the operator could not have written.
    """
    if state.reset_floor is not None or not now.utc_trusted:
        return state
    floor = math.floor(now.utc * 1000) / 1000
    out.append(PersistResetFloor(floor))
    return replace(state, reset_floor=floor)


def step(state: State, event: Event, now: Instant) -> Step:
    out: list[Effect] = []
    state = _fix_reset_floor(state, now, out)
    if isinstance(event, MessageReceived) and _should_hold(state, event, now):
        state = replace(state, held=(*state.held, event)[-MAX_HELD:])
    elif isinstance(event, MessageReceived):
        state = _on_message(state, event, now, out)
    elif isinstance(event, FetchFinished):
        state = engine.media_arrived(state, event.sha256, event.path)
        state = programme.staged_media_arrived(state, event.sha256, now, out)
    elif isinstance(event, FetchFailed):
        state = engine.media_failed(state, event, now, out)
        state = programme.staged_media_failed(state, event, now, out)
        # A file fetched ahead for the programme is asked for again at the next check.
        state = replace(state, prefetched=state.prefetched - {event.sha256})
    elif isinstance(event, PlaybackStarted):
        state = engine.sound_started(state, event.token, now, out)
    elif isinstance(event, PlaybackEnded):
        state = engine.sound_ended(state, event.token, now, out)
    elif isinstance(event, PlaybackFailed):
        state = engine.sound_failed(state, event.token, event.detail, now, out)
    elif isinstance(event, PlaybackProgress):
        state = engine.progress(state, event.token, event.position_ms, now)
    elif isinstance(event, PlayerCrashed):
        state = engine.engine_crashed(state, event.detail, now, out)
    elif isinstance(event, LocalInputChanged):
        state = _on_local_input(state, event, out)
    if state.recovered and not _in_grace(state, now):
        recovered, state = state.recovered, replace(state, recovered=())
        for intent in recovered:
            state = _recover(state, intent, now, out)
    if state.held and not _in_grace(state, now):
        held, state = state.held, replace(state, held=())
        for message in held:
            state = _on_message(state, message, now, out)
    if state.rejection_window.suppressed:
        state = _close_rejection_window(state, now, out)
    state = programme.retry_staged(state, now, out)
    state = programme.evaluate(state, now, out)
    state = _settle(state, now, out)
    deadline = engine.next_deadline(state, now)
    window_end = state.rejection_window.deadline(state.settings.rejection_window_s)
    if window_end is not None:
        deadline = window_end if deadline is None else min(deadline, window_end)
    if state.held or state.recovered:
        grace_end = state.booted_mono + state.settings.sync_grace_s
        deadline = grace_end if deadline is None else min(deadline, grace_end)
    return Step(state, tuple(out), deadline)


def _in_grace(state: State, now: Instant) -> bool:
    return not now.utc_trusted and now.mono < state.booted_mono + state.settings.sync_grace_s


def _should_hold(state: State, event: MessageReceived, now: Instant) -> bool:
    """Commands arriving before NTP has answered wait a little: a backlog queued during an
    outage is then judged against a synchronised clock rather than an old saved floor."""
    return _in_grace(state, now) and event.topic.endswith("/cmd") and not event.retained


def _settle(state: State, now: Instant, out: list[Effect]) -> State:
    """Choose what plays, switch the relay, start sound; again while one round changes things."""
    for _ in range(MAX_SETTLE_ROUNDS):
        before = state
        state = engine.select(state, now, out)
        state = engine.reconcile_relay(state, now, out)
        state = engine.run_active(state, now, out)
        state = engine.preroll(state, now, out)
        if state == before:
            break
    return state


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
        max_skew_s=settings.max_skew_s,
        max_command_age_s=settings.max_command_age_s,
        staged_versions={
            sid: (staged.schedule.version, staged.digest) for sid, staged in state.staged.items()
        },
    )


def _on_message(state: State, event: MessageReceived, now: Instant, out: list[Effect]) -> State:
    try:
        admitted = admission.admit(_context(state), event.topic, event.payload, event.retained, now)
        if isinstance(admitted, admission.AdmittedCommand) and not admitted.duplicate:
            _check_policy(state, admitted.command, now)
    except Rejection as rejection:
        return _report_rejection(state, rejection, now, out)
    if isinstance(admitted, admission.AdmittedTrust):
        return _accept_trust(state, admitted, out)
    if isinstance(admitted, admission.AdmittedSchedule):
        return _accept_schedule(state, admitted, now, out)
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
    time_floor = _raised_floor(state, header.iat, now)
    state = replace(state, floors=floors, time_floor=time_floor)
    # Durable before the action, with the intent to act (write-ahead): a power cut after this
    # line can no longer let it replay, nor leave it spent without a word (see _recover).
    intent = Intent(header.id, admitted.body, _window_end_utc(state, admitted.command, now))
    out.append(PersistFloors(changed, time_floor, intent))
    note = _clamp_note(state.settings, body)
    out.append(Emit("accepted", ref=header.id, detail=header.type + (f"; {note}" if note else "")))
    state = _act(state, admitted.command, now, out)
    if not isinstance(body, commands.Play):
        out.append(PersistIntentDone(header.id))  # carried out in this very step
    return state


def _window_end_utc(state: State, command: commands.Command, now: Instant) -> float:
    """Until when a command is worth carrying out: a play's window (as ``_queue_play`` sets
    it), any other command's ``exp``."""
    body = command.body
    if isinstance(body, commands.Play):
        start = now.utc if body.start_at is None else max(body.start_at, now.utc)
        return start + min(body.max_duration_s, state.settings.max_play_duration_s)
    return command.header.exp


def _recover(state: State, intent: Intent, now: Instant, out: list[Effect]) -> State:
    """A command that a previous run accepted (its floor stored) and did not finish.

    Carried out now if its window is still open and it never sounded; otherwise reported
    ``failed`` (``interrupted``), so central never sees a command simply vanish. A play that
    had started is not played again from the top: central decides whether to send it again.
    """
    ref = intent.ref
    if intent.stage == "started":
        return _interrupted(state, ref, "cut off by a restart of the device", out)
    if not now.utc_trusted:
        why = "accepted before a restart; without a synchronised clock its window cannot be told"
        return _interrupted(state, ref, why, out)
    if now.utc >= intent.window_end_utc:
        return _interrupted(state, ref, "accepted before a restart; its window closed since", out)
    try:
        doc = loads_strict(intent.body)
        command = commands.parse_command(doc, commands.parse_header(doc))
    except (Rejection, StrictJsonError):
        return _interrupted(state, ref, "accepted before a restart; unreadable after it", out)
    out.append(Emit("accepted", ref=ref, detail=f"{command.header.type}, {CARRIED_OUT}"))
    body = command.body
    if isinstance(body, commands.Play):
        # Its intent stays until the item ends, so a second restart is handled the same way.
        return _queue_play(state, ref, body, now, out, window_end_utc=intent.window_end_utc)
    state = _act(state, command, now, out)
    out.append(PersistIntentDone(ref))
    return state


def _interrupted(state: State, ref: str, detail: str, out: list[Effect]) -> State:
    out.append(Emit("failed", ref=ref, reason=reasons.INTERRUPTED, detail=detail))
    out.append(PersistIntentDone(ref))
    return state


def _report_rejection(state: State, rejection: Rejection, now: Instant, out: list[Effect]) -> State:
    settings = state.settings
    window, effects = limits.report(
        state.rejection_window,
        rejection,
        now,
        per_window=settings.rejections_per_window,
        window_s=settings.rejection_window_s,
    )
    out.extend(effects)
    return replace(state, rejection_window=window)


def _close_rejection_window(state: State, now: Instant, out: list[Effect]) -> State:
    window, effects = limits.close(
        state.rejection_window, now, window_s=state.settings.rejection_window_s
    )
    if window is state.rejection_window:
        return state  # still open (every step asks while a flood is counted): no copy
    out.extend(effects)
    return replace(state, rejection_window=window)


def _raised_floor(state: State, iat: float, now: Instant) -> float:
    """The trusted-time floor after a verified message issued at ``iat``.

    With a synchronised clock ``iat`` was already checked against it. Without one, a single
    message may move the floor at most ``max_skew_s`` ahead, so one command with a wrong
    far-future ``iat`` cannot make every later command look expired.
    """
    if now.utc_trusted:
        return max(state.time_floor, min(iat, now.utc + state.settings.max_skew_s), now.utc)
    if state.time_floor > 0:
        iat = min(iat, state.time_floor + state.settings.max_skew_s)
    return max(state.time_floor, iat)


def _stop_floor(
    state: State, header: commands.Header, body: commands.Stop
) -> dict[str, tuple[int, str]]:
    """A stop of everything raises the floor below which older plays are refused; a stop that
    names an id remembers it, so that play is refused if it arrives later (durably, like the
    floors: the store keeps the newest few hundred)."""
    issued_ms = int(header.iat * 1000)
    if body.target != "all":
        return {admission.STOP_ID_STREAM + body.target: (issued_ms, header.id)}
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
    out.append(engine.publish_state(state))
    return state


def _clamp_note(settings: Settings, body: commands.Body) -> str | None:
    """Words for a requested level the local caps lower (the state shows the level applied)."""
    if isinstance(body, commands.Volume) and body.level > settings.max_volume:
        return f"level {body.level} clamped to {settings.max_volume} (max_volume)"
    if isinstance(body, commands.Play) and body.volume is not None:
        applied = volume_for(settings, body.priority, body.volume, 0)
        if applied < body.volume:
            cap = "emergency_volume" if body.priority == "emergency" else "max_volume"
            return f"volume {body.volume} clamped to {applied} ({cap})"
    return None


def _bounded(detail: str) -> str:
    """An event's detail within the event schema's 200 characters."""
    return detail if len(detail) <= MAX_DETAIL_CHARS else detail[: MAX_DETAIL_CHARS - 1] + "…"


def _accept_schedule(
    state: State, admitted: admission.AdmittedSchedule, now: Instant, out: list[Effect]
) -> State:
    schedule = admitted.schedule
    if admitted.duplicate:
        out.append(Emit("accepted", ref=schedule.id, detail="duplicate of the last accepted"))
        return state
    files = len({f.sha256 for e in schedule.entries for f in e.files})
    detail = f"schedule version {schedule.version}, {len(schedule.entries)} entries"
    detail = "; ".join(
        [f"{detail}, fetching {files} files", *programme.retimed_today(state, schedule, now)]
    )
    out.append(Emit("accepted", ref=schedule.id, detail=_bounded(detail)))
    state = programme.stage(state, schedule, admitted.body, admitted.digest, out)
    staged = state.staged[schedule.id]
    if not staged.needed:
        state = programme.activate(state, staged, now, out)
    return state


def _check_policy(state: State, command: commands.Command, now: Instant) -> None:
    body = command.body
    ref = command.header.id
    settings = state.settings
    if isinstance(body, commands.Relay):
        if state.amp.toggles_in_window(now) >= settings.relay_max_toggles_per_min:
            raise Rejection(reasons.POLICY, "relay switched too often in the last minute", ref)
        return
    if not isinstance(body, commands.Play):
        return
    urls = [f.url for f in body.files] + ([body.stream_url] if body.stream_url else [])
    for url in urls:
        if not url_allowed(settings, url):
            raise Rejection(reasons.POLICY, "url scheme or host not on the allowlist", ref)
    if any(f.size > settings.max_file_bytes for f in body.files):
        raise Rejection(reasons.TOO_LARGE, "a file is larger than media.max_file_bytes", ref)
    if body.start_at is not None and not now.utc_trusted:
        raise Rejection(reasons.CLOCK_UNTRUSTED, "start_at needs a synchronised clock", ref)
    starts = body.start_at if body.start_at is not None else now.utc
    if body.priority != "emergency" and in_quiet_hours(settings, starts):
        raise Rejection(reasons.POLICY, "inside the local quiet hours", ref)


def _act(state: State, command: commands.Command, now: Instant, out: list[Effect]) -> State:
    body = command.body
    ref = command.header.id
    if isinstance(body, commands.Play):
        return _queue_play(state, ref, body, now, out)
    if isinstance(body, commands.Stop):
        return _stop(state, ref, body.target, now, out)
    if isinstance(body, commands.Volume):
        level = min(body.level, state.settings.max_volume)
        state = replace(state, volume=level)
        active = state.active
        if active is not None and active.priority != "emergency":
            state = replace(state, active=replace(active, volume=level))
            out.append(SetVolume(level))
        out.append(engine.publish_state(state))
        return state
    if isinstance(body, commands.Relay):
        if body.state == "auto":
            override = None
        else:
            until = None if body.duration_s is None else now.mono + body.duration_s
            override = RelayOverride(body.state, until)
        state = replace(state, amp=replace(state.amp, override=override))
        out.append(engine.publish_state(state))
        return state
    out.append(engine.publish_state(state))  # report
    return state


def _queue_play(
    state: State,
    ref: str,
    body: commands.Play,
    now: Instant,
    out: list[Effect],
    *,
    window_end_utc: float | None = None,
) -> State:
    """Queue a play; ``window_end_utc`` keeps the window it was given before a restart."""
    settings = state.settings
    delay = 0.0 if body.start_at is None else max(0.0, body.start_at - now.utc)
    duration = min(body.max_duration_s, settings.max_play_duration_s)
    window_end_mono = now.mono + delay + duration
    if window_end_utc is not None:
        window_end_mono = now.mono + (window_end_utc - now.utc)
    item = Item(
        ref=ref,
        origin="command",
        priority=body.priority,
        title=body.title,
        files=body.files,
        stream_url=body.stream_url,
        volume=volume_for(settings, body.priority, body.volume, state.volume),
        max_duration_s=duration,
        not_before_mono=now.mono + delay,
        # A command waits behind higher priorities at most its own duration past its start.
        window_end_mono=window_end_mono,
        seq=0,
        repeats_left=body.repeat - 1,
    )
    return engine.add_item(state, item, out)


def _stop(state: State, ref: str, target: str, now: Instant, out: list[Effect]) -> State:
    for item in state.items():
        if target in ("all", item.ref):
            state = engine.finish(state, item, now, out, "stopped", detail=f"by {ref}")
    return state


def _on_local_input(state: State, event: LocalInputChanged, out: list[Effect]) -> State:
    if event.name == "mic":
        return replace(state, mic_active=event.active)
    if event.name == "amp_fault":
        faults = state.faults | {"amp"} if event.active else state.faults - {"amp"}
        if faults != state.faults:
            detail = "amplifier fault input active" if event.active else "amplifier fault cleared"
            out.append(Emit("fault", detail=detail))
            state = replace(state, faults=faults)
            out.append(engine.publish_state(state))
    return state
