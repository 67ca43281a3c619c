"""Freshness without a reliable clock, a later stop beating an older play, and key rotation."""

from __future__ import annotations

from dataclasses import replace

from receiver.central.signing import SigningKey, key_entry, sign_trust, trust_payload
from receiver.core import machine
from receiver.core.admission import MAX_STOP_IDS, STOP_ID_STREAM
from receiver.core.effects import Effect, PersistResetFloor, PersistTrust, PublishState
from receiver.core.events import TimerFired
from tests.core.harness import (
    T0,
    TRUST_TOPIC,
    World,
    emitted,
    only_rejection,
    play_body,
    trusted_key,
    unchanged,
)

DAY = 86400.0


def accepted(effects: list[Effect]) -> bool:
    return bool(emitted(effects, "accepted"))


def test_a_fresh_store_waits_for_a_synchronised_clock_then_refuses_older_commands() -> None:
    world = World(utc_trusted=False)
    world.state = replace(world.state, floors=replace(world.state.floors, reset_floor=None))
    captured = world.signed("volume", {"level": 5}, iat=T0 - 600)  # before the reset
    assert only_rejection(world.send(captured)).reason == "clock_untrusted"
    world.utc_trusted = True
    world.advance(1.0)
    effects = world.send(captured)
    assert PersistResetFloor(T0 + 1.0) == effects[0]
    assert [e.reason for e in emitted(effects, "rejected")] == ["replayed"]
    assert world.state.volume == 70
    assert accepted(world.send(world.signed("volume", {"level": 6})))
    assert world.state.volume == 6


def test_a_stale_backlog_does_not_play_even_with_a_long_exp() -> None:
    world = World()
    queued = world.signed("play", play_body(), iat=T0 - 2 * 3600, ttl_s=7 * DAY)
    assert only_rejection(world.send(queued)).reason == "expired"


def test_a_clock_set_back_a_month_cannot_revive_an_old_message() -> None:
    other = SigningKey.generate("op-2")
    world = World(extra_keys=(trusted_key(other, ["operator"]),))
    # Captured a month ago from another operator's key: its seq stream has no floor here.
    world.state = replace(
        world.state, floors=replace(world.state.floors, reset_floor=T0 - 60 * DAY)
    )
    old = world.signed("volume", {"level": 9}, other, iat=T0 - 30 * DAY)
    world.send(world.signed("volume", {"level": 50}))  # the floor moves to T0
    world.utc = T0 - 30 * DAY + 10  # spoofed NTP: the clock claims to be synchronised
    assert only_rejection(world.send(old)).reason == "expired"
    assert world.state.volume == 50


def test_a_later_stop_beats_an_older_play_that_arrives_after_it() -> None:
    other = SigningKey.generate("op-2")
    world = World(extra_keys=(trusted_key(other, ["operator"]),))
    play = world.signed("play", play_body(), other, iat=T0 - 30)  # signed first ...
    stop = world.signed("stop", {"target": "all"}, iat=T0 - 10)
    assert accepted(world.send(stop))
    assert only_rejection(world.send(play)).reason == "replayed"  # ... delivered last


def test_a_stop_naming_an_id_refuses_that_play_if_it_comes_later() -> None:
    world = World()
    world.send(world.signed("stop", {"target": "bulletin-7"}))
    late = world.signed("play", play_body(), message_id="bulletin-7")
    assert only_rejection(world.send(late)).reason == "replayed"


def test_the_ids_named_by_stops_are_the_newest_256_in_memory_as_on_disk() -> None:
    """The core kept every id a stop named for as long as the daemon ran (about 150 bytes each,
    and a longer copy of the floors for every later command), while the store keeps the newest
    256: memory grew with every targeted stop (``bench/endurance``), and a play refused before a
    restart was accepted after it."""
    world = World()
    for number in range(MAX_STOP_IDS + 10):
        world.advance(0.01)  # each stop issued after the one before
        assert accepted(world.send(world.signed("stop", {"target": f"bulletin-{number}"})))
    named = sorted(s for s in world.state.floors.streams if s.startswith(STOP_ID_STREAM))
    assert named == sorted(f"{STOP_ID_STREAM}bulletin-{n}" for n in range(10, MAX_STOP_IDS + 10))
    remembered = world.signed("play", play_body(), message_id=f"bulletin-{MAX_STOP_IDS + 9}")
    assert only_rejection(world.send(remembered)).reason == "replayed"
    forgotten = world.signed("play", play_body(), message_id="bulletin-0")
    assert accepted(world.send(forgotten))  # as after a restart: the store kept no more


