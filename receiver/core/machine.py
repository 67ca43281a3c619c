"""The receiver's decisions: ``step(state, event, now) -> Step``.

Pure: no clock, no I/O, no logging. The state is made of parts, each owned by one module
(:mod:`state` lists them) and changed by its pure ``(part, input, now) -> (part, outputs)``
functions; this module composes them. A message is admitted (:mod:`admission`) against the
trust and replay floors (:mod:`floors`), checked against local policy (:mod:`policy`) and
acted on here; what plays when is the engine's (:mod:`engine`), schedules are
:mod:`programme`'s, the amplifier relay :mod:`amp`'s. A part's outputs are effects for the
shell and notes for another part, which :func:`_route` hands on in order. The shell runs the
returned effects in order and calls ``step`` again with ``TimerFired`` once ``deadline``
(monotonic) has passed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Final

from receiver.core import admission, amp, commands, engine, floors, limits, programme, reasons
from receiver.core.clock import Instant
from receiver.core.effects import (
    Effect,
    Emit,
    PersistDone,
    PersistIntentDone,
    PersistSchedule,
    PublishState,
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
from receiver.core.record import record
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

Effects = tuple[Effect, ...]
Output = engine.Output | programme.Output


@record
class Step:
    state: State
    effects: Effects
    deadline: float | None


def boot(state: State, now: Instant) -> Step:
    """The first step: the relay is forced off and the state is published."""
    state = replace(state, amp=amp.forced_off(state.amp), booted_mono=now.mono)
    # Before the first state: whoever sees it and signs a command then must be served.
    state, fixed = _fix_reset_floor(state, now)
    return Step(state, (SwitchRelay(on=False), *fixed, _publish(state)), now.mono)


def _fix_reset_floor(state: State, now: Instant) -> tuple[State, Effects]:
    """The reset floor of a fresh store, and the time floor raised by a synchronised clock."""
    part, effects = floors.fix_reset_floor(floors.follow_clock(state.floors, now), now)
    return (state if part is state.floors else replace(state, floors=part)), effects


def _publish(state: State) -> PublishState:
    return PublishState(state_fields(state))


# --- composing the parts -------------------------------------------------------------------


def _engine_conditions(state: State) -> engine.Conditions:
    return engine.Conditions(state.settings, state.amp.on, state.amp.on_mono, state.mic_active)


def _programme_conditions(state: State) -> programme.Conditions:
    return programme.Conditions(state.settings, state.volume, state.playback.items())


def _playback(state: State, result: engine.Result, now: Instant) -> tuple[State, Effects]:
    """Install playback's new part, then hand on its outputs."""
    part, outputs = result
    if part is not state.playback:  # most steps leave most parts as they were: keep them
        state = replace(state, playback=part)
    return _route(state, outputs, now)


def _programme(state: State, result: programme.Result, now: Instant) -> tuple[State, Effects]:
    """Install the programme's new part, then hand on its outputs."""
    part, outputs = result
    if part is not state.programme:
        state = replace(state, programme=part)
    return _route(state, outputs, now)


def _route(state: State, outputs: Sequence[Output], now: Instant) -> tuple[State, Effects]:
    """Hand each output on, in order: a note to the part it is for (whose own outputs take its
    place), an effect to the shell. Two effects also move another part: a ``PersistDone`` marks
    the occurrence done in the programme, a ``PersistSchedule`` the version's replay floor."""
    if not outputs:
        return state, ()
    effects: list[Effect] = []
    for output in outputs:
        more: Effects = ()
        if isinstance(output, amp.Tail):
            state = replace(state, amp=amp.tail(state.amp, output))
        elif isinstance(output, engine.Publish):
            more = (_publish(replace(state, playback=output.playback)),)
        elif isinstance(output, programme.Publish):
            more = (_publish(replace(state, programme=output.programme)),)
        elif isinstance(output, engine.Enqueue):
            state, more = _playback(state, engine.add_item(state.playback, output.item), now)
        elif isinstance(output, engine.Finish):
            finished = engine.finish(
                state.playback,
                output.item,
                now,
                _engine_conditions(state),
                output.kind,
                reason=output.reason,
                detail=output.detail,
            )
            state, more = _playback(state, finished, now)
        elif isinstance(output, engine.Withdraw):
            withdrawn = engine.withdraw(state.playback, output.item, now, _engine_conditions(state))
            state, more = _playback(state, withdrawn, now)
        else:
            if isinstance(output, PersistDone):
                state = replace(state, programme=programme.occurrence_done(state.programme, output))
            elif isinstance(output, PersistSchedule):
                state = replace(state, floors=floors.schedule_stored(state.floors, output))
            more = (output,)
        effects += more
    return state, tuple(effects)


