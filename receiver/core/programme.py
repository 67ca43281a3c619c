"""The programme: the part of the state that holds the schedules in force and staged, the
occurrences already had, and when to look again; it turns occurrences into items.

A new schedule version is first *staged*: it replaces the one in force only once every file it
names is in the cache, so an unfetchable or broken version never erases a working programme.
Occurrences become items shortly before they start (so the amplifier can warm up); one that is
already running when the device learns of it (a reboot, a late schedule) joins late when it
is a live relay or at most ``late_join_s`` late, and is otherwise skipped and reported
``failed`` with reason ``missed``. Non-emergency occurrences in quiet hours are skipped with
reason ``quiet_hours``. A version that moves an entry takes back the entry's waiting item, so
it plays at the new time; an occurrence that already had its turn today does not play twice,
and the schedule's ``accepted`` event says so.

Pure: each function is ``(part, input, now) -> (part, outputs)``, the outputs being effects
and notes (an item for playback to queue, end or withdraw; a state to publish) that the machine
routes; it learns of an occurrence playback ended from its ``PersistDone``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import field, replace
from datetime import UTC, datetime, timedelta
from typing import Final

from receiver.core import reasons
from receiver.core.clock import Instant
from receiver.core.effects import Effect, Emit, Fetch, PersistDone, PersistSchedule
from receiver.core.engine import Enqueue, Finish, Item, Withdraw
from receiver.core.events import FetchFailed
from receiver.core.policy import in_quiet_hours, volume_for
from receiver.core.record import record
from receiver.core.schedule import Entry, Occurrence, Schedule, occurrences
from receiver.core.settings import Settings

CHECK_EVERY_S: Final = 900.0  # re-plan at least this often (clock corrections, prefetch retries)
UNTRUSTED_RECHECK_S: Final = 30.0
LEAD_S: Final = 5.0  # an occurrence becomes an item this long before it starts (plus warm-up)
STAGE_ATTEMPTS: Final = 5
STAGE_RETRY_S: Final = 60.0
STAGE_RETRY_MAX_S: Final = 1800.0
DONE_KEEP_DAYS: Final = 3


@record
class Staged:
    """A schedule version accepted but not yet in force: its media are being fetched."""

    schedule: Schedule
    body: bytes  # what is stored once it goes into force: its signed envelope
    digest: str
    ready: frozenset[str] = frozenset()
    attempts: int = 1
    retry_mono: float | None = None

    @property
    def needed(self) -> frozenset[str]:
        return frozenset(f.sha256 for e in self.schedule.entries for f in e.files)


@record
class Programme:
    """The programme's part of the state."""

    schedules: Mapping[str, Schedule] = field(default_factory=dict)  # in force
    digests: Mapping[str, str] = field(default_factory=dict)  # of the versions in force
    # The stored form of each version in force: its signed envelope, judged again when the
    # keyring changes (absent, or a bare payload, for one an earlier receiver stored).
    stored: Mapping[str, bytes] = field(default_factory=dict)
    staged: Mapping[str, Staged] = field(default_factory=dict)
    done: frozenset[str] = frozenset()  # occurrences already played or given up
    next_check_mono: float = 0.0
    prefetched: frozenset[str] = frozenset()  # files asked for ahead of their occurrences

    def deadlines(self) -> list[float]:
        """When time alone may change the programme: the next check, a staged version's retry."""
        found = [self.next_check_mono]
        found += [s.retry_mono for s in self.staged.values() if s.retry_mono is not None]
        return found


@record
class Conditions:
    """What the programme reads of the rest of the state."""

    settings: Settings
    volume: int  # the device's volume, for entries that name none
    items: tuple[Item, ...] = ()  # what playback holds now (active first)


@record
class Publish:
    """Note: publish the device state here, with the programme part as it was at this point."""

    programme: Programme


Output = Effect | Enqueue | Finish | Withdraw | Publish
Result = tuple[Programme, tuple[Output, ...]]


def stage(prog: Programme, schedule: Schedule, body: bytes, digest: str) -> Result:
    """Hold a new version until its media are cached; fetch them."""
    staged = Staged(schedule, body, digest)
    prog = replace(prog, staged={**prog.staged, schedule.id: staged})
    needed = sorted(staged.needed)
    out: list[Output] = []
    for entry in schedule.entries:
        for media in entry.files:
            if media.sha256 in needed:
                needed.remove(media.sha256)
                out.append(Fetch(media.url, media.sha256, media.size))
    return prog, tuple(out)


def staged_media_arrived(prog: Programme, sha256: str) -> Result:
    """A file arrived: staged versions that named it have it (see :func:`complete`)."""
    for sid, staged in prog.staged.items():
        if sha256 in staged.needed and sha256 not in staged.ready:
            updated = replace(staged, ready=staged.ready | {sha256})
            prog = replace(prog, staged={**prog.staged, sid: updated})
    return prog, ()


def complete(prog: Programme) -> tuple[Staged, ...]:
    """The staged versions that have all their files: each is to be activated, in turn."""
    return tuple(s for s in prog.staged.values() if s.ready >= s.needed)


