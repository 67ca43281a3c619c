"""The broadcast engine with a fake clock: priorities, preemption and resume, the relay
across items, manual relay control, the office microphone, live-stream watchdog, quiet hours."""

from __future__ import annotations

from dataclasses import replace

from receiver.core.effects import Play, SetVolume, StopPlayback
from receiver.core.events import (
    FetchFinished,
    LocalInputChanged,
    PlaybackEnded,
    PlaybackFailed,
    PlaybackProgress,
    PlaybackStarted,
)
from tests.core.harness import (
    SHA,
    T0,
    World,
    emitted,
    only_rejection,
    play_body,
    plays,
    relay_switches,
)

SHA_B = "b" * 64
STREAM = {
    "priority": "normal",
    "source": {"stream": {"url": "https://media.example/live"}},
    "max_duration_s": 600,
}


def playing(world: World, body: dict[str, object], sha: str = SHA, **kw: object) -> str:
    """Send a play, deliver its file, let it start; return its id."""
    key = world.emergency if body.get("priority") == "emergency" else world.operator
    world.send(world.signed("play", body, key, **kw))
    ref = f"c{world.seq}"
    world.feed(FetchFinished(sha, f"/c/{sha[:1]}"))
    world.advance(1.0)
    active = world.state.playback.active
    assert active is not None and active.ref == ref and active.phase == "playing"
    world.feed(PlaybackStarted(active.token))
    return ref


def test_a_higher_priority_interrupts_and_the_interrupted_item_resumes_where_it_was() -> None:
    world = World()
    bulletin = playing(world, play_body())
    world.advance(20.0)  # 20 s into the bulletin
    effects = world.send(
        world.signed("play", play_body(priority="emergency", sha=SHA_B), world.emergency)
    )
    warning = f"c{world.seq}"
    # The bulletin plays on while the warning's file is fetched: no needless silence.
    assert StopPlayback() not in effects
    effects = world.feed(FetchFinished(SHA_B, "/c/b"))
    assert StopPlayback() in effects
    assert ("preempted", bulletin) in [(e.kind, e.ref) for e in emitted(effects)]
    assert relay_switches(effects) == []  # the amplifier stays on across the preemption
    assert plays(effects) == [Play(2, "/c/b", 100, 0)]  # emergency volume
    world.feed(PlaybackStarted(2))
    world.advance(5.0)
    effects = world.feed(PlaybackEnded(2))
    assert ("finished", warning) in [(e.kind, e.ref) for e in emitted(effects)]
    resumed = plays(effects)
    assert len(resumed) == 1 and resumed[0].media == "/c/a"
    assert 19_000 <= resumed[0].start_ms <= 21_000  # where it was interrupted
    effects = world.feed(PlaybackStarted(resumed[0].token))
    assert [(e.kind, e.detail) for e in emitted(effects)] == [("started", "resumed at 20 s")]


def test_a_lower_priority_waits_and_plays_after() -> None:
    world = World()
    first = playing(world, play_body(priority="priority"))
    effects = world.send(world.signed("play", play_body(sha=SHA_B)))
    later = f"c{world.seq}"
    world.feed(FetchFinished(SHA_B, "/c/b"))
    assert StopPlayback() not in effects and not plays(effects)
    effects = world.feed(PlaybackEnded(1))
    assert ("finished", first) in [(e.kind, e.ref) for e in emitted(effects)]
    assert [p.media for p in plays(effects)] == ["/c/b"]
    assert world.state.playback.active is not None and world.state.playback.active.ref == later


def test_a_waiting_item_whose_window_closes_is_reported_stopped() -> None:
    world = World()
    playing(world, play_body(priority="emergency", max_duration_s=900))
    world.send(world.signed("play", play_body(sha=SHA_B, max_duration_s=60)))
    waiting = f"c{world.seq}"
    world.feed(FetchFinished(SHA_B, "/c/b"))
    effects = world.advance(61.0)
    assert [(e.kind, e.ref, e.detail) for e in emitted(effects)] == [
        ("stopped", waiting, "window closed before it could play")
    ]


def test_emergency_repeat_plays_the_message_again() -> None:
    world = World()
    playing(world, play_body(priority="emergency", repeat=3))
    tokens = [1]
    for _ in range(2):
        (again,) = plays(world.feed(PlaybackEnded(tokens[-1])))
        world.feed(PlaybackStarted(again.token))
        tokens.append(again.token)
    assert [e.kind for e in emitted(world.feed(PlaybackEnded(tokens[-1])))] == ["finished"]


def test_manual_relay_on_reverts_to_auto_after_its_duration() -> None:
    world = World()
    effects = world.send(world.signed("relay", {"name": "amp", "state": "on", "duration_s": 30}))
    assert relay_switches(effects) == [True]
    assert relay_switches(world.advance(29.0)) == []
    assert relay_switches(world.advance(2.0)) == [False]


