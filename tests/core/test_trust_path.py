"""The trust path under attack: what a security review of it found, each pinned by a test.

Each test names the hole it closes; docs/security.md says what holds and why.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest

from receiver.central.signing import (
    key_entry,
    sign_trust,
    trust_payload,
)
from receiver.core import trust
from receiver.core.effects import Effect
from receiver.core.trust import Key, Keyring
from receiver.timefmt import rfc3339
from tests.core.harness import (
    TRUST_TOPIC,
    World,
    emitted,
    only_rejection,
    play_body,
    unchanged,
)

HOUR = 3600.0


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
