"""Each part of the state on its own: ``(part, input, now) -> (part, outputs)``.

The machine composes the parts (the other core tests drive it whole); here each owner is called
directly, to show its contract: it takes its own frozen part, what it reads of the rest, and
the time; it returns its new part and what is to be done, and leaves the part it was given as
it was. Notes for another part (an item to queue, the amplifier's tail, a state to publish) are
plain data among the effects, for the machine to hand on.
"""

from __future__ import annotations

import ast
from datetime import date
from pathlib import Path

import receiver.core
from receiver.central.signing import SigningKey
from receiver.core import admission, amp, engine, floors, limits, programme, reasons
from receiver.core.clock import Instant
from receiver.core.commands import MediaFile
from receiver.core.effects import (
    Emit,
    Fetch,
    PersistFloors,
    PersistResetFloor,
    PersistSchedule,
    Play,
    StopPlayback,
    SwitchRelay,
)
from receiver.core.intents import Intent
from receiver.core.reasons import Rejection
from receiver.core.schedule import Entry, Schedule
from tests.core.harness import DEVICE, T0, TOPIC, World, core_settings

SETTINGS = core_settings(SigningKey.generate("op-parts"))
MEDIA = MediaFile("https://media.example/a.mp3", "a" * 64, 1000, "Bulletin")
NOW = Instant(100.0, T0, True)


def command_item() -> engine.Item:
    return engine.Item(
        ref="c1",
        origin="command",
        priority="normal",
        title="Bulletin",
        files=(MEDIA,),
        stream_url=None,
        volume=60,
        max_duration_s=600,
        not_before_mono=NOW.mono,
        window_end_mono=NOW.mono + 600,
        seq=0,
    )


def test_floors_fix_the_reset_floor_once_the_clock_is_trusted_and_move_with_a_command() -> None:
    world = World()
    fresh = floors.Floors(world.state.floors.keyring, streams={}, time_floor=0.0)
    same, nothing = floors.fix_reset_floor(fresh, Instant(5.0, 0.0, False))
    assert (same, nothing) == (fresh, ())
    fixed, stored = floors.fix_reset_floor(fresh, Instant(5.0, T0 - 59.9876, True))
    assert fixed.reset_floor == T0 - 59.988 and stored == (PersistResetFloor(T0 - 59.988),)
    assert fresh.reset_floor is None  # the part handed in is left as it was

    raw = world.signed("volume", {"level": 20})
    ctx = floors.context(fixed, SETTINGS, {})
    admitted = admission.admit(ctx, TOPIC, raw, False, NOW)
    assert isinstance(admitted, admission.AdmittedCommand)
    intent = Intent(admitted.command.header.id, admitted.body, T0 + 60)
    moved, effects = floors.accept_command(fixed, admitted, intent, NOW, max_skew_s=300.0)
    stream = admission.command_stream(admitted.signers[0])
    assert moved.streams[stream] == (admitted.command.header.seq, admitted.digest)
    assert effects == (PersistFloors({stream: moved.streams[stream]}, moved.time_floor, intent),)
    again = admission.admit(floors.context(moved, SETTINGS, {}), TOPIC, raw, False, NOW)
    assert isinstance(again, admission.AdmittedCommand) and again.duplicate  # not a second time


def test_playback_queues_selects_starts_and_finishes_leaving_notes_for_the_relay() -> None:
    cond = engine.Conditions(SETTINGS, amp_on=False, mic=False)
    queued, fetches = engine.add_item(engine.Playback(), command_item())
    assert fetches == (Fetch(MEDIA.url, MEDIA.sha256, MEDIA.size),)
    ready, nothing = engine.media_arrived(queued, MEDIA.sha256, "/cache/a")
    assert nothing == () and ready.queue[0].media_ready
    chosen, _ = engine.select(ready, NOW, cond)
    assert chosen.active is not None and chosen.active.phase == "warming"
    assert engine.relay_wants(chosen, cond) == amp.Wants(item=True, emergency=False, mic=False)
    warmed = engine.Conditions(SETTINGS, amp_on=True, amp_on_mono=NOW.mono - 10, mic=False)
    playing, started = engine.run_active(chosen, NOW, warmed)
    assert started[-1] == Play(1, "/cache/a", 60, 0, False) and playing.next_token == 2
    assert chosen.active.phase == "warming"  # unchanged: a new part was returned
    later = Instant(NOW.mono + 30, NOW.utc + 30, True)
    assert playing.active is not None
    ended, outputs = engine.finish(playing, playing.active, later, warmed, "stopped")
    assert ended.active is None and isinstance(outputs[0], StopPlayback)
    assert amp.Tail(later.mono + SETTINGS.tail_s) in outputs
    assert outputs[-1] == engine.Publish(ended)  # the state as it is once the item is out


