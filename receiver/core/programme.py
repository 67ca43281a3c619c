"""Schedules in force and staged: turning occurrences into items, and swapping versions.

A new schedule version is first *staged*: it replaces the one in force only once every file it
names is in the cache, so an unfetchable or broken version never erases a working programme.
Occurrences become items shortly before they start (so the amplifier can warm up); one that is
already running when the device learns of it (a reboot, a late schedule) joins late when it
is a live relay or at most ``late_join_s`` late, and is otherwise skipped and reported
``failed`` with reason ``missed``. Non-emergency occurrences in quiet hours are skipped with
reason ``quiet_hours``. A version that moves an entry takes back the entry's waiting item, so
it plays at the new time; an occurrence that already had its turn today does not play twice,
and the schedule's ``accepted`` event says so.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Final

from receiver.core import reasons
from receiver.core.clock import Instant
from receiver.core.effects import Effect, Emit, Fetch, PersistDone, PersistSchedule
from receiver.core.engine import add_item, finish, publish_state, withdraw
from receiver.core.events import FetchFailed
from receiver.core.policy import in_quiet_hours, volume_for
from receiver.core.schedule import Entry, Occurrence, Schedule, occurrences
from receiver.core.state import Item, Staged, State

CHECK_EVERY_S: Final = 900.0  # re-plan at least this often (clock corrections, prefetch retries)
UNTRUSTED_RECHECK_S: Final = 30.0
LEAD_S: Final = 5.0  # an occurrence becomes an item this long before it starts (plus warm-up)
STAGE_ATTEMPTS: Final = 5
STAGE_RETRY_S: Final = 60.0
STAGE_RETRY_MAX_S: Final = 1800.0
DONE_KEEP_DAYS: Final = 3


def stage(state: State, schedule: Schedule, body: bytes, digest: str, out: list[Effect]) -> State:
    """Hold a new version until its media are cached; fetch them."""
    staged = Staged(schedule, body, digest)
    state = replace(state, staged={**state.staged, schedule.id: staged})
    needed = sorted(staged.needed)
    for entry in schedule.entries:
        for media in entry.files:
            if media.sha256 in needed:
                needed.remove(media.sha256)
                out.append(Fetch(media.url, media.sha256, media.size))
    return state


def staged_media_arrived(state: State, sha256: str, now: Instant, out: list[Effect]) -> State:
    for sid, staged in state.staged.items():
        if sha256 in staged.needed and sha256 not in staged.ready:
            updated = replace(staged, ready=staged.ready | {sha256})
            state = replace(state, staged={**state.staged, sid: updated})
    for staged in list(state.staged.values()):
        if staged.ready >= staged.needed:
            state = activate(state, staged, now, out)
    return state


def staged_media_failed(
    state: State, failure: FetchFailed, now: Instant, out: list[Effect]
) -> State:
    sha256, reason, detail = failure.sha256, failure.reason, failure.detail
    for sid, staged in state.staged.items():
        if sha256 not in staged.needed or sha256 in staged.ready or staged.retry_mono is not None:
            continue
        ref = staged.schedule.id
        if staged.attempts >= STAGE_ATTEMPTS:
            remaining = {k: v for k, v in state.staged.items() if k != sid}
            state = replace(state, staged=remaining)
            out.append(
                Emit(
                    "rejected",
                    ref=ref,
                    reason=reason,
                    detail=f"media not fetched ({detail}); the stored schedule stays",
                )
            )
            continue
        delay = min(STAGE_RETRY_S * 2 ** (staged.attempts - 1), STAGE_RETRY_MAX_S)
        retry = replace(staged, attempts=staged.attempts + 1, retry_mono=now.mono + delay)
        state = replace(state, staged={**state.staged, sid: retry})
        out.append(
            Emit(
                "fault",
                ref=ref,
                reason=reason,
                detail=f"schedule media: {detail}; retry in {delay:g} s",
            )
        )
    return state


def retry_staged(state: State, now: Instant, out: list[Effect]) -> State:
    for sid, staged in state.staged.items():
        if staged.retry_mono is None or now.mono < staged.retry_mono:
            continue
        state = replace(state, staged={**state.staged, sid: replace(staged, retry_mono=None)})
        for entry in staged.schedule.entries:
            for media in entry.files:
                if media.sha256 not in staged.ready:
                    out.append(Fetch(media.url, media.sha256, media.size))
    return state


def activate(state: State, staged: Staged, now: Instant, out: list[Effect]) -> State:
    """The staged version goes into force: stored first, then used."""
    schedule = staged.schedule
    previous = state.schedules.get(schedule.id)
    out.append(PersistSchedule(schedule.id, schedule.version, staged.body, staged.digest))
    stream = f"schedule:{schedule.id}"
    state = replace(
        state,
        schedules={**state.schedules, schedule.id: schedule},
        schedule_digests={**state.schedule_digests, schedule.id: staged.digest},
        floors={**state.floors, stream: (schedule.version, staged.digest)},
        staged={k: v for k, v in state.staged.items() if k != schedule.id},
        next_schedule_check_mono=0.0,
    )
    # Items of entries this version no longer has stop; the others play on undisturbed.
    kept = {entry.id: entry for entry in schedule.entries}
    before = {entry.id: entry for entry in previous.entries} if previous is not None else {}
    for item in state.items():
        if item.occurrence is None:
            continue
        sid, entry_id, _ = item.occurrence.split("/")
        if sid != schedule.id:
            continue
        if entry_id not in kept:
            why = f"entry removed by schedule version {schedule.version}"
            state = finish(state, item, now, out, "stopped", detail=why)
        elif item.since_utc is None and _moved(
            previous, before.get(entry_id), schedule, kept[entry_id]
        ):
            state = withdraw(state, item, now)  # evaluate() brings it back at its new time
    out.append(publish_state(state))
    return state


def _moved(previous: Schedule | None, was: Entry | None, schedule: Schedule, entry: Entry) -> bool:
    if previous is None or was is None:
        return False
    return (was.at_minute, was.days, previous.tz) != (entry.at_minute, entry.days, schedule.tz)


def retimed_today(state: State, schedule: Schedule, now: Instant) -> list[str]:
    """Entries this version moves to later today whose occurrence already had today's turn
    (played, playing, or skipped): they do not play twice; the words say so."""
    previous = state.schedules.get(schedule.id)
    if previous is None or not now.utc_trusted:
        return []
    zone = schedule.zone
    today = datetime.fromtimestamp(now.utc, zone).date()
    before = {entry.id: entry for entry in previous.entries}
    sounding = {item.occurrence for item in state.items() if item.since_utc is not None}
    notes = []
    for entry in schedule.entries:
        was = before.get(entry.id)
        if not _moved(previous, was, schedule, entry) or today.weekday() not in entry.days:
            continue
        key = f"{schedule.id}/{entry.id}/{today.isoformat()}"
        hour, minute = divmod(entry.at_minute, 60)
        start = datetime(today.year, today.month, today.day, hour, minute, tzinfo=zone)
        if (key in state.done or key in sounding) and start.timestamp() > now.utc and was:
            old_hour, old_minute = divmod(was.at_minute, 60)
            notes.append(
                f"{entry.id} had today's turn at {old_hour:02d}:{old_minute:02d}; "
                f"at {hour:02d}:{minute:02d} from tomorrow"
            )
    return notes


def evaluate(state: State, now: Instant, out: list[Effect]) -> State:
    """Turn due occurrences into items and fetch upcoming media; plan the next check."""
    if now.mono < state.next_schedule_check_mono:
        return state
    if not state.schedules:
        return replace(state, next_schedule_check_mono=math.inf)  # activation resets it
    if not now.utc_trusted:
        # No absolute-time programme starts without a trusted clock (docs/security.md).
        return replace(state, next_schedule_check_mono=now.mono + UNTRUSTED_RECHECK_S)
    settings = state.settings
    next_check_utc = now.utc + CHECK_EVERY_S
    known = {item.occurrence for item in state.items()}
    prefetched = set(state.prefetched)
    for schedule in state.schedules.values():
        for occ in occurrences(schedule, now.utc, now.utc + settings.prefetch_s):
            if occ.key in state.done or occ.key in known:
                continue
            opens_at = occ.start_utc - settings.warm_up_s - LEAD_S
            if now.utc < opens_at:
                next_check_utc = min(next_check_utc, opens_at)
                for media in occ.entry.files:
                    if media.sha256 not in prefetched:
                        prefetched.add(media.sha256)
                        out.append(Fetch(media.url, media.sha256, media.size))
                continue
            state = _occurrence_due(state, occ, now, out)
    state = replace(
        state,
        prefetched=frozenset(prefetched),
        next_schedule_check_mono=now.mono + (next_check_utc - now.utc),
        done=_recent(state.done, now),
    )
    return state


def _occurrence_due(state: State, occ: Occurrence, now: Instant, out: list[Effect]) -> State:
    settings = state.settings
    entry = occ.entry
    late = now.utc - occ.start_utc
    skip: tuple[reasons.Reason, str] | None = None
    if entry.priority != "emergency" and in_quiet_hours(settings, max(occ.start_utc, now.utc)):
        skip = (reasons.QUIET_HOURS, "inside the local quiet hours")
    elif entry.files and late > settings.late_join_s:
        skip = (reasons.MISSED, f"{int(late)} s late (the device was off or had no clock)")
    if skip is not None:
        out.append(Emit("failed", ref=occ.key, reason=skip[0], detail=skip[1]))
        out.append(PersistDone(occ.key))
        return replace(state, done=state.done | {occ.key})
    item = Item(
        ref=occ.key,
        origin="schedule",
        priority=entry.priority,
        title=entry.title,
        files=entry.files,
        stream_url=entry.stream_url,
        volume=volume_for(settings, entry.priority, entry.volume, state.volume),
        max_duration_s=min(entry.max_duration_s, settings.max_play_duration_s),
        not_before_mono=now.mono + (occ.start_utc - now.utc),
        window_end_mono=now.mono + (occ.end_utc - now.utc),
        seq=0,
        occurrence=occ.key,
        late_by_s=max(0.0, late),
    )
    return add_item(state, item, out)


def _recent(done: frozenset[str], now: Instant) -> frozenset[str]:
    """Forget occurrences older than a few days (their date is the key's last part)."""
    cutoff = (datetime.fromtimestamp(now.utc, UTC) - timedelta(days=DONE_KEEP_DAYS)).date()
    floor = cutoff.isoformat()
    return frozenset(key for key in done if key.rsplit("/", 1)[-1] >= floor)