def staged_media_failed(prog: Programme, failure: FetchFailed, now: Instant) -> Result:
    sha256, reason, detail = failure.sha256, failure.reason, failure.detail
    out: list[Output] = []
    for sid, staged in prog.staged.items():
        if sha256 not in staged.needed or sha256 in staged.ready or staged.retry_mono is not None:
            continue
        ref = staged.schedule.id
        if staged.attempts >= STAGE_ATTEMPTS:
            remaining = {k: v for k, v in prog.staged.items() if k != sid}
            prog = replace(prog, staged=remaining)
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
        prog = replace(prog, staged={**prog.staged, sid: retry})
        out.append(
            Emit(
                "fault",
                ref=ref,
                reason=reason,
                detail=f"schedule media: {detail}; retry in {delay:g} s",
            )
        )
    # A file fetched ahead for the programme is asked for again at the next check.
    return replace(prog, prefetched=prog.prefetched - {sha256}), tuple(out)


def retry_staged(prog: Programme, now: Instant) -> Result:
    out: list[Output] = []
    for sid, staged in prog.staged.items():
        if staged.retry_mono is None or now.mono < staged.retry_mono:
            continue
        prog = replace(prog, staged={**prog.staged, sid: replace(staged, retry_mono=None)})
        for entry in staged.schedule.entries:
            for media in entry.files:
                if media.sha256 not in staged.ready:
                    out.append(Fetch(media.url, media.sha256, media.size))
    return prog, tuple(out)


def activate(prog: Programme, staged: Staged, cond: Conditions) -> Result:
    """The staged version goes into force: stored first (with its replay floor), then used."""
    schedule = staged.schedule
    previous = prog.schedules.get(schedule.id)
    out: list[Output] = [PersistSchedule(schedule.id, schedule.version, staged.body, staged.digest)]
    prog = replace(
        prog,
        schedules={**prog.schedules, schedule.id: schedule},
        digests={**prog.digests, schedule.id: staged.digest},
        stored={**prog.stored, schedule.id: staged.body},
        staged={k: v for k, v in prog.staged.items() if k != schedule.id},
        next_check_mono=0.0,
    )
    # Items of entries this version no longer has stop; the others play on undisturbed.
    kept = {entry.id: entry for entry in schedule.entries}
    before = {entry.id: entry for entry in previous.entries} if previous is not None else {}
    for item in cond.items:
        if item.occurrence is None:
            continue
        sid, entry_id, _ = item.occurrence.split("/")
        if sid != schedule.id:
            continue
        if entry_id not in kept:
            why = f"entry removed by schedule version {schedule.version}"
            out.append(Finish(item, "stopped", detail=why))
        elif item.since_utc is None and _moved(
            previous, before.get(entry_id), schedule, kept[entry_id]
        ):
            out.append(Withdraw(item))  # evaluate() brings it back at its new time
    out.append(Publish(prog))
    return prog, tuple(out)


def withdraw_untrusted(
    prog: Programme, still_trusted: Callable[[bytes], bool], trust_version: int, cond: Conditions
) -> Result:
    """A new keyring is in force: every schedule, in force or staged, whose signers it no
    longer authorises is withdrawn (its items stopped, a ``rejected`` event each), so that a
    programme a stolen key stored does not outlive the rotation that removed the key.

    ``still_trusted`` judges a schedule's stored bytes; one stored without its envelope (by an
    earlier receiver) cannot be judged and stays. Its version stays the floor (the store keeps
    it): central replaces it with a higher version, or a new id.
    """
    gone = {
        sid for sid in prog.schedules if sid in prog.stored and not still_trusted(prog.stored[sid])
    }
    unstaged = {sid for sid, staged in prog.staged.items() if not still_trusted(staged.body)}
    if not gone and not unstaged:
        return prog, ()
    why = f"withdrawn: its signers are not authorised by trust version {trust_version}"
    versions = [(sid, prog.schedules[sid].version) for sid in sorted(gone)]
    versions += [(sid, prog.staged[sid].schedule.version) for sid in sorted(unstaged)]
    out: list[Output] = [
        Emit("rejected", ref=sid, reason=reasons.NOT_AUTHORIZED, detail=f"version {v} {why}")
        for sid, v in versions
    ]
    for item in cond.items:
        if item.occurrence is not None and item.occurrence.split("/")[0] in gone:
            out.append(Finish(item, "stopped", detail=f"schedule {why}"))
    prog = replace(
        prog,
        schedules={k: v for k, v in prog.schedules.items() if k not in gone},
        digests={k: v for k, v in prog.digests.items() if k not in gone},
        stored={k: v for k, v in prog.stored.items() if k not in gone},
        staged={k: v for k, v in prog.staged.items() if k not in unstaged},
    )
    return prog, tuple(out)  # the machine publishes the state with the new trust version


def _moved(previous: Schedule | None, was: Entry | None, schedule: Schedule, entry: Entry) -> bool:
    if previous is None or was is None:
        return False
    return (was.at_minute, was.days, previous.tz) != (entry.at_minute, entry.days, schedule.tz)