def step(state: State, event: Event, now: Instant) -> Step:
    out: list[Effect] = []
    state, effects = _fix_reset_floor(state, now)
    out += effects
    state, effects = _on_event(state, event, now)
    out += effects
    if state.recovered and not _in_grace(state, now):
        recovered, state = state.recovered, replace(state, recovered=())
        for intent in recovered:
            state, effects = _recover(state, intent, now)
            out += effects
    if state.held and not _in_grace(state, now):
        held, state = state.held, replace(state, held=())
        for message in held:
            state, effects = _on_message(state, message, now)
            out += effects
    if state.rejection_window.suppressed:
        state, effects = _close_rejection_window(state, now)
        out += effects
    state, effects = _programme(state, programme.retry_staged(state.programme, now), now)
    out += effects
    evaluated = programme.evaluate(state.programme, now, _programme_conditions(state))
    state, effects = _programme(state, evaluated, now)
    out += effects
    state, effects = _settle(state, now)
    out += effects
    return Step(state, tuple(out), _deadline(state, now))


def _on_event(state: State, event: Event, now: Instant) -> tuple[State, Effects]:
    """The event itself, handed to the part it is about."""
    cond = _engine_conditions(state)
    match event:
        case MessageReceived() if _should_hold(state, event, now):
            return replace(state, held=(*state.held, event)[-MAX_HELD:]), ()
        case MessageReceived():
            return _on_message(state, event, now)
        case FetchFinished():
            return _media_arrived(state, event, now)
        case FetchFailed():
            state, lost = _playback(
                state, engine.media_failed(state.playback, event, now, cond), now
            )
            staged_failed = programme.staged_media_failed(state.programme, event, now)
            state, unstaged = _programme(state, staged_failed, now)
            return state, (*lost, *unstaged)
        case PlaybackStarted():
            return _playback(state, engine.sound_started(state.playback, event.token, now), now)
        case PlaybackEnded():
            return _playback(state, engine.sound_ended(state.playback, event.token, now, cond), now)
        case PlaybackFailed():
            failed = engine.sound_failed(state.playback, event.token, event.detail, now, cond)
            return _playback(state, failed, now)
        case PlaybackProgress():
            moved = engine.progress(state.playback, event.token, event.position_ms, now, cond)
            return _playback(state, moved, now)
        case PlayerCrashed():
            return _playback(
                state, engine.engine_crashed(state.playback, event.detail, now, cond), now
            )
        case LocalInputChanged():
            return _on_local_input(state, event)
    return state, ()


def _media_arrived(state: State, event: FetchFinished, now: Instant) -> tuple[State, Effects]:
    """A file is in the cache: the items that wait for it have it, and a staged schedule
    version that now has all its files goes into force."""
    arrived = engine.media_arrived(state.playback, event.sha256, event.path)
    state, out = _playback(state, arrived, now)
    marked = programme.staged_media_arrived(state.programme, event.sha256)
    state, effects = _programme(state, marked, now)
    out += effects
    for staged in programme.complete(state.programme):
        activated = programme.activate(state.programme, staged, _programme_conditions(state))
        state, effects = _programme(state, activated, now)
        out += effects
    return state, out


