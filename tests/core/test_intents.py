"""Write-ahead intents: a crash at any point of a command's life never leaves it spent and silent.

The store is modelled by applying the durable effects (``PersistFloors`` with its intent,
``PersistIntentStarted``, ``PersistIntentDone``) in order, as the shell does; a crash after any
effect keeps exactly what was applied before it. After the restart the command's QoS 1 copy is
delivered again, as the broker does when it never got the PUBACK.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from receiver.core import machine
from receiver.core.effects import (
    Effect,
    PersistFloors,
    PersistIntentDone,
    PersistIntentStarted,
    Play,
)
from receiver.core.events import FetchFinished, PlaybackEnded, PlaybackStarted, TimerFired
from receiver.core.state import Intent
from receiver.timefmt import rfc3339
from tests.core.harness import SHA, World, emitted, play_body, plays

CARRIED_OUT = "carried out after a restart"
TERMINAL = frozenset({"finished", "stopped", "failed"})


@dataclass
class Disk:
    """What the store holds: the durable effects applied in order."""

    floors: dict[str, tuple[int, str]] = field(default_factory=dict)
    time_floor: float = 0.0
    intents: dict[str, Intent] = field(default_factory=dict)

    def apply(self, effects: Sequence[Effect]) -> Disk:
        for effect in effects:
            if isinstance(effect, PersistFloors):
                self.floors.update(effect.floors)
                self.time_floor = max(self.time_floor, effect.time_floor)
                if effect.intent is not None:
                    self.intents[effect.intent.ref] = effect.intent
            elif isinstance(effect, PersistIntentStarted) and effect.ref in self.intents:
                intent = self.intents[effect.ref]
                self.intents[effect.ref] = Intent(
                    intent.ref, intent.body, intent.window_end_utc, "started"
                )
            elif isinstance(effect, PersistIntentDone):
                self.intents.pop(effect.ref, None)
        return self


def restart(world: World, disk: Disk, *, after_s: float = 2.0, trusted: bool = True) -> World:
    """A new process on the same store, ``after_s`` later; its first step has run."""
    again = World(operator=world.operator, emergency=world.emergency, roots=world.roots)
    again.mono = world.mono + after_s
    again.utc = world.utc + after_s
    again.utc_trusted = trusted
    again.seq = world.seq
    again.state = machine.initial_state(
        world.state.settings,
        world.state.floors.keyring,
        floors=disk.floors,
        time_floor=disk.time_floor,
        reset_floor=world.state.floors.reset_floor,
        recovered=tuple(disk.intents.values()),
    )
    again.effects.clear()
    boot = machine.boot(again.state, again.now)
    again.state, again.deadline = boot.state, boot.deadline
    again.feed(TimerFired())
    return again


def play_lifetime(world: World, raw: bytes) -> list[Effect]:
    """Every effect of a play from its arrival to the relay going off after the tail."""
    effects = world.send(raw)
    effects += world.feed(FetchFinished(SHA, "/cache/" + SHA))
    effects += world.advance(1.1)
    effects += world.feed(PlaybackStarted(1))
    effects += world.feed(PlaybackEnded(1))
    effects += world.advance(6.0)
    return effects


def test_a_play_is_never_spent_and_silent_whichever_effect_a_crash_follows() -> None:
    reference = World()
    raw = reference.signed("play", play_body())
    ref = f"c{reference.seq}"
    lifetime = play_lifetime(reference, raw)
    assert len(lifetime) > 10
    for crash_after in range(len(lifetime) + 1):
        world = World(operator=reference.operator, emergency=reference.emergency)
        world.seq = reference.seq - 1
        assert world.signed("play", play_body()) == raw  # the same command, signed the same
        before = play_lifetime(world, raw)[:crash_after]
        disk = Disk().apply(before)
        again = restart(world, disk)
        reported_before = {e.kind for e in emitted(before) if e.ref == ref}
        after = [(e.kind, e.detail, e.reason) for e in emitted(again.effects) if e.ref == ref]
        where = f"crash after effect {crash_after} of {len(lifetime)}: {before[-1:]}"
        redelivered = again.send(raw)
        if not disk.floors:
            # Nothing stored: the copy is a new command, accepted and acted on.
            assert ("accepted", "play", None) in [
                (e.kind, e.detail, e.reason) for e in emitted(redelivered)
            ], where
        elif reported_before & TERMINAL:
            # Its end was reported. Between that report and forgetting the intent, a crash
            # leaves the intent: the restart then reports the end a second time (failed,
            # interrupted), which is noisy but never silent, and it never plays again.
            assert not plays(again.advance(5.0)), where
            assert not disk.intents or [k for k, _, _ in after] == ["failed"], where
        elif "started" in reported_before or any(
            isinstance(e, PersistIntentStarted) for e in before
        ):
            # It may have sounded: reported cut off, never played from the top again.
            assert ("failed", "cut off by a restart of the device", "interrupted") in after, where
            assert not plays(again.effects), where
        else:
            # Accepted, never sounded: carried out now, within its window.
            assert ("accepted", f"play, {CARRIED_OUT}", None) in after, where
            again.feed(FetchFinished(SHA, "/cache/" + SHA))
            assert plays(again.advance(1.1)), where
        if not disk.floors:
            continue
        # Its floor was stored: the redelivered copy does not act a second time.
        assert not [e for e in emitted(redelivered) if e.kind == "accepted" and e.detail == "play"]
        assert not [e for e in emitted(redelivered) if e.kind == "rejected"]


def test_a_volume_command_cut_off_before_it_acted_is_carried_out_after_the_restart() -> None:
    world = World()
    raw = world.signed("volume", {"level": 30})
    effects = world.send(raw)
    floors_at = next(i for i, e in enumerate(effects) if isinstance(e, PersistFloors))
    assert isinstance(effects[-1], PersistIntentDone)  # closed in the step that acted
    again = restart(world, Disk().apply(effects[: floors_at + 1]))
    assert again.state.volume == 30
    assert [(e.kind, e.detail) for e in emitted(again.effects)] == [
        ("accepted", f"volume, {CARRIED_OUT}")
    ]
    assert not again.state.recovered
    # The whole step done: nothing left over for a later restart.
    assert restart(world, Disk().apply(effects)).effects == restart(world, Disk()).effects


def test_a_play_whose_window_closed_during_the_restart_is_reported_failed() -> None:
    world = World()
    effects = world.send(world.signed("play", play_body(max_duration_s=60)))
    disk = Disk().apply(effects)
    assert len(disk.intents) == 1
    again = restart(world, disk, after_s=61.0)
    (report,) = emitted(again.effects)
    assert (report.kind, report.reason) == ("failed", "interrupted")
    assert "window closed" in (report.detail or "")
    assert not plays(again.advance(5.0)) and not again.state.playback.items()


def test_a_play_at_a_later_time_keeps_its_window_across_the_restart() -> None:
    world = World()
    start_at = world.utc + 120
    body = play_body(start_at=rfc3339(start_at), max_duration_s=30)
    disk = Disk().apply(world.send(world.signed("play", body)))
    again = restart(world, disk, after_s=10.0)
    again.feed(FetchFinished(SHA, "/cache/" + SHA))
    assert not plays(again.advance(108.0))  # the relay warms up a second before
    played = plays(again.advance(2.5))
    assert played and again.utc >= start_at
    item = again.state.playback.active
    assert item is not None and item.window_end_mono - again.mono <= 30.0


def test_without_a_clock_after_the_restart_an_intent_waits_for_it_then_is_reported() -> None:
    world = World()
    disk = Disk().apply(world.send(world.signed("play", play_body())))
    again = restart(world, disk, trusted=False)
    assert emitted(again.effects) == []  # waiting for NTP, as held commands do
    assert again.deadline is not None
    again.advance(31.0)
    (report,) = emitted(again.effects)
    assert (report.kind, report.reason) == ("failed", "interrupted")
    assert "clock" in (report.detail or "")


def test_a_stop_accepted_after_a_play_still_stops_it_when_both_are_recovered() -> None:
    world = World()
    effects = world.send(world.signed("play", play_body()))
    play_ref = f"c{world.seq}"
    stop = world.send(world.signed("stop", {"target": play_ref}))
    stop_floor = next(i for i, e in enumerate(stop) if isinstance(e, PersistFloors))
    disk = Disk().apply([*effects, *stop[: stop_floor + 1]])
    assert list(disk.intents) == [play_ref, f"c{world.seq}"]
    again = restart(world, disk)
    kinds = [(e.kind, e.ref) for e in emitted(again.effects)]
    assert ("stopped", play_ref) in kinds
    assert not again.state.playback.items() and not plays(again.advance(5.0))


def test_the_intent_is_marked_before_the_sound_and_goes_once_the_end_is_reported() -> None:
    world = World()
    effects = play_lifetime(world, world.signed("play", play_body()))
    disk = Disk().apply(effects)
    assert disk.intents == {}
    assert [e.ref for e in effects if isinstance(e, PersistIntentStarted)] == [f"c{world.seq}"]
    started_at = next(i for i, e in enumerate(effects) if isinstance(e, PersistIntentStarted))
    assert isinstance(effects[started_at + 1], Play)  # marked before the sound, never after
