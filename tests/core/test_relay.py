"""Live relays in the core: the window's end stops the player whatever the phase, the restart
budget counts consecutive failures only, and a preempted relay that resumes says so."""

from __future__ import annotations

from dataclasses import replace

from receiver.core.effects import StopPlayback
from receiver.core.events import (
    FetchFinished,
    PlaybackEnded,
    PlaybackFailed,
    PlaybackProgress,
    PlaybackStarted,
    PlayerCrashed,
)
from tests.core.harness import SHA, World, emitted, play_body, plays, relay_switches

STREAM = {
    "priority": "normal",
    "source": {"stream": {"url": "https://media.example/live"}},
    "max_duration_s": 600,
}


def relaying(world: World, body: dict[str, object] = STREAM) -> int:
    """Send the relay, let it start; return its player token."""
    world.send(world.signed("play", body))
    world.advance(1.0)
    active = world.state.playback.active
    assert active is not None and active.phase == "playing"
    world.feed(PlaybackStarted(active.token))
    return active.token


def healthy_for(world: World, token: int, seconds: int, start_ms: int = 0) -> None:
    for second in range(1, seconds + 1):
        world.advance(1.0)
        world.feed(PlaybackProgress(token, start_ms + second * 1000))


def test_the_window_end_stops_a_playing_relay() -> None:
    world = World()
    token = relaying(world, {**STREAM, "max_duration_s": 10})
    healthy_for(world, token, 8)
    effects = world.advance(3.0)
    assert [e.kind for e in emitted(effects)] == ["finished"]
    assert StopPlayback() in effects  # libVLC would relay on for ever otherwise
    assert world.state.playback.active is None


def test_the_window_end_of_a_reconnecting_relay_starts_nothing_more() -> None:
    world = World()
    token = relaying(world, {**STREAM, "max_duration_s": 10})
    world.advance(2.0)
    world.feed(PlaybackFailed(token, "connection refused"))  # retry in 1 s
    world.advance(1.5)
    active = world.state.playback.active
    assert active is not None and active.phase == "playing"
    world.feed(PlaybackFailed(active.token, "connection refused"))  # retry in 2 s
    effects = world.advance(10.0)
    assert [e.kind for e in emitted(effects, "finished")] == ["finished"]
    assert world.state.playback.active is None
    assert plays(world.advance(10.0)) == []


def test_healthy_audio_gives_the_restart_budget_back() -> None:
    world = World()
    world.state = replace(
        world.state, settings=replace(world.state.settings, stream_max_restarts=2)
    )
    token = relaying(world, {**STREAM, "max_duration_s": 3600})
    for blip in range(1, 6):  # five drops, each after a minute of healthy audio
        healthy_for(world, token, 60)
        effects = world.feed(PlaybackFailed(token, "connection reset"))
        (fault,) = emitted(effects, "fault")
        assert "reconnect 1 of 2" in (fault.detail or ""), f"blip {blip}: {fault.detail}"
        world.advance(1.0)
        active = world.state.playback.active
        assert active is not None and active.phase == "playing"
        token = active.token
        world.feed(PlaybackStarted(token))
    assert emitted(world.effects, "failed") == []


def test_consecutive_failures_without_healthy_audio_exhaust_the_budget() -> None:
    world = World()
    token = relaying(world, {**STREAM, "max_duration_s": 3600})
    for attempt in range(3):
        healthy_for(world, token, 10)  # ten seconds of audio: not yet healthy
        world.feed(PlaybackFailed(token, "connection reset"))
        world.advance(2.0**attempt)
        active = world.state.playback.active
        assert active is not None and active.phase == "playing"
        token = active.token
        world.feed(PlaybackStarted(token))
    effects = world.feed(PlaybackFailed(token, "connection reset"))
    assert [(e.kind, e.reason) for e in emitted(effects)] == [("failed", "stream_failed")]


def test_a_preempted_relay_that_resumes_reports_started_again() -> None:
    world = World()
    token = relaying(world)
    healthy_for(world, token, 5)
    world.send(world.signed("play", play_body(priority="emergency"), world.emergency))
    world.feed(FetchFinished(SHA, "/c/a"))
    world.advance(1.0)
    assert [e.ref for e in emitted(world.effects, "preempted")] == ["c1001"]
    active = world.state.playback.active
    assert active is not None and active.ref == "c1002"
    world.feed(PlaybackStarted(active.token))
    world.feed(PlaybackEnded(active.token))  # the warning is over: the relay resumes
    world.advance(1.0)
    relay = world.state.playback.active
    assert relay is not None and relay.ref == "c1001" and relay.phase == "playing"
    effects = world.feed(PlaybackStarted(relay.token))
    assert [(e.kind, e.ref, e.detail) for e in emitted(effects)] == [
        ("started", "c1001", "stream rejoined")
    ]


def test_a_lost_media_engine_fails_the_item_and_switches_the_amplifier_off_at_once() -> None:
    world = World()
    token = relaying(world)
    healthy_for(world, token, 3)
    effects = world.feed(PlayerCrashed("the media engine stopped (signal SIGSEGV)"))
    assert [(e.kind, e.reason) for e in emitted(effects)] == [("failed", "playback_failed")]
    assert relay_switches(effects) == [False]  # no tail: nobody knows what it was playing
    assert plays(world.advance(30.0)) == []  # a relay is not restarted into a broken engine


def test_a_lost_media_engine_while_idle_changes_nothing() -> None:
    world = World()
    before = world.state
    assert world.feed(PlayerCrashed("gone")) == []
    assert world.state == before