def test_stop_ids_issued_in_the_same_millisecond_are_forgotten_as_the_store_forgets_them() -> None:
    world = World()
    for number in range(MAX_STOP_IDS + 3):  # one instant: ties broken by the id, as on disk
        world.send(world.signed("stop", {"target": f"b-{number:03d}"}))
    named = sorted(s for s in world.state.floors.streams if s.startswith(STOP_ID_STREAM))
    assert named == sorted(f"{STOP_ID_STREAM}b-{n:03d}" for n in range(3, MAX_STOP_IDS + 3))


def rotate(
    world: World, version: int, keys: list[dict[str, object]], *signers: SigningKey
) -> list[Effect]:
    payload = trust_payload(version, keys, env="prod", iat=world.utc)
    return world.send(sign_trust(payload, signers), topic=TRUST_TOPIC)


def test_key_rotation_removes_a_stolen_operator_key() -> None:
    world = World()
    stolen = world.operator
    fresh = SigningKey.generate("op-2027")
    roots = world.roots
    keys = [
        key_entry(fresh, ["operator"]),
        key_entry(world.emergency, ["emergency"]),
        *(key_entry(r, ["root"]) for r in roots),
    ]
    v1 = trust_payload(1, [key_entry(stolen, ["operator"]), *keys[1:]], env="prod", iat=world.utc)
    v1_signed = sign_trust(v1, roots[:2])
    effects = world.send(v1_signed, topic=TRUST_TOPIC)
    assert isinstance(effects[0], PersistTrust) and effects[0].version == 1
    effects = rotate(world, 2, keys, roots[0], roots[2])  # 2 of 3 roots
    assert accepted(effects)
    assert any(isinstance(e, PublishState) and e.fields["trust_version"] == 2 for e in effects)
    assert world.state.floors.keyring.version == 2

    stolen_cmd = world.signed("volume", {"level": 99}, stolen)
    assert only_rejection(world.send(stolen_cmd)).reason == "unknown_key"
    assert accepted(world.send(world.signed("volume", {"level": 30}, fresh)))
    assert only_rejection(world.send(v1_signed, topic=TRUST_TOPIC)).reason == "stale_version"


def test_trust_documents_need_the_root_threshold_of_old_and_new_keys() -> None:
    world = World()
    roots = world.roots
    same = [key_entry(world.operator, ["operator"]), *(key_entry(r, ["root"]) for r in roots)]
    before = world.state
    assert only_rejection(rotate(world, 2, same, roots[0])).reason == "not_authorized"
    assert only_rejection(rotate(world, 2, same, world.operator)).reason == "not_authorized"
    usurper = [SigningKey.generate(f"evil-{i}") for i in range(2)]
    takeover = [key_entry(k, ["root", "operator"]) for k in usurper]
    assert only_rejection(rotate(world, 3, takeover, roots[0], roots[1])).reason == (
        "not_authorized"
    )
    assert unchanged(world.state, before)


def test_an_operator_key_cannot_sign_a_trust_document() -> None:
    world = World()
    keys = [key_entry(world.operator, ["operator", "root"])]
    result = only_rejection(rotate(world, 2, keys, world.operator))
    assert result.reason == "not_authorized"


def test_trust_for_another_environment_or_expired_is_refused() -> None:
    world = World()
    roots = world.roots
    keys = [key_entry(r, ["root"]) for r in roots]
    lab = sign_trust(trust_payload(2, keys, env="lab", iat=world.utc), roots)
    assert only_rejection(world.send(lab, topic=TRUST_TOPIC)).reason == "wrong_env"
    old = sign_trust(trust_payload(2, keys, env="prod", iat=T0 - 40 * DAY), roots)
    assert only_rejection(world.send(old, topic=TRUST_TOPIC)).reason == "expired"


def test_the_same_trust_document_again_is_acknowledged_and_changes_nothing() -> None:
    world = World()
    keys = [key_entry(world.operator, ["operator"]), *(key_entry(r, ["root"]) for r in world.roots)]
    signed = sign_trust(trust_payload(4, keys, env="prod", iat=world.utc), world.roots)
    world.send(signed, topic=TRUST_TOPIC)
    state = world.state
    effects = world.send(signed, topic=TRUST_TOPIC)
    assert [(e.kind, e.detail) for e in emitted(effects)] == [
        ("accepted", "duplicate of the last accepted")
    ]
    assert unchanged(world.state, state)


def test_a_command_on_the_trust_topic_is_refused() -> None:
    world = World()
    raw = world.signed("volume", {"level": 1})
    assert only_rejection(world.send(raw, topic=TRUST_TOPIC)).reason == "bad_type"


