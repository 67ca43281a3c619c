"""The trust path under attack: each hole a review of it found, pinned by a test that failed
before its fix. The docstrings say what an attacker (or a mistake) could do before; the docs
(protocol.md, security.md) say what holds now and why.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from receiver.assembly import restore_state
from receiver.central.signing import (
    SigningKey,
    key_entry,
    schedule_payload,
    sign_schedule,
    sign_trust,
    trust_payload,
)
from receiver.config import parse_config
from receiver.core import trust
from receiver.core.effects import (
    Effect,
    PersistSchedule,
    PersistTrust,
    PublishState,
    StopPlayback,
)
from receiver.core.events import MessageReceived, TimerFired
from receiver.core.trust import Key, Keyring
from receiver.store import Store
from receiver.timefmt import rfc3339
from tests.core.harness import (
    DEVICE,
    GROUPS,
    T0,
    TRUST_TOPIC,
    World,
    emitted,
    only_rejection,
    play_body,
    trusted_key,
    unchanged,
)
from tests.core.sim import Sim
from tests.core.test_intents import Disk, restart
from tests.core.test_schedules import GROUP, MONDAY, SHA_E, WEEKDAYS, entry, starts

HOUR = 3600.0
DAY = 86400.0
SCHEDULE_TOPIC = f"loa/v1/grp/{GROUP}/schedule"
MAX_VERSION = 2**63 - 1


def accepted(effects: list[Effect]) -> bool:
    return bool(emitted(effects, "accepted"))


# --- local limits ------------------------------------------------------------------------------


def test_a_start_at_in_the_past_does_not_slip_a_play_into_the_quiet_hours() -> None:
    """A past ``start_at`` starts at once: the quiet hours are judged at that real start, not at
    the instant the message names (which a stolen operator key would pick outside them)."""
    world = World()
    # T0 is 15:00 in Ho Chi Minh City; quiet from 14:00 to 16:00.
    world.state = replace(
        world.state, settings=replace(world.state.settings, quiet_hours=((14 * 60, 16 * 60),))
    )
    before_quiet = rfc3339(world.utc - 2 * HOUR)  # 13:00, outside the quiet hours, past
    raw = world.signed("play", play_body(start_at=before_quiet))
    assert only_rejection(world.send(raw)).reason == "policy"
    after_quiet = rfc3339(world.utc + 2 * HOUR)  # 17:00: a future start outside them is fine
    assert accepted(world.send(world.signed("play", play_body(start_at=after_quiet))))


# --- floors a single signed message can move --------------------------------------------------


def test_a_clock_set_back_during_a_long_run_cannot_revive_a_message_it_has_outlived() -> None:
    """The synchronised clock raised the time floor only in the store (hourly), never in the
    running core, where only accepted commands moved it: a board up for a month without a
    command, whose NTP was then spoofed three weeks back (still "synchronised"), judged a
    command captured three weeks ago, never delivered, as fresh, and acted on it."""
    world = World()
    month_ago = world.utc - 30 * DAY  # the floor the store gave the core at start-up
    floors = replace(world.state.floors, time_floor=month_ago, reset_floor=month_ago - 365 * DAY)
    world.state = replace(world.state, floors=floors)
    captured = world.signed("volume", {"level": 99}, iat=world.utc - 21 * DAY)
    world.feed(TimerFired())  # the running board, its clock synchronised and right
    world.advance(60)
    world.utc -= 21 * DAY  # NTP spoofed three weeks back; the kernel still says synchronised
    assert only_rejection(world.send(captured)).reason == "expired"
    assert world.state.volume != 99


def test_one_stop_with_a_far_future_iat_cannot_bar_every_later_play() -> None:
    """Without a synchronised clock a command's ``iat`` is not checked against the wall clock.
    The time floor already moves at most ``max_skew_s`` for one command; the floor a stop of
    everything raises did not: one stop dated years ahead (an operator's clock gone wrong, or a
    stolen operator or emergency key while NTP is blocked) refused every later play as
    ``replayed``, for good, whatever key signed it, even after the key was rotated out."""
    world = World(utc_trusted=False)
    world.state = replace(world.state, floors=replace(world.state.floors, time_floor=T0))
    world.utc = 0.0
    stop = world.signed("stop", {"target": "all"}, iat=T0 + 10 * 365 * DAY, ttl_s=400 * DAY)
    assert accepted(world.send(stop))
    assert world.state.floors.streams["stop:all"][0] == (T0 + 300) * 1000  # as the time floor
    # A play issued before the stop's bounded instant is still barred, one after it is not.
    assert only_rejection(world.send(world.signed("play", play_body(), iat=T0 + 60))).reason == (
        "replayed"
    )
    assert accepted(world.send(world.signed("play", play_body(), iat=T0 + 301)))


def test_a_stop_signed_by_both_roles_cannot_be_replayed_with_one_signature_stripped() -> None:
    """A stop signed by an operator key and an emergency key moved only the operator key's
    floor (the operator authorised it); the same envelope with the operator's signature cut out
    was then new to the emergency key's stream, so it was accepted and acted a second time:
    here it stopped a play sent after it. Every verified signer that may sign commands for the
    device now has its floor checked and moved."""
    world = World()
    stop = world.signed("stop", {"target": "all"}, world.operator, world.emergency)
    assert accepted(world.send(stop))
    world.advance(10)
    play = world.signed("play", play_body())
    assert accepted(world.send(play))
    stripped = json.loads(stop)
    stripped["signatures"] = stripped["signatures"][1:]  # the emergency key's alone
    effects = world.send(json.dumps(stripped).encode("utf-8"))
    assert [(e.kind, e.detail) for e in emitted(effects)] == [
        ("accepted", "duplicate of the last accepted")
    ]
    assert not emitted(effects, "stopped")
    assert [item.ref for item in world.state.playback.items()] == [
        json.loads(base64.b64decode(json.loads(play)["payload"]))["id"]
    ]


def test_a_play_carried_out_after_a_restart_keeps_no_more_than_its_own_window() -> None:
    """A play accepted while the wall clock was unsynchronised and days ahead was stored with
    its window's end by that clock; after a restart with the right time it was carried out with
    a window days long, in which it could still sound (resume after a long emergency, say)."""
    world = World(utc_trusted=False)
    world.utc = T0 + 10 * DAY  # an unsynchronised clock, ten days ahead
    effects = world.send(world.signed("play", play_body(), iat=T0))
    assert accepted(effects)
    disk = Disk().apply(effects)  # then a crash, before it sounded
    world.utc = T0  # the restart comes with the right time
    again = restart(world, disk)
    assert [(e.kind, e.detail) for e in emitted(again.effects, "accepted")] == [
        ("accepted", "play, carried out after a restart")
    ]
    (item,) = again.state.playback.items()
    assert item.window_end_mono - again.mono <= 600  # its max_duration_s, not ten days


# --- the cost of a forgery ---------------------------------------------------------------------


def forged(world: World, keyids: list[str]) -> bytes:
    """A command envelope whose signatures name known keys but are random bytes."""
    good = json.loads(world.signed("volume", {"level": 10}))
    good["signatures"] = [
        {"keyid": keyid, "sig": base64.b64encode(bytes([n]) * 64).decode("ascii")}
        for n, keyid in enumerate(keyids, start=1)
    ]
    return json.dumps(good).encode("utf-8")


def count_verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = Key.verifies

    def counting(self: Key, message: bytes, signature: bytes) -> bool:
        calls.append(self.id)
        return original(self, message, signature)

    monkeypatch.setattr(Key, "verifies", counting)
    return calls


def test_a_forgery_costs_one_verification_per_distinct_key_not_per_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Eight entries naming the operator key made the device run eight Ed25519 verifications
    for one unsigned message: a flood of such forgeries cost it eight times what the flood
    analysis counts (docs/security.md, Floods)."""
    world = World()
    calls = count_verifications(monkeypatch)
    assert only_rejection(world.send(forged(world, [world.operator.id] * 8))).reason == (
        "bad_signature"
    )
    assert calls == [world.operator.id]


