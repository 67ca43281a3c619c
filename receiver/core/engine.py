"""The broadcast engine: the playback part of the state (the item sounding, the items waiting,
the player's tokens) and what plays now, what waits, what resumes.

Pure: each function is ``(part, input, now) -> (part, outputs)``; the input
(:class:`Conditions`) is what it reads of the rest of the state, the outputs are effects plus
notes the machine routes (:class:`amp.Tail`, :class:`Publish`); the programme's notes to it are
:class:`Enqueue`, :class:`Finish` and :class:`Withdraw`.

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
from collections.abc import Mapping
from dataclasses import field, replace
from typing import Final

from receiver.core import amp, commands, reasons
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
    SetVolume,
    StopPlayback,
)
from receiver.core.events import FetchFailed
from receiver.core.reasons import Reason
from receiver.core.record import record
from receiver.core.settings import Settings
from receiver.core.vocabulary import ORIGIN_RANK, PRIORITY_RANK, EventKind, Origin, Phase, Priority

RECONNECT_BACKOFF_MAX_S: Final = 30.0
# A file due at an instant is opened this long before it, paused (see ``preroll``).
PREROLL_S: Final = 1.0
# Once its instant is fixed (the relay is on), a prerolled file is handed to the player this
# long before it, with the instant (``Play.at_mono``): the player resumes it itself then, so
# neither the loop's wake-up nor the hop to the player's process lies between instant and sound.
# Its relay is switched on this much earlier than the warm-up asks, too: the instant counts the
# warm-up from when the relay actually switched, and a loop waking late for that (several
# receivers' daemons sharing a machine's CPUs; a busy board) would otherwise move the instant.
START_LEAD_S: Final = 0.25


@record
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


@record
class Playback:
    """The engine's part of the state: the item that has the player (if any), the items waiting
    (queued, suspended), and the counters that order arrivals and name the player's plays."""

    active: Item | None = None
    queue: tuple[Item, ...] = ()
    next_seq: int = 1
    next_token: int = 1

    def items(self) -> tuple[Item, ...]:
        return ((self.active,) if self.active is not None else ()) + self.queue


@record
class Conditions:
    """What the engine reads of the rest of the state: the settings, the amplifier relay
    (whether it is on and since when: the warm-up counts from there), the office microphone."""

    settings: Settings
    amp_on: bool = False
    amp_on_mono: float = 0.0
    mic: bool = False


@record
class Publish:
    """Note: publish the device state here, with the playback part as it was at this point."""

    playback: Playback


@record
class Enqueue:
    """Note from the programme: queue this item (:func:`add_item`)."""

    item: Item


@record
class Finish:
    """Note from the programme: take this item out for good, reporting ``kind`` (:func:`finish`)."""

    item: Item
    kind: EventKind
    reason: Reason | None = None
    detail: str | None = None


@record
class Withdraw:
    """Note from the programme: take out this item that has not sounded (:func:`withdraw`)."""

    item: Item


Output = Effect | amp.Tail | Publish
Result = tuple[Playback, tuple[Output, ...]]


def position_ms(item: Item, now: Instant) -> int:
    """Where a file item is now: the offset it started from plus the time it has sounded."""
    if item.played_since_mono is None:
        return item.offset_ms
    return item.offset_ms + int((now.mono - item.played_since_mono) * 1000)


def add_item(pb: Playback, item: Item) -> Result:
    """Queue a new item and ask for its media."""
    requested: set[str] = set()
    fetches: list[Output] = []
    for media in item.files:
        if media.sha256 not in requested:
            requested.add(media.sha256)
            fetches.append(Fetch(media.url, media.sha256, media.size))
    queued = replace(item, seq=pb.next_seq)
    return replace(pb, queue=(*pb.queue, queued), next_seq=pb.next_seq + 1), tuple(fetches)