def test_the_programme_stages_activates_and_hands_due_occurrences_to_playback() -> None:
    entry = Entry(
        id="morning",
        days=frozenset(range(7)),
        at_minute=0,
        priority="normal",
        volume=None,
        valid_from=date(2020, 1, 1),
        valid_until=None,
        files=(MEDIA,),
        stream_url=None,
        max_duration_s=600,
    )
    schedule = Schedule("sch-1", 1, T0, T0 + 86400, "prod", (f"dev:{DEVICE}",), "UTC", (entry,))
    empty = programme.Programme()
    staging, fetches = programme.stage(empty, schedule, b"{}", "d" * 64)
    assert fetches == (Fetch(MEDIA.url, MEDIA.sha256, MEDIA.size),) and not programme.complete(
        staging
    )
    staged, _ = programme.staged_media_arrived(staging, MEDIA.sha256)
    (complete,) = programme.complete(staged)
    cond = programme.Conditions(SETTINGS, volume=50)
    active, outputs = programme.activate(staged, complete, cond)
    assert outputs[0] == PersistSchedule("sch-1", 1, b"{}", "d" * 64)  # stored before used
    assert outputs[-1] == programme.Publish(active) and active.schedules == {"sch-1": schedule}
    assert empty.schedules == {} and staged.staged  # the parts handed in are as they were

    midnight = T0 - T0 % 86400 + 86400  # entries at 00:00 UTC: the next one
    due = Instant(200.0, midnight - 2, True)
    planned, enqueued = programme.evaluate(active, due, cond)
    (note,) = [o for o in enqueued if isinstance(o, engine.Enqueue)]
    assert note.item.occurrence == f"sch-1/morning/{date.fromtimestamp(midnight).isoformat()}"
    assert note.item.not_before_mono == due.mono + 2 and planned.next_check_mono > due.mono
    again, nothing = programme.evaluate(planned, due, programme.Conditions(SETTINGS, 50))
    assert (again, nothing) == (planned, ())  # not before its next check


def test_the_relay_switches_on_for_an_item_and_off_after_its_tail() -> None:
    on, switched = amp.reconcile(
        amp.Amp(), amp.Wants(True, False, False), NOW, max_toggles_per_min=6
    )
    assert on.on and switched == (SwitchRelay(on=True),)
    tailing = amp.tail(on, amp.Tail(NOW.mono + 5))
    idle = amp.Wants(False, False, False)
    assert amp.reconcile(tailing, idle, NOW, max_toggles_per_min=6) == (tailing, ())
    after = Instant(NOW.mono + 5, NOW.utc + 5, True)
    off, switched = amp.reconcile(tailing, idle, after, max_toggles_per_min=6)
    assert not off.on and switched == (SwitchRelay(on=False),)


def test_the_flood_limit_reports_up_to_its_limit_then_sums_up() -> None:
    rejection = Rejection(reasons.BAD_SIGNATURE, "no", "m1")
    window = limits.RejectionWindow(NOW.mono)
    window, first = limits.report(window, rejection, NOW, per_window=1, window_s=10.0)
    assert first == (Emit("rejected", ref="m1", reason=reasons.BAD_SIGNATURE, detail="no"),)
    window, counted = limits.report(window, rejection, NOW, per_window=1, window_s=10.0)
    assert counted == () and window.suppressed == ((reasons.BAD_SIGNATURE, 1),)
    closed, summary = limits.close(
        window, Instant(NOW.mono + 10, NOW.utc + 10, True), window_s=10.0
    )
    assert closed.suppressed == () and len(summary) == 1 and summary[0].kind == "fault"


def _appendable_effects(annotation: ast.expr | None) -> bool:
    text = "" if annotation is None else ast.unparse(annotation)
    return text.startswith("list[") and ("Effect" in text or "Output" in text)


def test_no_core_function_is_handed_a_list_to_append_to() -> None:
    """Parts return what is to be done; none is handed an ``out`` list that another fills."""
    core = Path(receiver.core.__file__).parent
    handed = [
        f"{path.name}:{node.name}({arg.arg})"
        for path in sorted(core.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef)
        for arg in (*node.args.args, *node.args.kwonlyargs)
        if arg.arg == "out" or _appendable_effects(arg.annotation)
    ]
    assert handed == []
