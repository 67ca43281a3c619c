"""Property-based tests: no byte of a signed message can change without rejection, and no
input, however malformed, makes the core raise or act."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.central.signing import sign, sign_command
from tests.core.harness import World, emitted, only_rejection, play_body, unchanged

WORLD = World()  # keys are costly to make; each example gets a fresh state from it
SIGNED = WORLD.signed("play", play_body())
INITIAL = WORLD.state

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


def fresh_world() -> World:
    WORLD.state = INITIAL
    WORLD.effects.clear()
    return WORLD


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(min_value=0, max_value=len(SIGNED) - 1), mask=st.integers(1, 255))
def test_any_single_byte_change_is_rejected_and_changes_nothing(position: int, mask: int) -> None:
    world = fresh_world()
    tampered = bytearray(SIGNED)
    tampered[position] ^= mask
    only_rejection(world.send(bytes(tampered)))
    assert unchanged(world.state, INITIAL)


def test_every_position_of_the_payload_type_and_payload_is_covered_exhaustively() -> None:
    # Hypothesis samples; this walks every byte once with one flip, so no position is missed.
    for position in range(len(SIGNED)):
        world = fresh_world()
        tampered = bytearray(SIGNED)
        tampered[position] ^= 0x01
        only_rejection(world.send(bytes(tampered)))
        assert unchanged(world.state, INITIAL), position


@settings(max_examples=300)
@given(junk=st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise_and_never_act(junk: bytes) -> None:
    world = fresh_world()
    only_rejection(world.send(junk))


@settings(max_examples=300)
@given(envelope=json_values)
def test_arbitrary_json_envelopes_never_raise_and_never_act(envelope: Any) -> None:
    world = fresh_world()
    only_rejection(world.send(json.dumps(envelope).encode()))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(body=json_values, kind=st.sampled_from(["play", "stop", "volume", "relay", "report", "x"]))
def test_validly_signed_junk_bodies_never_raise(body: Any, kind: str) -> None:
    world = fresh_world()
    raw = sign_command(world.payload(kind, body), [world.operator])
    effects = world.send(raw)
    kinds = [e.kind for e in emitted(effects)]
    assert kinds[:1] in (["rejected"], ["accepted"])


@settings(max_examples=200)
@given(payload=json_values)
def test_validly_signed_junk_payloads_are_rejected(payload: Any) -> None:
    world = fresh_world()

    raw = sign(
        "application/vnd.loa.command.v1+json", json.dumps(payload).encode(), [world.operator]
    )
    only_rejection(world.send(raw))