def media_arrived(pb: Playback, sha256: str, path: str) -> Result:
    def update(item: Item) -> Item:
        if any(f.sha256 == sha256 for f in item.files) and sha256 not in item.ready:
            return replace(item, ready={**item.ready, sha256: path})
        return item

    active = update(pb.active) if pb.active is not None else None
    return replace(pb, active=active, queue=tuple(update(i) for i in pb.queue)), ()


def media_failed(pb: Playback, failure: FetchFailed, now: Instant, cond: Conditions) -> Result:
    """Every item that needed this file and does not have it yet fails."""
    sha256 = failure.sha256
    out: list[Output] = []
    for item in pb.items():
        if any(f.sha256 == sha256 for f in item.files) and sha256 not in item.ready:
            pb, more = finish(
                pb, item, now, cond, "failed", reason=failure.reason, detail=failure.detail
            )
            out += more
    return pb, tuple(out)


def finish(
    pb: Playback,
    item: Item,
    now: Instant,
    cond: Conditions,
    kind: EventKind,
    *,
    reason: Reason | None = None,
    detail: str | None = None,
) -> Result:
    """Take ``item`` out for good, reporting ``kind``; the tail starts if nothing else plays."""
    out: list[Output] = []
    is_active = pb.active is not None and pb.active.ref == item.ref
    if is_active and item.phase == "playing":
        out.append(StopPlayback())
    out.append(Emit(kind, ref=item.ref, reason=reason, detail=detail))
    if item.origin == "command":
        # After the report: a crash between the two repeats the end, it never loses it.
        out.append(PersistIntentDone(item.ref))
    if item.preroll_token and item.token == 0:
        out.append(DropPreroll(item.preroll_token))  # opened ahead, never started
    if item.occurrence is not None:
        out.append(PersistDone(item.occurrence))  # the programme marks it done (machine)
    if is_active:
        pb = replace(pb, active=None)
        out.append(amp.Tail(now.mono + cond.settings.tail_s))
    else:
        pb = replace(pb, queue=tuple(i for i in pb.queue if i.ref != item.ref))
    out.append(Publish(pb))
    return pb, tuple(out)


def withdraw(pb: Playback, item: Item, now: Instant, cond: Conditions) -> Result:
    """Take out an item that has not sounded, without a report or a done mark: its occurrence
    was moved by a new schedule version and comes back at its new time."""
    if pb.active is not None and pb.active.ref == item.ref:
        return replace(pb, active=None), (amp.Tail(now.mono + cond.settings.tail_s),)
    return replace(pb, queue=tuple(i for i in pb.queue if i.ref != item.ref)), ()


def suspend_active(pb: Playback, now: Instant, why: str) -> Result:
    """Interrupt the active item; it waits in the queue to resume where it was."""
    item = pb.active
    if item is None:
        return pb, ()
    out: list[Output] = []
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
    pb = replace(pb, active=None, queue=(*pb.queue, paused))
    out.append(Publish(pb))
    return pb, tuple(out)


def set_volume(pb: Playback, level: int) -> Result:
    """The device's volume changed: the active item follows, unless it is an emergency."""
    active = pb.active
    if active is None or active.priority == "emergency":
        return pb, ()
    return replace(pb, active=replace(active, volume=level)), (SetVolume(level),)


def _rank(item: Item) -> tuple[int, int, int, int]:
    return (
        PRIORITY_RANK[item.priority],
        ORIGIN_RANK[item.origin],
        1 if item.phase == "suspended" else 0,
        -item.seq,
    )


def _eligible(item: Item, now: Instant, cond: Conditions) -> bool:
    if not item.media_ready:
        return False
    if cond.mic and item.priority != "emergency":
        return False
    return now.mono >= item.not_before_mono - _take_up_s(item, cond)


def _take_up_s(item: Item, cond: Conditions) -> float:
    """How long before its start an item becomes the active one: the amplifier's warm-up if it
    is off, and for a file prerolled for an instant ``START_LEAD_S`` more (see there)."""
    lead = 0.0 if cond.amp_on else cond.settings.warm_up_s
    return lead + START_LEAD_S if item.preroll_token else lead