def _deadline(state: State, now: Instant) -> float | None:
    """The earliest future instant at which time alone changes something."""
    candidates = [
        *state.programme.deadlines(),
        *engine.deadlines(state.playback, _engine_conditions(state)),
        *state.amp.deadlines(),
    ]
    deadline = engine.next_deadline(candidates, now)
    window_end = state.rejection_window.deadline(state.settings.rejection_window_s)
    if window_end is not None:
        deadline = window_end if deadline is None else min(deadline, window_end)
    if state.held or state.recovered:
        grace_end = state.booted_mono + state.settings.sync_grace_s
        deadline = grace_end if deadline is None else min(deadline, grace_end)
    return deadline


def _in_grace(state: State, now: Instant) -> bool:
    return not now.utc_trusted and now.mono < state.booted_mono + state.settings.sync_grace_s


def _should_hold(state: State, event: MessageReceived, now: Instant) -> bool:
    """Commands arriving before NTP has answered wait a little: a backlog queued during an
    outage is then judged against a synchronised clock rather than an old saved floor."""
    return _in_grace(state, now) and event.topic.endswith("/cmd") and not event.retained


def _settle(state: State, now: Instant) -> tuple[State, Effects]:
    """Choose what plays, switch the relay, start sound; again while one round changes things."""
    out: list[Effect] = []
    for _ in range(MAX_SETTLE_ROUNDS):
        before = state
        selected = engine.select(state.playback, now, _engine_conditions(state))
        state, effects = _playback(state, selected, now)
        out += effects
        state, effects = _reconcile_relay(state, now)
        out += effects
        ran = engine.run_active(state.playback, now, _engine_conditions(state))
        state, effects = _playback(state, ran, now)
        out += effects
        prerolled = engine.preroll(state.playback, now, _engine_conditions(state))
        state, effects = _playback(state, prerolled, now)
        out += effects
        if state == before:
            break
    return state, tuple(out)


def _reconcile_relay(state: State, now: Instant) -> tuple[State, Effects]:
    """The amplifier relay (:mod:`amp`) follows what playback wants of it now."""
    wants = engine.relay_wants(state.playback, _engine_conditions(state))
    part, switches = amp.reconcile(
        state.amp, wants, now, max_toggles_per_min=state.settings.relay_max_toggles_per_min
    )
    if not switches:
        return (state if part is state.amp else replace(state, amp=part)), ()
    state = replace(state, amp=part)
    return state, (*switches, _publish(state))


# --- messages ------------------------------------------------------------------------------


def _context(state: State) -> admission.Context:
    staged = {
        sid: (staged.schedule.version, staged.digest)
        for sid, staged in state.programme.staged.items()
    }
    return floors.context(state.floors, state.settings, staged)


def _on_message(state: State, event: MessageReceived, now: Instant) -> tuple[State, Effects]:
    try:
        admitted = admission.admit(_context(state), event.topic, event.payload, event.retained, now)
        if isinstance(admitted, admission.AdmittedCommand) and not admitted.duplicate:
            _check_policy(state, admitted.command, now)
    except Rejection as rejection:
        return _report_rejection(state, rejection, now)
    if isinstance(admitted, admission.AdmittedTrust):
        return _accept_trust(state, admitted, now)
    if isinstance(admitted, admission.AdmittedSchedule):
        return _accept_schedule(state, admitted, now)
    header = admitted.command.header
    if admitted.duplicate:
        return state, (Emit("accepted", ref=header.id, detail="duplicate of the last accepted"),)
    body = admitted.command.body
    # Durable before the action, with the intent to act (write-ahead): a power cut after this
    # can no longer let it replay, nor leave it spent without a word (see _recover).
    intent = Intent(header.id, admitted.body, _window_end_utc(state, admitted.command, now))
    part, stored = floors.accept_command(
        state.floors, admitted, intent, now, max_skew_s=state.settings.max_skew_s
    )
    state = replace(state, floors=part)
    note = _clamp_note(state.settings, body)
    accepted = Emit("accepted", ref=header.id, detail=header.type + (f"; {note}" if note else ""))
    state, acted = _act(state, admitted.command, now)
    done: Effects = ()
    if not isinstance(body, commands.Play):
        done = (PersistIntentDone(header.id),)  # carried out in this very step
    return state, (*stored, accepted, *acted, *done)


