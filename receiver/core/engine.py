"""The broadcast engine: what plays now, what waits, what resumes, and what it asks of the
amplifier relay (whose part of the state, switching and cap are :mod:`amp`'s).

Rules (docs/behaviour.md tells them for operators):
- At most one item sounds. Among items whose media are ready and whose start has come, the
  highest priority wins; at equal priority a command beats a schedule entry, then an interrupted
  item beats a new one, then the earlier arrival. Only a strictly higher priority interrupts
  what is playing; the interrupted item is ``preempted`` and resumes where it was (files: the
  same file at the same offset; streams: rejoined) if its window is still open when it is
  next in line, else it is ``stopped`` when its window closes.
- The amplifier is on while any item is active (warming, playing, reconnecting), during the
  tail after the last one, while the local microphone is keyed, and while a manual ``on``
  override lasts; a manual ``off`` holds it off except for emergencies.
- A live stream whose position stops advancing for ``stall_timeout_s``, ends or fails is
  restarted with backoff; after ``stream_max_restarts`` consecutive failures the fallback file
  plays, or it fails. A stream whose position has kept advancing for ``stream_healthy_s`` since
  its last (re)start has its count reset: the budget is for consecutive failures.
- A window's end (``max_duration_s``) stops the player whatever the item's phase: a live relay
  never ends by itself, so only this ends its sound and its connection.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Final

from receiver.core import amp, reasons
from receiver.core.clock import Instant
from receiver.core.effects import (
    DropPreroll,
    Effect,
    Emit,
    Fetch,
    PersistDone,
    PersistIntentDone,
    PersistIntentStarted,
    Play,
    Preroll,
    PublishState,
    StopPlayback,
)
from receiver.core.events import FetchFailed
from receiver.core.reasons import Reason
from receiver.core.state import ORIGIN_RANK, PRIORITY_RANK, Item, State, state_fields
from receiver.core.vocabulary import EventKind

RECONNECT_BACKOFF_MAX_S: Final = 30.0
# A file due at an instant is opened this long before it, paused (see ``preroll``).
PREROLL_S: Final = 1.0
# Once its instant is fixed (the relay is on), a prerolled file is handed to the player this
# long before it, with the instant (``Play.at_mono``): the player resumes it itself then, so
# neither the loop's wake-up nor the hop to the player's process lies between instant and sound.
# Its relay is switched on this much earlier than the warm-up asks, too: the instant counts the
# warm-up from when the relay actually switched, and a loop waking late for that (other
# receivers' daemons share a board's CPUs with nothing; a busy one wakes some milliseconds late)
# would otherwise move the instant by as much.
START_LEAD_S: Final = 0.25


def publish_state(state: State) -> PublishState:
    return PublishState(state_fields(state))


def position_ms(item: Item, now: Instant) -> int:
    """Where a file item is now: the offset it started from plus the time it has sounded."""
    if item.played_since_mono is None:
        return item.offset_ms
    return item.offset_ms + int((now.mono - item.played_since_mono) * 1000)


def add_item(state: State, item: Item, out: list[Effect]) -> State:
    """Queue a new item and ask for its media."""
    requested: set[str] = set()
    for media in item.files:
        if media.sha256 not in requested:
            requested.add(media.sha256)
            out.append(Fetch(media.url, media.sha256, media.size))
    return replace(
        state, queue=(*state.queue, replace(item, seq=state.next_seq)), next_seq=state.next_seq + 1
    )


def media_arrived(state: State, sha256: str, path: str) -> State:
    def update(item: Item) -> Item:
        if any(f.sha256 == sha256 for f in item.files) and sha256 not in item.ready:
            return replace(item, ready={**item.ready, sha256: path})
        return item

    active = update(state.active) if state.active is not None else None
    return replace(state, active=active, queue=tuple(update(i) for i in state.queue))


def media_failed(state: State, failure: FetchFailed, now: Instant, out: list[Effect]) -> State:
    """Every item that needed this file and does not have it yet fails."""
    sha256 = failure.sha256
    for item in state.items():
        if any(f.sha256 == sha256 for f in item.files) and sha256 not in item.ready:
            state = finish(
                state, item, now, out, "failed", reason=failure.reason, detail=failure.detail
            )
    return state


def finish(
    state: State,
    item: Item,
    now: Instant,
    out: list[Effect],
    kind: EventKind,
    *,
    reason: Reason | None = None,
    detail: str | None = None,
) -> State:
    """Take ``item`` out for good, reporting ``kind``; the tail starts if nothing else plays."""
    is_active = state.active is not None and state.active.ref == item.ref
    if is_active and item.phase == "playing":
        out.append(StopPlayback())
    out.append(Emit(kind, ref=item.ref, reason=reason, detail=detail))
    if item.origin == "command":
        # After the report: a crash between the two repeats the end, it never loses it.
        out.append(PersistIntentDone(item.ref))
    if item.preroll_token and item.token == 0:
        out.append(DropPreroll(item.preroll_token))  # opened ahead, never started
    done = state.done
    if item.occurrence is not None:
        done = done | {item.occurrence}
        out.append(PersistDone(item.occurrence))
    if is_active:
        tail = replace(state.amp, off_mono=now.mono + state.settings.tail_s)
        state = replace(state, active=None, amp=tail)
    else:
        state = replace(state, queue=tuple(i for i in state.queue if i.ref != item.ref))
    state = replace(state, done=done)
    out.append(publish_state(state))
    return state


def withdraw(state: State, item: Item, now: Instant) -> State:
    """Take out an item that has not sounded, without a report or a done mark: its occurrence
    was moved by a new schedule version and comes back at its new time."""
    if state.active is not None and state.active.ref == item.ref:
        tail = replace(state.amp, off_mono=now.mono + state.settings.tail_s)
        return replace(state, active=None, amp=tail)
    return replace(state, queue=tuple(i for i in state.queue if i.ref != item.ref))


def suspend_active(state: State, now: Instant, out: list[Effect], why: str) -> State:
    """Interrupt the active item; it waits in the queue to resume where it was."""
    item = state.active
    if item is None:
        return state
    if item.phase == "playing":
        out.append(StopPlayback())
    offset = 0 if item.is_stream else position_ms(item, now)
    paused = replace(
        item,
        phase="suspended",
        offset_ms=offset,
        played_since_mono=None,
        retry_mono=None,
        resuming=item.since_utc is not None,
    )
    out.append(Emit("preempted", ref=item.ref, detail=why))
    state = replace(state, active=None, queue=(*state.queue, paused))
    out.append(publish_state(state))
    return state


def _rank(item: Item) -> tuple[int, int, int, int]:
    return (
        PRIORITY_RANK[item.priority],
        ORIGIN_RANK[item.origin],
        1 if item.phase == "suspended" else 0,
        -item.seq,
    )


def _eligible(state: State, item: Item, now: Instant) -> bool:
    if not item.media_ready:
        return False
    if state.mic_active and item.priority != "emergency":
        return False
    return now.mono >= item.not_before_mono - _take_up_s(state, item)


def _take_up_s(state: State, item: Item) -> float:
    """How long before its start an item becomes the active one: the amplifier's warm-up if it
    is off, and for a file prerolled for an instant ``START_LEAD_S`` more (see there)."""
    lead = 0.0 if state.amp.on else state.settings.warm_up_s
    return lead + START_LEAD_S if item.preroll_token else lead


def _preroll_s(state: State) -> float:
    """How long before its instant a file is prerolled: ``PREROLL_S``, or earlier if the relay
    is switched on earlier than that for it (a long warm-up)."""
    return max(PREROLL_S, state.settings.warm_up_s + START_LEAD_S)


def select(state: State, now: Instant, out: list[Effect]) -> State:
    """Close expired windows, then make the best eligible item the active one."""
    for item in state.queue:
        if now.mono >= item.window_end_mono:
            why = (
                "window closed while preempted"
                if item.phase == "suspended"
                else ("window closed before it could play")
            )
            state = finish(state, item, now, out, "stopped", detail=why)
    active = state.active
    if active is not None and state.mic_active and active.priority != "emergency":
        state = suspend_active(state, now, out, "local microphone keyed")
        active = None
    candidates = [i for i in state.queue if _eligible(state, i, now)]
    if not candidates:
        return state
    best = max(candidates, key=_rank)
    if active is not None:
        if PRIORITY_RANK[best.priority] <= PRIORITY_RANK[active.priority]:
            return state
        state = suspend_active(state, now, out, f"by {best.ref}")
    queue = tuple(i for i in state.queue if i.ref != best.ref)
    return replace(state, queue=queue, active=replace(best, phase="warming", retry_mono=None))


def _start_sound(
    state: State, item: Item, now: Instant, out: list[Effect], at_mono: float | None = None
) -> State:
    """``Play`` the item now, or with ``at_mono`` at that instant (its start is then counted
    from there: the sound is reported by ``sound_started`` as ever)."""
    starts = now.mono if at_mono is None else at_mono
    # A prerolled file starts under the token it was opened with (the player then resumes it,
    # if it is still that file at that offset; otherwise it opens it as usual).
    token = item.preroll_token or state.next_token
    next_token = state.next_token if item.preroll_token else token + 1
    first_sound = item.origin == "command" and item.token == 0
    if item.on_fallback and state.settings.fallback_file is not None:
        media, start_ms = state.settings.fallback_file, 0
    elif item.stream_url is not None:
        media, start_ms = item.stream_url, 0
    else:
        media, start_ms = item.ready[item.files[item.index].sha256], item.offset_ms
    stop = item.stop_mono
    if stop is None:
        stop = min(item.window_end_mono, starts + item.max_duration_s)
    item = replace(
        item,
        phase="playing",
        token=token,
        preroll_token=0,
        stop_mono=stop,
        played_since_mono=None,
        progress_ms=-1,
        progress_mono=starts,
        healthy_since_mono=None,
    )
    live = item.stream_url is not None and not item.on_fallback
    if first_sound:
        # From now on a restart reports it cut off rather than play it again (the store
        # writes this mark without waiting for the card: see Store.mark_intent_started).
        out.append(PersistIntentStarted(item.ref))
    out.append(Play(token, media, item.volume, start_ms, live, at_mono))
    return replace(state, active=item, next_token=next_token)


def sound_started(state: State, token: int, now: Instant, out: list[Effect]) -> State:
    item = state.active
    if item is None or item.token != token or item.phase != "playing":
        return state
    first = item.since_utc is None
    resumed = item.resuming
    item = replace(item, played_since_mono=now.mono, progress_mono=now.mono, resuming=False)
    if first:
        item = replace(item, since_utc=now.utc)
        detail = item.title
        if item.late_by_s >= 1:
            detail = f"{item.title} (late join +{int(item.late_by_s)} s)"
        out.append(Emit("started", ref=item.ref, detail=detail))
    elif resumed or item.offset_ms or item.restarts or item.on_fallback:
        if item.on_fallback:
            what = "fallback file"
        elif item.is_stream:
            what = "stream rejoined"
        else:
            what = f"resumed at {item.offset_ms // 1000} s"
        out.append(Emit("started", ref=item.ref, detail=what))
    state = replace(state, active=item)
    out.append(publish_state(state))
    return state


def sound_ended(state: State, token: int, now: Instant, out: list[Effect]) -> State:
    item = state.active
    if item is None or item.token != token or item.phase != "playing":
        return state
    if item.is_stream and not item.on_fallback:
        return _stream_dropped(state, item, now, out, "the stream ended")
    if item.on_fallback:
        return _start_sound(state, replace(item, offset_ms=0), now, out)  # loop the fallback
    if item.index + 1 < len(item.files):
        return _start_sound(state, replace(item, index=item.index + 1, offset_ms=0), now, out)
    if item.repeats_left > 0:
        nxt = replace(item, index=0, offset_ms=0, repeats_left=item.repeats_left - 1)
        return _start_sound(state, nxt, now, out)
    return finish(state, replace(item, phase="ended"), now, out, "finished", detail=item.title)


def sound_failed(state: State, token: int, detail: str, now: Instant, out: list[Effect]) -> State:
    item = state.active
    if item is None or item.token != token or item.phase != "playing":
        return state
    if item.is_stream and not item.on_fallback:
        return _stream_dropped(state, item, now, out, f"the stream failed: {detail}")
    ended = replace(item, phase="ended")
    return finish(state, ended, now, out, "failed", reason=reasons.PLAYBACK_FAILED, detail=detail)


def engine_crashed(state: State, detail: str, now: Instant, out: list[Effect]) -> State:
    """The media engine died or wedged: the item that was sounding ends ``failed``
    (``playback_failed``, also a live relay: its source is not at fault), and the amplifier goes
    off now, without the tail, since nothing can be said about what it is playing."""
    item = state.active
    if item is None or item.phase != "playing":
        return state
    ended = replace(item, phase="ended")  # no StopPlayback: there is nothing left to stop
    detail = f"the media engine failed: {detail}"
    state = finish(state, ended, now, out, "failed", reason=reasons.PLAYBACK_FAILED, detail=detail)
    return replace(state, amp=replace(state.amp, off_mono=now.mono))


def progress(state: State, token: int, position: int, now: Instant) -> State:
    """The player's position moved: the stall watchdog is fed, and a stream that has kept
    moving for ``stream_healthy_s`` since its (re)start has its restart budget back."""
    item = state.active
    if item is None or item.token != token or position <= item.progress_ms:
        return state
    since = item.healthy_since_mono
    if since is None and position > 0:  # 0: opened, no audio yet
        since = now.mono
    restarts = item.restarts
    if restarts and since is not None and now.mono - since >= state.settings.stream_healthy_s:
        restarts = 0
    item = replace(
        item,
        progress_ms=position,
        progress_mono=now.mono,
        healthy_since_mono=since,
        restarts=restarts,
    )
    return replace(state, active=item)


def _stream_dropped(state: State, item: Item, now: Instant, out: list[Effect], why: str) -> State:
    settings = state.settings
    if item.phase == "playing":
        out.append(StopPlayback())
    restarts = item.restarts + 1
    if restarts <= settings.stream_max_restarts:
        delay = min(2.0 ** (restarts - 1), RECONNECT_BACKOFF_MAX_S)
        out.append(
            Emit(
                "fault",
                ref=item.ref,
                detail=f"{why}; reconnect {restarts} of "
                f"{settings.stream_max_restarts} in {delay:g} s",
            )
        )
        waiting = replace(
            item, phase="reconnecting", restarts=restarts, retry_mono=now.mono + delay
        )
        return replace(state, active=waiting)
    if settings.fallback_file is not None:
        out.append(Emit("fault", ref=item.ref, detail=f"{why}; playing the fallback file"))
        return _start_sound(state, replace(item, on_fallback=True, restarts=restarts), now, out)
    ended = replace(item, phase="ended")
    detail = f"{why}; gave up after {settings.stream_max_restarts} reconnects"
    return finish(state, ended, now, out, "failed", reason=reasons.STREAM_FAILED, detail=detail)


def run_active(state: State, now: Instant, out: list[Effect]) -> State:
    """Move the active item along its phases as time passes."""
    item = state.active
    if item is None:
        return state
    if item.stop_mono is not None and now.mono >= item.stop_mono:
        # The item is handed to finish() in the phase it is in, so that a playing one (a live
        # relay plays until told to stop) gets its StopPlayback: the sound and the connection
        # end with the window.
        if item.is_stream:
            detail = "relay ended at its planned time"
            return finish(state, item, now, out, "finished", detail=detail)
        return finish(state, item, now, out, "stopped", detail="max_duration_s reached")
    if item.phase == "warming" and state.amp.on:
        ready_at = max(item.not_before_mono, state.amp.on_mono + state.settings.warm_up_s)
        if now.mono >= ready_at:
            return _start_sound(state, item, now, out)
        if item.preroll_token and ready_at - now.mono <= START_LEAD_S:
            return _start_sound(state, item, now, out, at_mono=ready_at)
    if item.phase == "reconnecting" and item.retry_mono is not None and now.mono >= item.retry_mono:
        return _start_sound(state, item, now, out)
    if (
        item.phase == "playing"
        and item.is_stream
        and not item.on_fallback
        and now.mono - item.progress_mono >= state.settings.stall_timeout_s
    ):
        stalled = f"no progress for {state.settings.stall_timeout_s:g} s"
        return _stream_dropped(state, item, now, out, f"the stream stalled ({stalled})")
    return state


def _prerollable(state: State, item: Item, now: Instant) -> bool:
    """A file item that has never sounded, due at an instant within ``_preroll_s``."""
    return (
        not item.is_stream
        and item.media_ready
        and item.token == 0
        and item.preroll_token == 0
        and item.phase in ("pending", "warming")
        and item.not_before_mono - _preroll_s(state) <= now.mono < item.not_before_mono
    )


def preroll(state: State, now: Instant, out: list[Effect]) -> State:
    """Open the next file due at an instant ahead of it, paused (``Preroll``).

    Several receivers told to start at one instant should sound together; opening a file
    (demuxer, decoder, audio output) takes libVLC some milliseconds, different on each board,
    while resuming a paused one takes well under one. Only while the player is free: nothing
    active, or the item itself warming up; an item that is interrupted before its start, or
    overtaken, simply opens as usual when it does start.
    """
    active = state.active
    if active is not None:
        if active.phase != "warming" or not _prerollable(state, active, now):
            return state
        chosen = active
    else:
        due = [item for item in state.queue if _prerollable(state, item, now)]
        if not due:
            return state
        chosen = min(due, key=lambda i: (i.not_before_mono, tuple(-r for r in _rank(i))))
    token = state.next_token
    media = chosen.ready[chosen.files[chosen.index].sha256]
    out.append(Preroll(token, media, chosen.volume, chosen.offset_ms))
    prerolled = replace(chosen, preroll_token=token)
    if active is not None:
        return replace(state, active=prerolled, next_token=token + 1)
    queue = tuple(prerolled if i.ref == chosen.ref else i for i in state.queue)
    return replace(state, queue=queue, next_token=token + 1)


def reconcile_relay(state: State, now: Instant, out: list[Effect]) -> State:
    """The amplifier relay (:mod:`amp`) follows what plays now."""
    active = state.active
    wants = amp.Wants(
        item=active is not None,
        emergency=active is not None and active.priority == "emergency",
        mic=state.mic_active,
    )
    part, switches = amp.reconcile(
        state.amp, wants, now, max_toggles_per_min=state.settings.relay_max_toggles_per_min
    )
    state = replace(state, amp=part)
    if switches:
        out.extend(switches)
        out.append(publish_state(state))
    return state


def next_deadline(state: State, now: Instant) -> float | None:
    """The earliest future instant at which time alone changes something."""
    future = [t for t in _deadlines(state) if now.mono < t < math.inf]
    return min(future) if future else None


def _deadlines(state: State) -> list[float]:
    settings = state.settings
    candidates: list[float] = [state.next_schedule_check_mono]
    item = state.active
    if item is not None:
        if item.stop_mono is not None:
            candidates.append(item.stop_mono)
        if item.phase == "warming":
            ready_at = max(item.not_before_mono, state.amp.on_mono + settings.warm_up_s)
            candidates.append(ready_at)
            if item.preroll_token and state.amp.on:
                candidates.append(ready_at - START_LEAD_S)
        if item.phase == "reconnecting" and item.retry_mono is not None:
            candidates.append(item.retry_mono)
        if item.phase == "playing" and item.is_stream and not item.on_fallback:
            candidates.append(item.progress_mono + settings.stall_timeout_s)
    for queued in state.queue:
        candidates.append(queued.window_end_mono)
        if queued.media_ready:
            candidates.append(queued.not_before_mono - _take_up_s(state, queued))
            if not queued.is_stream and queued.token == 0 and queued.preroll_token == 0:
                candidates.append(queued.not_before_mono - _preroll_s(state))
    candidates.extend(state.amp.deadlines())
    for staged in state.staged.values():
        if staged.retry_mono is not None:
            candidates.append(staged.retry_mono)
    return candidates