def _preroll_s(settings: Settings) -> float:
    """How long before its instant a file is prerolled: ``PREROLL_S``, or earlier if the relay
    is switched on earlier than that for it (a long warm-up)."""
    return max(PREROLL_S, settings.warm_up_s + START_LEAD_S)


def select(pb: Playback, now: Instant, cond: Conditions) -> Result:
    """Close expired windows, then make the best eligible item the active one."""
    out: list[Output] = []
    for item in pb.queue:
        if now.mono >= item.window_end_mono:
            why = (
                "window closed while preempted"
                if item.phase == "suspended"
                else ("window closed before it could play")
            )
            pb, more = finish(pb, item, now, cond, "stopped", detail=why)
            out += more
    active = pb.active
    if active is not None and cond.mic and active.priority != "emergency":
        pb, more = suspend_active(pb, now, "local microphone keyed")
        out += more
        active = None
    candidates = [i for i in pb.queue if _eligible(i, now, cond)]
    if not candidates:
        return pb, tuple(out)
    best = max(candidates, key=_rank)
    if active is not None:
        if PRIORITY_RANK[best.priority] <= PRIORITY_RANK[active.priority]:
            return pb, tuple(out)
        pb, more = suspend_active(pb, now, f"by {best.ref}")
        out += more
    queue = tuple(i for i in pb.queue if i.ref != best.ref)
    pb = replace(pb, queue=queue, active=replace(best, phase="warming", retry_mono=None))
    return pb, tuple(out)


def _start_sound(
    pb: Playback, item: Item, now: Instant, cond: Conditions, at_mono: float | None = None
) -> Result:
    """``Play`` the item now, or with ``at_mono`` at that instant (its start is then counted
    from there: the sound is reported by ``sound_started`` as ever)."""
    starts = now.mono if at_mono is None else at_mono
    # A prerolled file starts under the token it was opened with (the player then resumes it,
    # if it is still that file at that offset; otherwise it opens it as usual).
    settings = cond.settings
    token = item.preroll_token or pb.next_token
    next_token = pb.next_token if item.preroll_token else token + 1
    first_sound = item.origin == "command" and item.token == 0
    if item.on_fallback and settings.fallback_file is not None:
        media, start_ms = settings.fallback_file, 0
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
    out: list[Output] = []
    if first_sound:
        # From now on a restart reports it cut off rather than play it again (the store
        # writes this mark without waiting for the card: see Store.mark_intent_started).
        out.append(PersistIntentStarted(item.ref))
    out.append(Play(token, media, item.volume, start_ms, live, at_mono))
    return replace(pb, active=item, next_token=next_token), tuple(out)


def sound_started(pb: Playback, token: int, now: Instant) -> Result:
    item = pb.active
    if item is None or item.token != token or item.phase != "playing":
        return pb, ()
    out: list[Output] = []
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
    pb = replace(pb, active=item)
    out.append(Publish(pb))
    return pb, tuple(out)


def sound_ended(pb: Playback, token: int, now: Instant, cond: Conditions) -> Result:
    item = pb.active
    if item is None or item.token != token or item.phase != "playing":
        return pb, ()
    if item.is_stream and not item.on_fallback:
        return _stream_dropped(pb, item, now, cond, "the stream ended")
    if item.on_fallback:
        return _start_sound(pb, replace(item, offset_ms=0), now, cond)  # loop the fallback
    if item.index + 1 < len(item.files):
        return _start_sound(pb, replace(item, index=item.index + 1, offset_ms=0), now, cond)
    if item.repeats_left > 0:
        nxt = replace(item, index=0, offset_ms=0, repeats_left=item.repeats_left - 1)
        return _start_sound(pb, nxt, now, cond)
    return finish(pb, replace(item, phase="ended"), now, cond, "finished", detail=item.title)