def test_manual_relay_off_holds_except_for_an_emergency() -> None:
    world = World()
    world.send(world.signed("relay", {"name": "amp", "state": "off"}))
    world.send(world.signed("play", play_body()))
    effects = world.feed(FetchFinished(SHA, "/c/a")) + world.advance(2.0)
    assert relay_switches(effects) == []
    world.send(world.signed("play", play_body(priority="emergency", sha=SHA_B), world.emergency))
    effects = world.feed(FetchFinished(SHA_B, "/c/b"))
    assert relay_switches(effects) == [True]


def test_relay_commands_are_refused_beyond_the_toggle_limit() -> None:
    world = World()
    results = []
    for i in range(8):
        state = "on" if i % 2 == 0 else "auto"
        raw = world.signed("relay", {"name": "amp", "state": state, "duration_s": 60})
        results.append([e.kind for e in emitted(world.send(raw))][-1])
        world.advance(1.0)
    assert results.count("rejected") >= 1
    assert len(world.state.amp.toggles) <= 6 * 2
    switches = sum(1 for t in world.state.amp.toggles if world.mono - t < 60)
    assert switches <= 6


def test_the_office_microphone_pauses_normal_items_and_keeps_the_amplifier_on() -> None:
    world = World()
    bulletin = playing(world, play_body())
    world.advance(10.0)
    effects = world.feed(LocalInputChanged("mic", True))
    assert StopPlayback() in effects
    assert ("preempted", bulletin) in [(e.kind, e.ref) for e in emitted(effects)]
    assert relay_switches(world.advance(60.0)) == []  # on for the microphone
    effects = world.feed(LocalInputChanged("mic", False))
    (resumed,) = plays(effects)
    assert resumed.media == "/c/a" and 9_000 <= resumed.start_ms <= 11_000


def test_an_amplifier_fault_is_reported_and_shown_in_the_state() -> None:
    world = World()
    effects = world.feed(LocalInputChanged("amp_fault", True))
    assert [e.kind for e in emitted(effects)] == ["fault"]
    assert world.state.faults == frozenset({"amp"})


def test_a_stalled_stream_is_restarted_with_backoff_then_fails() -> None:
    world = World()
    world.send(world.signed("play", STREAM))
    world.advance(1.0)
    (first,) = plays(world.effects)
    assert first.media == "https://media.example/live"
    world.feed(PlaybackStarted(first.token))
    for position in (1000, 2000, 3000):
        world.advance(1.0)
        world.feed(PlaybackProgress(first.token, position))
    effects = world.advance(8.5)  # no progress for the stall timeout
    assert StopPlayback() in effects
    assert "reconnect 1 of 3 in 1 s" in (emitted(effects, "fault")[0].detail or "")
    retries = []
    for _ in range(3):
        effects = world.advance(10.0)
        retries += plays(effects)
        if (
            world.state.playback.active is not None
            and world.state.playback.active.phase == "playing"
        ):
            world.feed(PlaybackFailed(world.state.playback.active.token, "connection refused"))
    failed = emitted(world.effects, "failed")
    assert len(retries) == 3
    assert [(e.reason) for e in failed] == ["stream_failed"]


def test_a_stream_falls_back_to_the_local_file() -> None:
    world = World()
    world.state = replace(
        world.state,
        settings=replace(
            world.state.settings, fallback_file="/opt/fallback.mp3", stream_max_restarts=0
        ),
    )
    world.send(world.signed("play", STREAM))
    world.advance(1.0)
    world.feed(PlaybackStarted(1))
    effects = world.feed(PlaybackEnded(1))  # the server closed the stream
    assert [p.media for p in plays(effects)] == ["/opt/fallback.mp3"]
    assert "fallback" in (emitted(effects, "fault")[0].detail or "")
    effects = world.advance(600.0)
    assert [e.kind for e in emitted(effects)] == ["finished"]  # the relay's planned end


def test_a_stream_that_runs_its_time_finishes() -> None:
    world = World()
    world.send(world.signed("play", STREAM))
    world.advance(1.0)
    world.feed(PlaybackStarted(1))
    for second in range(1, 601):
        world.feed(PlaybackProgress(1, second * 1000))
        world.advance(1.0)
    assert [(e.kind, e.detail) for e in emitted(world.effects, "finished")] == [
        ("finished", "relay ended at its planned time")
    ]


def test_quiet_hours_refuse_normal_plays_but_not_emergencies() -> None:
    world = World()
    # T0 is 2027-01-15 08:00 UTC = 15:00 in Ho Chi Minh City.
    world.state = replace(
        world.state, settings=replace(world.state.settings, quiet_hours=((14 * 60, 16 * 60),))
    )
    assert only_rejection(world.send(world.signed("play", play_body()))).reason == "policy"
    effects = world.send(world.signed("play", play_body(priority="emergency"), world.emergency))
    assert emitted(effects, "accepted")


def test_volume_change_applies_to_normal_items_not_emergencies() -> None:
    world = World()
    playing(world, play_body(priority="emergency"))
    effects = world.send(world.signed("volume", {"level": 20}))
    assert not any(isinstance(e, SetVolume) for e in effects)
    assert world.state.volume == 20
    assert T0 > 0
