"""Pre-roll: a file due at an instant is opened (paused) a second ahead, and started by resuming.

Several receivers told to start at one instant sound together only if none spends the first
milliseconds opening the file; the player's side is tested in tests/adapters/test_player.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from receiver.core.effects import DropPreroll, Effect, Play, Preroll, StopPlayback
from receiver.core.engine import START_LEAD_S
from receiver.core.events import (
    FetchFinished,
    LocalInputChanged,
    PlaybackEnded,
    PlaybackStarted,
    TimerFired,
)
from receiver.timefmt import rfc3339
from tests.core.harness import SHA, World, play_body, plays, relay_switches

PATH = "/cache/" + SHA


def prerolls(effects: Sequence[Effect]) -> list[Preroll]:
    return [e for e in effects if isinstance(e, Preroll)]


def timed_play(world: World, in_s: float, **extra: Any) -> str:
    body = play_body(start_at=rfc3339(world.utc + in_s), **extra)
    world.send(world.signed("play", body))
    world.feed(FetchFinished(SHA, PATH))
    return f"c{world.seq}"


def test_a_file_due_at_an_instant_is_opened_a_second_ahead_and_resumed_at_it() -> None:
    world = World(warm_up_s=0.3)
    instant = world.mono + 10.0
    timed_play(world, 10.0)
    assert not prerolls(world.advance(8.9))
    early = world.advance(0.2)  # one second before the instant
    assert prerolls(early) == [Preroll(1, PATH, 70, 0)]
    assert not plays(early) and not relay_switches(early)
    # The relay: warm_up_s before the instant, and START_LEAD_S more (see the next test).
    assert not relay_switches(world.advance(instant - 0.3 - START_LEAD_S - world.mono - 0.01))
    assert relay_switches(world.advance(0.02)) == [True]
    # Once the relay is on, the instant is fixed: the player gets it a little ahead, with the
    # same token (it resumes the prerolled file itself at the instant).
    assert not plays(world.advance(instant - START_LEAD_S - world.mono - 0.01))
    armed = world.advance(0.02)
    assert plays(armed) == [Play(1, PATH, 70, at_mono=instant)]
    assert not plays(world.advance(1.0))  # nothing more at the instant itself
    world.feed(PlaybackStarted(1))
    world.feed(PlaybackEnded(1))
    # Tokens never repeat: the next item gets a new one.
    world.send(world.signed("play", play_body()))
    effects = world.feed(FetchFinished(SHA, PATH)) + world.advance(1.1)
    assert plays(effects) == [Play(2, PATH, 70)]


def test_an_immediate_play_is_not_prerolled() -> None:
    world = World()
    world.send(world.signed("play", play_body()))
    effects = world.feed(FetchFinished(SHA, PATH)) + world.advance(1.1)
    assert not prerolls(world.effects) and plays(effects) == [Play(1, PATH, 70)]


def test_a_prerolled_play_stopped_before_its_instant_is_dropped() -> None:
    world = World()
    ref = timed_play(world, 10.0)
    (preroll,) = prerolls(world.advance(9.2))
    effects = world.send(world.signed("stop", {"target": ref}))
    assert [e for e in effects if isinstance(e, DropPreroll)] == [DropPreroll(preroll.token)]
    assert not plays(world.advance(5.0))


def test_nothing_is_prerolled_while_another_item_plays() -> None:
    world = World()
    timed_play(world, 10.0)
    world.send(world.signed("play", play_body(sha="b" * 64, priority="priority")))
    world.feed(FetchFinished("b" * 64, "/cache/b"))
    world.advance(1.1)
    world.feed(PlaybackStarted(1))  # the priority item sounds through the instant
    assert not prerolls(world.advance(20.0))
    later = world.feed(PlaybackEnded(1)) + world.advance(10.0)
    assert [p.media for p in plays(later)] == [PATH]  # then opened as usual, with a new token
    assert plays(later)[0].token == 2


def test_a_relay_switched_late_does_not_move_the_instant() -> None:
    """The instant counts the warm-up from when the relay actually switched: for a file
    prerolled for an instant, the relay is due early enough that a loop waking late for it (a
    busy board: tens of milliseconds, here a tenth of a second) does not push the instant."""
    world = World(warm_up_s=0.3)
    instant = world.mono + 10.0
    timed_play(world, 10.0)
    world.advance(9.1)  # prerolled
    relay_due = world.deadline
    assert relay_due is not None and relay_due < instant - 0.3
    late = relay_due + 0.1 - world.mono
    world.mono += late
    world.utc += late
    assert relay_switches(world.feed(TimerFired())) == [True]
    (play,) = plays(world.advance(instant - world.mono))
    assert play.at_mono == instant


def test_a_long_warm_up_prerolls_as_early_as_the_relay_goes_on() -> None:
    world = World(warm_up_s=1.0)
    instant = world.mono + 10.0
    timed_play(world, 10.0)
    assert not world.advance(instant - 1.0 - START_LEAD_S - world.mono - 0.01)
    effects = world.advance(0.02)
    assert prerolls(effects) == [Preroll(1, PATH, 70, 0)] and relay_switches(effects) == [True]
    (play,) = plays(world.advance(instant - world.mono))
    assert play.at_mono == instant


def armed_play(world: World, in_s: float = 10.0) -> tuple[str, Play]:
    """A timed play, advanced until the player has been handed its instant."""
    ref = timed_play(world, in_s)
    (play,) = plays(world.advance(in_s - START_LEAD_S + 0.01))
    assert play.at_mono is not None and play.at_mono > world.mono
    return ref, play


def test_a_play_handed_over_with_its_instant_and_stopped_before_it_is_stopped() -> None:
    world = World()
    ref, _ = armed_play(world)
    effects = world.send(world.signed("stop", {"target": ref}))
    assert StopPlayback() in effects  # the player's armed start is cancelled with the item
    assert not plays(world.advance(5.0))


def test_a_play_handed_over_with_its_instant_is_stopped_when_the_microphone_is_keyed() -> None:
    world = World()
    _, play = armed_play(world)
    effects = world.feed(LocalInputChanged("mic", True))
    assert StopPlayback() in effects
    assert not plays(world.advance(5.0))
    # Released, it opens again from its start under a new token (the prerolled one is gone).
    later = world.feed(LocalInputChanged("mic", False)) + world.advance(2.0)
    assert [(p.token, p.at_mono) for p in plays(later)] == [(play.token + 1, None)]


def test_the_window_of_a_play_handed_over_early_counts_from_its_instant() -> None:
    world = World()
    _, play = armed_play(world)
    assert play.at_mono is not None
    active = world.state.playback.active
    assert active is not None and active.stop_mono == play.at_mono + 600
    assert world.state.playback.active is not None and world.state.playback.active.since_utc is None