def sound_failed(pb: Playback, token: int, detail: str, now: Instant, cond: Conditions) -> Result:
    item = pb.active
    if item is None or item.token != token or item.phase != "playing":
        return pb, ()
    if item.is_stream and not item.on_fallback:
        return _stream_dropped(pb, item, now, cond, f"the stream failed: {detail}")
    ended = replace(item, phase="ended")
    return finish(pb, ended, now, cond, "failed", reason=reasons.PLAYBACK_FAILED, detail=detail)


def engine_crashed(pb: Playback, detail: str, now: Instant, cond: Conditions) -> Result:
    """The media engine died or wedged: the item that was sounding ends ``failed``
    (``playback_failed``, also a live relay: its source is not at fault), and the amplifier goes
    off now, without the tail, since nothing can be said about what it is playing."""
    item = pb.active
    if item is None or item.phase != "playing":
        return pb, ()
    ended = replace(item, phase="ended")  # no StopPlayback: there is nothing left to stop
    detail = f"the media engine failed: {detail}"
    pb, out = finish(pb, ended, now, cond, "failed", reason=reasons.PLAYBACK_FAILED, detail=detail)
    return pb, (*out, amp.Tail(now.mono))


def progress(pb: Playback, token: int, position: int, now: Instant, cond: Conditions) -> Result:
    """The player's position moved: the stall watchdog is fed, and a stream that has kept
    moving for ``stream_healthy_s`` since its (re)start has its restart budget back."""
    item = pb.active
    if item is None or item.token != token or position <= item.progress_ms:
        return pb, ()
    since = item.healthy_since_mono
    if since is None and position > 0:  # 0: opened, no audio yet
        since = now.mono
    restarts = item.restarts
    if restarts and since is not None and now.mono - since >= cond.settings.stream_healthy_s:
        restarts = 0
    item = replace(
        item,
        progress_ms=position,
        progress_mono=now.mono,
        healthy_since_mono=since,
        restarts=restarts,
    )
    return replace(pb, active=item), ()


def _stream_dropped(pb: Playback, item: Item, now: Instant, cond: Conditions, why: str) -> Result:
    settings = cond.settings
    out: list[Output] = []
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
        return replace(pb, active=waiting), tuple(out)
    if settings.fallback_file is not None:
        out.append(Emit("fault", ref=item.ref, detail=f"{why}; playing the fallback file"))
        fallback = replace(item, on_fallback=True, restarts=restarts)
        pb, more = _start_sound(pb, fallback, now, cond)
        return pb, (*out, *more)
    ended = replace(item, phase="ended")
    detail = f"{why}; gave up after {settings.stream_max_restarts} reconnects"
    pb, more = finish(pb, ended, now, cond, "failed", reason=reasons.STREAM_FAILED, detail=detail)
    return pb, (*out, *more)


def run_active(pb: Playback, now: Instant, cond: Conditions) -> Result:
    """Move the active item along its phases as time passes."""
    item = pb.active
    if item is None:
        return pb, ()
    settings = cond.settings
    if item.stop_mono is not None and now.mono >= item.stop_mono:
        # The item is handed to finish() in the phase it is in, so that a playing one (a live
        # relay plays until told to stop) gets its StopPlayback: the sound and the connection
        # end with the window.
        if item.is_stream:
            detail = "relay ended at its planned time"
            return finish(pb, item, now, cond, "finished", detail=detail)
        return finish(pb, item, now, cond, "stopped", detail="max_duration_s reached")
    if item.phase == "warming" and cond.amp_on:
        ready_at = max(item.not_before_mono, cond.amp_on_mono + settings.warm_up_s)
        if now.mono >= ready_at:
            return _start_sound(pb, item, now, cond)
        if item.preroll_token and ready_at - now.mono <= START_LEAD_S:
            return _start_sound(pb, item, now, cond, at_mono=ready_at)
    if item.phase == "reconnecting" and item.retry_mono is not None and now.mono >= item.retry_mono:
        return _start_sound(pb, item, now, cond)
    if (
        item.phase == "playing"
        and item.is_stream
        and not item.on_fallback
        and now.mono - item.progress_mono >= settings.stall_timeout_s
    ):
        stalled = f"no progress for {settings.stall_timeout_s:g} s"
        return _stream_dropped(pb, item, now, cond, f"the stream stalled ({stalled})")
    return pb, ()