def _window_end_utc(state: State, command: commands.Command, now: Instant) -> float:
    """Until when a command is worth carrying out: a play's window (as ``_queue_play`` sets
    it), any other command's ``exp``."""
    body = command.body
    if isinstance(body, commands.Play):
        start = now.utc if body.start_at is None else max(body.start_at, now.utc)
        return start + min(body.max_duration_s, state.settings.max_play_duration_s)
    return command.header.exp


def _recover(state: State, intent: Intent, now: Instant) -> tuple[State, Effects]:
    """A command that a previous run accepted (its floor stored) and did not finish.

    Carried out now if its window is still open and it never sounded; otherwise reported
    ``failed`` (``interrupted``), so central never sees a command simply vanish. A play that
    had started is not played again from the top: central decides whether to send it again.
    """
    ref = intent.ref
    if intent.stage == "started":
        return state, _interrupted(ref, "cut off by a restart of the device")
    if not now.utc_trusted:
        why = "accepted before a restart; without a synchronised clock its window cannot be told"
        return state, _interrupted(ref, why)
    if now.utc >= intent.window_end_utc:
        return state, _interrupted(ref, "accepted before a restart; its window closed since")
    try:
        doc = loads_strict(intent.body)
        command = commands.parse_command(doc, commands.parse_header(doc))
    except (Rejection, StrictJsonError):
        return state, _interrupted(ref, "accepted before a restart; unreadable after it")
    accepted = Emit("accepted", ref=ref, detail=f"{command.header.type}, {CARRIED_OUT}")
    body = command.body
    if isinstance(body, commands.Play):
        # Its intent stays until the item ends, so a second restart is handled the same way.
        # Never longer than the window it would get if accepted now: a window stored by a clock
        # that was unsynchronised and ahead would otherwise keep it able to sound for days.
        window_end_utc = min(intent.window_end_utc, _window_end_utc(state, command, now))
        state, queued = _queue_play(state, ref, body, now, window_end_utc=window_end_utc)
        return state, (accepted, *queued)
    state, acted = _act(state, command, now)
    return state, (accepted, *acted, PersistIntentDone(ref))


def _interrupted(ref: str, detail: str) -> Effects:
    return (
        Emit("failed", ref=ref, reason=reasons.INTERRUPTED, detail=detail),
        PersistIntentDone(ref),
    )


def _report_rejection(state: State, rejection: Rejection, now: Instant) -> tuple[State, Effects]:
    settings = state.settings
    window, effects = limits.report(
        state.rejection_window,
        rejection,
        now,
        per_window=settings.rejections_per_window,
        window_s=settings.rejection_window_s,
    )
    return replace(state, rejection_window=window), effects


def _close_rejection_window(state: State, now: Instant) -> tuple[State, Effects]:
    window, effects = limits.close(
        state.rejection_window, now, window_s=state.settings.rejection_window_s
    )
    if window is state.rejection_window:
        return state, ()  # still open (every step asks while a flood is counted): no copy
    return replace(state, rejection_window=window), effects