def test_a_command_is_verified_only_against_keys_that_may_sign_commands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A forgery naming every root key as well costs no verification for those: a root key's
    signature counts for nothing on a command, so it is refused as ``not_authorized`` without
    Ed25519 work, and a command naming root keys and the operator key is checked against the
    operator key alone."""
    world = World()
    calls = count_verifications(monkeypatch)
    roots = [root.id for root in world.roots]
    assert only_rejection(world.send(forged(world, roots))).reason == "not_authorized"
    assert calls == []
    assert only_rejection(world.send(forged(world, [*roots, world.operator.id]))).reason == (
        "bad_signature"
    )
    assert calls == [world.operator.id]
    # A real command signed by a root key and the operator key is accepted as before.
    assert accepted(
        world.send(world.signed("volume", {"level": 20}, world.roots[0], world.operator))
    )


# --- trust documents ---------------------------------------------------------------------------


def test_a_trust_document_with_a_list_for_a_role_is_refused_not_a_crash() -> None:
    world = World()
    keys: list[dict[str, Any]] = [key_entry(root, ["root"]) for root in world.roots]
    keys[0] = {**keys[0], "roles": [["root"]]}
    before = world.state
    raw = sign_trust(trust_payload(2, keys, env="prod", iat=world.utc), world.roots)
    assert only_rejection(world.send(raw, topic=TRUST_TOPIC)).reason == "bad_body"
    assert unchanged(world.state, before)


def test_a_keyring_without_a_root_threshold_asks_for_the_default_two() -> None:
    """A role missing from a keyring's thresholds falls back to the documented default (root 2),
    never to 1, whoever built the keyring."""
    key = Key("k", bytes(32), frozenset({"root"}), frozenset({"*"}))
    assert Keyring((key,), thresholds={"operator": 1}).threshold("root") == 2
    assert Keyring((key,), thresholds={}).threshold("emergency") == 1
    assert trust.DEFAULT_THRESHOLDS["root"] == 2


# --- schedules across a rotation ---------------------------------------------------------------


def schedule_by(world: World, signer: SigningKey, sid: str, version: int, *entries: Any) -> bytes:
    payload = schedule_payload(
        sid, version, list(entries), env="prod", aud=[f"grp:{GROUP}"], iat=world.utc
    )
    return sign_schedule(payload, [signer])


def without(world: World, removed: SigningKey, fresh: SigningKey) -> bytes:
    """Trust version 2: the keyring without ``removed``, signed by two of the three roots."""
    keys = [
        key_entry(fresh, ["operator"]),
        key_entry(world.emergency, ["emergency"]),
        *(key_entry(root, ["root"]) for root in world.roots),
    ]
    return sign_trust(trust_payload(2, keys, env="prod", iat=world.utc), world.roots[:2])


def test_a_schedule_a_stolen_key_stored_does_not_outlive_the_rotation_that_removes_it() -> None:
    """Before, a programme stored with a stolen operator key (at the highest version, so that no
    later one could replace it) went on playing on every device after the rotation that removed
    the key, until each device's state directory was cleared by hand."""
    fresh = SigningKey.generate("op-2027")
    world = World(extra_keys=(trusted_key(fresh, ["operator"]),))
    world.utc = MONDAY + 5 * HOUR
    world.state = replace(
        world.state, floors=replace(world.state.floors, reset_floor=world.utc - 86400)
    )
    sim = Sim(world, file_seconds=1500, unfetchable={SHA_E})
    stolen = world.operator
    hijack = schedule_by(world, stolen, "sch-1", MAX_VERSION, entry("morning", WEEKDAYS, "05:30"))
    sim.feed(MessageReceived(SCHEDULE_TOPIC, hijack, True))
    kept = schedule_by(world, fresh, "sch-2", 1, entry("noon", WEEKDAYS, "12:00"))
    sim.feed(MessageReceived(SCHEDULE_TOPIC, kept, True))
    sim.run_until(MONDAY + 5.6 * HOUR)
    assert starts(sim) == ["Mon 05:30"]
    assert set(world.state.programme.schedules) == {"sch-1", "sch-2"}
    # One more, still fetching its file (staged) when the rotation comes.
    staged = schedule_by(world, stolen, "sch-3", 1, entry("evening", WEEKDAYS, "18:00", SHA_E))
    sim.feed(MessageReceived(SCHEDULE_TOPIC, staged, True))
    assert set(world.state.programme.staged) == {"sch-3"}

    effects = world.send(without(world, stolen, fresh), topic=TRUST_TOPIC)
    sim.handle(effects)
    events = [(e.kind, e.ref, e.reason) for e in emitted(effects)]
    assert ("accepted", "trust-v2", None) in events
    assert ("rejected", "sch-1", "not_authorized") in events
    assert ("rejected", "sch-3", "not_authorized") in events
    assert ("stopped", "sch-1/morning/2027-01-11", None) in events
    assert any(isinstance(e, StopPlayback) for e in effects)
    assert set(world.state.programme.schedules) == {"sch-2"}
    assert world.state.programme.staged == {}
    (state,) = [e for e in effects if isinstance(e, PublishState)][-1:]
    assert state.fields["trust_version"] == 2 and state.fields["schedules"] == {"sch-2": 1}
    # The thief's retained schedule, delivered again, is refused; nothing of it plays tomorrow.
    assert only_rejection(world.send(hijack, topic=SCHEDULE_TOPIC)).reason == "unknown_key"
    sim.run_until(MONDAY + 24 * HOUR + 6 * HOUR)
    assert "Tue 05:30" not in starts(sim) and "Mon 12:00" in starts(sim)
    # Its version stays the floor of its id: central programmes again under a new id.
    again = schedule_by(world, fresh, "sch-1", 5, entry("morning", WEEKDAYS, "05:30"))
    assert only_rejection(world.send(again, topic=SCHEDULE_TOPIC)).reason == "stale_version"