def _prerollable(item: Item, now: Instant, settings: Settings) -> bool:
    """A file item that has never sounded, due at an instant within ``_preroll_s``."""
    return (
        not item.is_stream
        and item.media_ready
        and item.token == 0
        and item.preroll_token == 0
        and item.phase in ("pending", "warming")
        and item.not_before_mono - _preroll_s(settings) <= now.mono < item.not_before_mono
    )


def preroll(pb: Playback, now: Instant, cond: Conditions) -> Result:
    """Open the next file due at an instant ahead of it, paused (``Preroll``).

    Several receivers told to start at one instant should sound together; opening a file
    (demuxer, decoder, audio output) takes libVLC some milliseconds, different on each board,
    while resuming a paused one takes well under one. Only while the player is free: nothing
    active, or the item itself warming up; an item that is interrupted before its start, or
    overtaken, simply opens as usual when it does start.
    """
    active = pb.active
    if active is not None:
        if active.phase != "warming" or not _prerollable(active, now, cond.settings):
            return pb, ()
        chosen = active
    else:
        due = [item for item in pb.queue if _prerollable(item, now, cond.settings)]
        if not due:
            return pb, ()
        chosen = min(due, key=lambda i: (i.not_before_mono, tuple(-r for r in _rank(i))))
    token = pb.next_token
    media = chosen.ready[chosen.files[chosen.index].sha256]
    opened = (Preroll(token, media, chosen.volume, chosen.offset_ms),)
    prerolled = replace(chosen, preroll_token=token)
    if active is not None:
        return replace(pb, active=prerolled, next_token=token + 1), opened
    queue = tuple(prerolled if i.ref == chosen.ref else i for i in pb.queue)
    return replace(pb, queue=queue, next_token=token + 1), opened


def relay_wants(pb: Playback, cond: Conditions) -> amp.Wants:
    """What playback asks of the amplifier relay (:mod:`amp`) now."""
    active = pb.active
    return amp.Wants(
        item=active is not None,
        emergency=active is not None and active.priority == "emergency",
        mic=cond.mic,
    )


def deadlines(pb: Playback, cond: Conditions) -> list[float]:
    """When time alone may change playback: a window's end, a warm-up's, a retry, a stall."""
    settings = cond.settings
    candidates: list[float] = []
    item = pb.active
    if item is not None:
        if item.stop_mono is not None:
            candidates.append(item.stop_mono)
        if item.phase == "warming":
            ready_at = max(item.not_before_mono, cond.amp_on_mono + settings.warm_up_s)
            candidates.append(ready_at)
            if item.preroll_token and cond.amp_on:
                candidates.append(ready_at - START_LEAD_S)
        if item.phase == "reconnecting" and item.retry_mono is not None:
            candidates.append(item.retry_mono)
        if item.phase == "playing" and item.is_stream and not item.on_fallback:
            candidates.append(item.progress_mono + settings.stall_timeout_s)
    for queued in pb.queue:
        candidates.append(queued.window_end_mono)
        if queued.media_ready:
            candidates.append(queued.not_before_mono - _take_up_s(queued, cond))
            if not queued.is_stream and queued.token == 0 and queued.preroll_token == 0:
                candidates.append(queued.not_before_mono - _preroll_s(settings))
    return candidates


def next_deadline(candidates: list[float], now: Instant) -> float | None:
    """The earliest future instant among ``candidates``."""
    future = [t for t in candidates if now.mono < t < math.inf]
    return min(future) if future else None