def _accept_trust(
    state: State, admitted: admission.AdmittedTrust, now: Instant
) -> tuple[State, Effects]:
    document = admitted.document
    if admitted.duplicate:
        return state, (Emit("accepted", ref=document.id, detail="duplicate of the last accepted"),)
    part, stored = floors.accept_trust(state.floors, admitted)
    state = replace(state, floors=part)
    accepted = Emit("accepted", ref=document.id, detail=f"trust version {document.version}")
    settings = state.settings

    def still_trusted(raw: bytes) -> bool:
        try:
            schedule, envelope = admission.stored_schedule(raw)
        except (Rejection, StrictJsonError):
            return True  # not ours to judge here: it was read back, or staged, as valid
        return envelope is None or admission.schedule_still_authorised(
            envelope, schedule, part.keyring, settings.device_id, settings.groups
        )

    withdrawn = programme.withdraw_untrusted(
        state.programme, still_trusted, document.version, _programme_conditions(state)
    )
    state, effects = _programme(state, withdrawn, now)
    return state, (*stored, accepted, *effects, _publish(state))


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
    state: State, admitted: admission.AdmittedSchedule, now: Instant
) -> tuple[State, Effects]:
    schedule = admitted.schedule
    if admitted.duplicate:
        return state, (Emit("accepted", ref=schedule.id, detail="duplicate of the last accepted"),)
    files = len({f.sha256 for e in schedule.entries for f in e.files})
    detail = f"schedule version {schedule.version}, {len(schedule.entries)} entries"
    retimed = programme.retimed_today(state.programme, schedule, now, _programme_conditions(state))
    detail = "; ".join([f"{detail}, fetching {files} files", *retimed])
    out: list[Effect] = [Emit("accepted", ref=schedule.id, detail=_bounded(detail))]
    # Stored as signed, so that a later keyring can judge its signers again.
    stored = admitted.envelope or admitted.body
    staging = programme.stage(state.programme, schedule, stored, admitted.digest)
    state, effects = _programme(state, staging, now)
    out += effects
    staged = state.programme.staged[schedule.id]
    if not staged.needed:
        activated = programme.activate(state.programme, staged, _programme_conditions(state))
        state, effects = _programme(state, activated, now)
        out += effects
    return state, tuple(out)


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
    # A start_at in the past starts at once: the quiet hours are judged at that real start.
    starts = now.utc if body.start_at is None else max(body.start_at, now.utc)
    if body.priority != "emergency" and in_quiet_hours(settings, starts):
        raise Rejection(reasons.POLICY, "inside the local quiet hours", ref)


def _act(state: State, command: commands.Command, now: Instant) -> tuple[State, Effects]:
    body = command.body
    ref = command.header.id
    if isinstance(body, commands.Play):
        return _queue_play(state, ref, body, now)
    if isinstance(body, commands.Stop):
        return _stop(state, ref, body.target, now)
    if isinstance(body, commands.Volume):
        state = replace(state, volume=min(body.level, state.settings.max_volume))
        state, effects = _playback(state, engine.set_volume(state.playback, state.volume), now)
        return state, (*effects, _publish(state))
    if isinstance(body, commands.Relay):
        if body.state == "auto":
            override = None
        else:
            until = None if body.duration_s is None else now.mono + body.duration_s
            override = RelayOverride(body.state, until)
        state = replace(state, amp=amp.overridden(state.amp, override))
        return state, (_publish(state),)
    return state, (_publish(state),)  # report


def _queue_play(
    state: State,
    ref: str,
    body: commands.Play,
    now: Instant,
    *,
    window_end_utc: float | None = None,
) -> tuple[State, Effects]:
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
    return _playback(state, engine.add_item(state.playback, item), now)


def _stop(state: State, ref: str, target: str, now: Instant) -> tuple[State, Effects]:
    out: list[Effect] = []
    for item in state.playback.items():
        if target in ("all", item.ref):
            finished = engine.finish(
                state.playback, item, now, _engine_conditions(state), "stopped", detail=f"by {ref}"
            )
            state, effects = _playback(state, finished, now)
            out += effects
    return state, tuple(out)


def _on_local_input(state: State, event: LocalInputChanged) -> tuple[State, Effects]:
    if event.name == "mic":
        return replace(state, mic_active=event.active), ()
    if event.name == "amp_fault":
        faults = state.faults | {"amp"} if event.active else state.faults - {"amp"}
        if faults != state.faults:
            detail = "amplifier fault input active" if event.active else "amplifier fault cleared"
            state = replace(state, faults=faults)
            return state, (Emit("fault", detail=detail), _publish(state))
    return state, ()