def test_commands_before_ntp_wait_for_the_clock_and_a_stale_backlog_then_expires() -> None:
    world = World(utc_trusted=False)
    world.state = replace(
        world.state,
        booted_mono=world.mono,
        floors=replace(world.state.floors, time_floor=T0 - 3 * DAY),
    )
    world.utc = T0 - 5 * DAY  # the board's clock after a power cut, before NTP
    backlog = world.signed("volume", {"level": 11}, iat=T0 - 2 * DAY, ttl_s=7 * DAY)
    assert world.send(backlog) == []  # held, not judged by the old saved floor
    world.mono += 5.0
    world.utc, world.utc_trusted = T0, True  # NTP answers
    from receiver.core.events import TimerFired

    effects = world.feed(TimerFired())
    assert [e.reason for e in emitted(effects, "rejected")] == ["expired"]
    assert world.state.volume == 70


def test_held_commands_are_judged_without_a_clock_once_the_grace_ends() -> None:
    world = World(utc_trusted=False)
    world.state = replace(
        world.state, booted_mono=world.mono, floors=replace(world.state.floors, time_floor=T0 - 60)
    )
    world.utc = 0.0
    assert world.send(world.signed("volume", {"level": 12}, iat=T0)) == []
    assert world.deadline == world.mono + 30.0
    effects = world.advance(30.0)
    assert emitted(effects, "accepted") and world.state.volume == 12


def test_one_far_future_iat_cannot_push_the_floor_past_every_later_command() -> None:
    world = World(utc_trusted=False)
    world.state = replace(world.state, floors=replace(world.state.floors, time_floor=T0))
    world.utc = 0.0
    world.send(world.signed("volume", {"level": 1}, iat=T0 + 365 * DAY, ttl_s=400 * DAY))
    assert world.state.floors.time_floor == T0 + 300  # moved at most the allowed skew
    assert emitted(world.send(world.signed("volume", {"level": 2}, iat=T0 + 60)), "accepted")


def test_a_file_larger_than_the_local_limit_is_refused_before_it_is_accepted() -> None:
    world = World()
    body = play_body()
    body["source"]["files"][0]["size"] = 300 * 1024 * 1024
    assert only_rejection(world.send(world.signed("play", body))).reason == "too_large"


def test_after_a_reset_every_command_issued_before_it_is_refused_even_a_moment_before() -> None:
    """docs/security.md "After losing state": a command captured a moment before the reset (still
    within ``max_skew_s``, not expired) must not play again on the reset device."""
    world = World(utc_trusted=False)
    world.state = replace(world.state, floors=replace(world.state.floors, reset_floor=None))
    captured = world.signed("play", play_body(), iat=T0 - 5)  # 5 s before the first sync
    world.utc_trusted = True
    world.advance(1.0)
    rejection = only_rejection(world.send(captured)[1:])  # after the PersistResetFloor
    assert rejection.reason == "replayed"
    assert "2027-01-15T08:00:01" in (rejection.detail or "")  # says from when it takes commands
    assert not world.state.playback.items()


def test_a_lagging_operator_clock_is_served_once_it_passes_the_reset_instant() -> None:
    """The price of refusing everything issued before the reset instant T0: an operator whose
    clock lags by L seconds is refused for the first L seconds after T0, with a detail that
    names T0; a command signed again once the lagging clock has passed T0 is accepted."""
    lag = 40.0
    world = World(utc_trusted=False)
    world.state = replace(world.state, floors=replace(world.state.floors, reset_floor=None))
    world.utc_trusted = True
    world.advance(1.0)  # T0 = T0 + 1 by the device's synchronised clock
    world.feed(TimerFired())
    first = world.signed("volume", {"level": 20}, iat=world.utc - lag)
    rejection = only_rejection(world.send(first))
    assert (rejection.reason, world.state.volume) == ("replayed", 70)
    world.advance(lag)  # the lagging clock now reads just past T0: sign again, send again
    again = world.signed("volume", {"level": 20}, iat=world.utc - lag + 0.5)
    assert accepted(world.send(again))
    assert world.state.volume == 20


def test_a_fresh_store_takes_its_reset_instant_before_the_first_state_says_online() -> None:
    """An operator who sees the first state of a freshly reset device and signs a command then
    must be served: the reset instant is fixed at boot, before that state is published, and
    to the millisecond the wire carries (``iat`` has millisecond precision)."""
    world = World()
    world.state = replace(world.state, floors=replace(world.state.floors, reset_floor=None))
    world.utc = T0 + 0.9164  # a boot instant between two milliseconds
    result = machine.boot(world.state, world.now)
    kinds = [type(effect).__name__ for effect in result.effects]
    assert kinds.index("PersistResetFloor") < kinds.index("PublishState")
    assert result.state.floors.reset_floor == T0 + 0.916
    world.state = result.state
    same_millisecond = world.signed("volume", {"level": 20}, iat=T0 + 0.916)
    assert accepted(world.send(same_millisecond))