def test_a_rotation_that_keeps_the_signer_keeps_its_schedule() -> None:
    world = World()
    fresh = SigningKey.generate("op-2027")
    raw = schedule_by(world, world.operator, "sch-1", 1)
    assert accepted(world.send(raw, topic=SCHEDULE_TOPIC))
    keys = [
        key_entry(world.operator, ["operator"], [GROUP]),  # narrowed, still this device's
        key_entry(fresh, ["operator"]),
        *(key_entry(root, ["root"]) for root in world.roots),
    ]
    rotated = sign_trust(trust_payload(2, keys, env="prod", iat=world.utc), world.roots[:2])
    effects = world.send(rotated, topic=TRUST_TOPIC)
    assert [e.kind for e in emitted(effects)] == ["accepted"]
    assert set(world.state.programme.schedules) == {"sch-1"}


def test_after_a_restart_a_stored_schedule_is_judged_by_the_stored_keyring(
    tmp_path: Path,
) -> None:
    """The store keeps a schedule with its signatures: after a restart the keyring in force
    judges it again, so a rotation the device took before the restart still holds, and one
    stored bare by an earlier receiver is read back as before."""
    fresh = SigningKey.generate("op-2027")
    world = World(extra_keys=(trusted_key(fresh, ["operator"]),))
    stolen = world.operator
    config = parse_config(
        f"device_id: {DEVICE}\nenv: prod\ngroups: [{', '.join(GROUPS)}]\n"
        "broker:\n  host: broker.example\n"
        f"trust:\n  keys:\n    - id: {stolen.id}\n      ed25519: {stolen.public_b64}\n"
        "      roles: [operator]\n      scopes: ['*']\n"
        "media:\n  allowed_schemes: [https]\n  allowed_hosts: [media.example]\n",
        "tests/core/test_trust_path.py",
    )
    store = Store(tmp_path)
    for sid, signer in (("sch-1", stolen), ("sch-2", fresh), ("sch-3", stolen)):
        effects = world.send(schedule_by(world, signer, sid, 1), topic=SCHEDULE_TOPIC)
        (stored,) = [e for e in effects if isinstance(e, PersistSchedule)]
        body = stored.body
        if sid == "sch-3":  # as a receiver before this one stored it: the bare payload
            body = base64.b64decode(json.loads(body)["payload"])
        store.save_schedule(sid, stored.version, body, stored.digest)
    trust_effects = world.send(without(world, stolen, fresh), topic=TRUST_TOPIC)
    (persist,) = [e for e in trust_effects if isinstance(e, PersistTrust)]
    store.save_trust(persist.version, persist.body, persist.digest)
    restored = restore_state(config, store)
    store.close()
    assert restored.floors.keyring.version == 2
    assert set(restored.programme.schedules) == {"sch-2", "sch-3"}
    assert restored.floors.streams["schedule:sch-1"][0] == 1  # its version stays the floor