def retimed_today(prog: Programme, schedule: Schedule, now: Instant, cond: Conditions) -> list[str]:
    """Entries this version moves to later today whose occurrence already had today's turn
    (played, playing, or skipped): they do not play twice; the words say so."""
    previous = prog.schedules.get(schedule.id)
    if previous is None or not now.utc_trusted:
        return []
    zone = schedule.zone
    today = datetime.fromtimestamp(now.utc, zone).date()
    before = {entry.id: entry for entry in previous.entries}
    sounding = {item.occurrence for item in cond.items if item.since_utc is not None}
    notes = []
    for entry in schedule.entries:
        was = before.get(entry.id)
        if not _moved(previous, was, schedule, entry) or today.weekday() not in entry.days:
            continue
        key = f"{schedule.id}/{entry.id}/{today.isoformat()}"
        hour, minute = divmod(entry.at_minute, 60)
        start = datetime(today.year, today.month, today.day, hour, minute, tzinfo=zone)
        if (key in prog.done or key in sounding) and start.timestamp() > now.utc and was:
            old_hour, old_minute = divmod(was.at_minute, 60)
            notes.append(
                f"{entry.id} had today's turn at {old_hour:02d}:{old_minute:02d}; "
                f"at {hour:02d}:{minute:02d} from tomorrow"
            )
    return notes


def occurrence_done(prog: Programme, done: PersistDone) -> Programme:
    """An occurrence played or given up (its ``PersistDone``): it does not come back."""
    return replace(prog, done=prog.done | {done.key})


def evaluate(prog: Programme, now: Instant, cond: Conditions) -> Result:
    """Turn due occurrences into items and fetch upcoming media; plan the next check."""
    if now.mono < prog.next_check_mono:
        return prog, ()
    if not prog.schedules:
        return replace(prog, next_check_mono=math.inf), ()  # activation resets it
    if not now.utc_trusted:
        # No absolute-time programme starts without a trusted clock (docs/security.md).
        return replace(prog, next_check_mono=now.mono + UNTRUSTED_RECHECK_S), ()
    settings = cond.settings
    next_check_utc = now.utc + CHECK_EVERY_S
    known = {item.occurrence for item in cond.items}
    prefetched = set(prog.prefetched)
    out: list[Output] = []
    for schedule in prog.schedules.values():
        for occ in occurrences(schedule, now.utc, now.utc + settings.prefetch_s):
            if occ.key in prog.done or occ.key in known:
                continue
            opens_at = occ.start_utc - settings.warm_up_s - LEAD_S
            if now.utc < opens_at:
                next_check_utc = min(next_check_utc, opens_at)
                for media in occ.entry.files:
                    if media.sha256 not in prefetched:
                        prefetched.add(media.sha256)
                        out.append(Fetch(media.url, media.sha256, media.size))
                continue
            prog, more = _occurrence_due(prog, occ, now, cond)
            out += more
    prog = replace(
        prog,
        prefetched=frozenset(prefetched),
        next_check_mono=now.mono + (next_check_utc - now.utc),
        done=_recent(prog.done, now),
    )
    return prog, tuple(out)


def _occurrence_due(prog: Programme, occ: Occurrence, now: Instant, cond: Conditions) -> Result:
    settings = cond.settings
    entry = occ.entry
    late = now.utc - occ.start_utc
    skip: tuple[reasons.Reason, str] | None = None
    if entry.priority != "emergency" and in_quiet_hours(settings, max(occ.start_utc, now.utc)):
        skip = (reasons.QUIET_HOURS, "inside the local quiet hours")
    elif entry.files and late > settings.late_join_s:
        skip = (reasons.MISSED, f"{int(late)} s late (the device was off or had no clock)")
    if skip is not None:
        skipped = (
            Emit("failed", ref=occ.key, reason=skip[0], detail=skip[1]),
            PersistDone(occ.key),
        )
        return replace(prog, done=prog.done | {occ.key}), skipped
    item = Item(
        ref=occ.key,
        origin="schedule",
        priority=entry.priority,
        title=entry.title,
        files=entry.files,
        stream_url=entry.stream_url,
        volume=volume_for(settings, entry.priority, entry.volume, cond.volume),
        max_duration_s=min(entry.max_duration_s, settings.max_play_duration_s),
        not_before_mono=now.mono + (occ.start_utc - now.utc),
        window_end_mono=now.mono + (occ.end_utc - now.utc),
        seq=0,
        occurrence=occ.key,
        late_by_s=max(0.0, late),
    )
    return prog, (Enqueue(item),)


def _recent(done: frozenset[str], now: Instant) -> frozenset[str]:
    """Forget occurrences older than a few days (their date is the key's last part)."""
    cutoff = (datetime.fromtimestamp(now.utc, UTC) - timedelta(days=DONE_KEEP_DAYS)).date()
    floor = cutoff.isoformat()
    return frozenset(key for key in done if key.rsplit("/", 1)[-1] >= floor)
