"""The core with a fake clock: acceptance, each rejection, relay timing, stop, volume."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import replace

import pytest

from receiver.central.signing import SigningKey, sign, sign_command
from receiver.core import reasons
from receiver.core.effects import Fetch, PersistFloors, Play, PublishState, SetVolume, StopPlayback
from receiver.core.events import FetchFailed, FetchFinished, PlaybackEnded, PlaybackStarted
from receiver.core.state import state_fields
from receiver.core.trust import Key
from tests.core.harness import (
    DEVICE,
    SHA,
    World,
    emitted,
    only_rejection,
    persisted,
    play_body,
    plays,
    relay_switches,
    trusted_key,
    unchanged,
)


def test_a_signed_play_fetches_warms_up_plays_and_powers_down_after_the_tail() -> None:
    world = World()
    effects = world.send(world.signed("play", play_body()))
    assert [type(e) for e in effects][:2] == [PersistFloors, type(emitted(effects)[0])]
    assert emitted(effects, "accepted")[0].ref == f"c{world.seq}"
    assert [e for e in effects if isinstance(e, Fetch)] == [
        Fetch("https://media.example/a.mp3", SHA, 1000)
    ]
    assert not plays(effects) and not relay_switches(effects)

    effects = world.feed(FetchFinished(SHA, "/cache/" + SHA))
    assert relay_switches(effects) == [True]  # the amplifier warms up first
    assert not plays(effects)
    assert world.advance(0.5) == []
    effects = world.advance(0.6)
    assert plays(effects) == [Play(1, "/cache/" + SHA, 70)]

    effects = world.feed(PlaybackStarted(1))
    assert [e.kind for e in emitted(effects)] == ["started"]
    assert any(isinstance(e, PublishState) and e.fields["state"] == "playing" for e in effects)

    effects = world.feed(PlaybackEnded(1))
    assert [e.kind for e in emitted(effects)] == ["finished"]
    assert relay_switches(effects) == []  # the tail keeps the amplifier on a little longer
    assert relay_switches(world.advance(4.9)) == []
    assert relay_switches(world.advance(0.2)) == [False]
    assert world.deadline is None


def test_relay_stays_on_for_a_second_item_within_the_tail() -> None:
    world = World()
    world.send(world.signed("play", play_body()))
    world.feed(FetchFinished(SHA, "/c/a"))
    world.advance(1.0)
    world.feed(PlaybackStarted(1))
    world.feed(PlaybackEnded(1))
    world.advance(2.0)
    effects = world.send(world.signed("play", play_body(sha="b" * 64)))
    effects += world.feed(FetchFinished("b" * 64, "/c/b"))
    assert relay_switches(effects) == []
    assert plays(effects) == [Play(2, "/c/b", 70)]  # no warm-up needed: the amp is on


def test_files_play_in_order_and_repeat() -> None:
    world = World()
    body = play_body(repeat=2)
    body["source"]["files"].append(
        {"url": "https://media.example/b.mp3", "sha256": "b" * 64, "size": 5}
    )
    world.send(world.signed("play", body))
    world.feed(FetchFinished("b" * 64, "/c/b"))
    world.feed(FetchFinished(SHA, "/c/a"))
    media = [p.media for p in plays(world.advance(1.0))]
    for token in range(1, 4):
        world.feed(PlaybackStarted(token))
        media += [p.media for p in plays(world.feed(PlaybackEnded(token)))]
    assert media == ["/c/a", "/c/b", "/c/a", "/c/b"]
    assert [e.kind for e in emitted(world.feed(PlaybackEnded(4)))] == ["finished"]
    assert len(emitted(world.effects, "started")) == 1


def test_max_duration_stops_the_item() -> None:
    world = World()
    world.send(world.signed("play", play_body(max_duration_s=30)))
    world.feed(FetchFinished(SHA, "/c/a"))
    world.advance(1.0)
    world.feed(PlaybackStarted(1))
    effects = world.advance(30.0)
    assert StopPlayback() in effects
    assert [(e.kind, e.detail) for e in emitted(effects)] == [("stopped", "max_duration_s reached")]


def test_stop_all_stops_and_reports() -> None:
    world = World()
    world.send(world.signed("play", play_body()))
    play_ref = f"c{world.seq}"
    world.feed(FetchFinished(SHA, "/c/a"))
    world.advance(1.0)
    world.feed(PlaybackStarted(1))
    effects = world.send(world.signed("stop", {"target": "all"}))
    assert StopPlayback() in effects
    assert [(e.kind, e.ref) for e in emitted(effects)][1] == ("stopped", play_ref)
    assert world.feed(PlaybackEnded(1)) == []  # a late end of the stopped item changes nothing
    assert relay_switches(world.advance(5.1)) == [False]


def test_stop_of_another_id_leaves_playback_alone() -> None:
    world = World()
    world.send(world.signed("play", play_body()))
    world.feed(FetchFinished(SHA, "/c/a"))
    world.advance(1.0)
    effects = world.send(world.signed("stop", {"target": "c-other"}))
    assert StopPlayback() not in effects
    assert world.state.playback.active is not None


def test_volume_is_capped_and_applied_live() -> None:
    world = World(max_volume=80)
    world.send(world.signed("play", play_body()))
    world.feed(FetchFinished(SHA, "/c/a"))
    world.advance(1.0)
    effects = world.send(world.signed("volume", {"level": 95}))
    assert SetVolume(80) in effects
    assert world.state.volume == 80
    world.feed(PlaybackEnded(1))
    world.send(world.signed("play", play_body(volume=100)))
    assert plays(world.feed(FetchFinished(SHA, "/c/a"))) == [Play(2, "/c/a", 80)]


def test_download_failure_is_reported_and_nothing_plays() -> None:
    world = World()
    world.send(world.signed("play", play_body()))
    effects = world.feed(FetchFailed(SHA, reasons.DOWNLOAD_FAILED, "HTTP 404"))
    assert [(e.kind, e.reason, e.detail) for e in emitted(effects)] == [
        ("failed", "download_failed", "HTTP 404")
    ]
    assert not plays(world.effects) and relay_switches(world.effects) == []


def test_an_exact_duplicate_is_acknowledged_and_does_nothing() -> None:
    world = World()
    raw = world.signed("play", play_body())
    world.send(raw)
    effects = world.send(raw)
    assert [(e.kind, e.detail) for e in emitted(effects)] == [
        ("accepted", "duplicate of the last accepted")
    ]
    assert len(effects) == 1


def test_the_replay_floor_survives_a_restart() -> None:
    world = World()
    old = world.signed("volume", {"level": 10})
    newer = world.signed("volume", {"level": 20})
    world.send(old)
    world.send(newer)
    floors = persisted(world.effects)[-1]
    restarted = World(operator=world.operator, emergency=world.emergency)
    restored = replace(world.state.floors, streams=floors.floors)
    restarted.state = replace(world.state, floors=restored, volume=70)
    assert only_rejection(restarted.send(old)).reason == "replayed"
    assert restarted.state.volume == 70


def _resigned_envelope(world: World, mutate: Callable[[dict[str, object]], object]) -> bytes:
    env = json.loads(world.signed("volume", {"level": 10}))
    mutate(env)
    return json.dumps(env).encode()


stranger = SigningKey.generate("op-1")  # claims a trusted key id
stranger_other = SigningKey.generate("nobody")

REJECTIONS: list[tuple[str, Callable[[World], bytes], str]] = [
    ("too large", lambda w: b" " * 17000, "too_large"),
    ("not json", lambda w: b"{nope", "malformed"),
    ("duplicate keys", lambda w: b'{"payloadType":"a","payloadType":"b"}', "malformed"),
    ("invalid utf-8", lambda w: b'{"payloadType":"\xff"}', "malformed"),
    ("NaN", lambda w: b'{"x":NaN}', "malformed"),
    ("deep", lambda w: b"[" * 5000 + b"]" * 5000, "malformed"),
    ("huge integer", lambda w: b'{"x":' + b"9" * 400 + b"}", "malformed"),
    (
        "unknown payload type",
        lambda w: _resigned_envelope(w, lambda e: e.update(payloadType="text/plain")),
        "bad_type",
    ),
    (
        "schedule type on a command topic",
        lambda w: sign("application/vnd.loa.schedule.v1+json", b"{}", [w.operator]),
        "bad_type",
    ),
    ("unsigned", lambda w: _resigned_envelope(w, lambda e: e.update(signatures=[])), "unsigned"),
    (
        "signatures missing",
        lambda w: _resigned_envelope(w, lambda e: e.pop("signatures")),
        "unsigned",
    ),
    (
        "short signature",
        lambda w: _resigned_envelope(
            w, lambda e: e.update(signatures=[{"keyid": "op-1", "sig": "AAAA"}])
        ),
        "bad_signature",
    ),
    (
        "stranger using a trusted keyid",
        lambda w: w.signed("volume", {"level": 1}, stranger),
        "bad_signature",
    ),
    ("unknown key", lambda w: w.signed("volume", {"level": 1}, stranger_other), "unknown_key"),
    (
        "operator signs an emergency play",
        lambda w: w.signed("play", play_body(priority="emergency")),
        "not_authorized",
    ),
    (
        "emergency key signs a volume change",
        lambda w: w.signed("volume", {"level": 1}, w.emergency),
        "not_authorized",
    ),
    (
        "operator signs a trust document",
        lambda w: sign("application/vnd.loa.trust.v1+json", b"{}", [w.operator]),
        "bad_type",
    ),
    ("other environment", lambda w: w.signed("volume", {"level": 1}, env="lab"), "wrong_env"),
    (
        "other device",
        lambda w: w.signed("volume", {"level": 1}, aud=["dev:dev-002"]),
        "not_for_me",
    ),
    (
        "other commune",
        lambda w: w.signed("volume", {"level": 1}, aud=["grp:commune-25-00001"]),
        "not_for_me",
    ),
    ("expired", lambda w: w.signed("volume", {"level": 1}, iat=w.utc - 3600), "expired"),
    (
        "issued in the future",
        lambda w: w.signed("volume", {"level": 1}, iat=w.utc + 3600),
        "not_yet_valid",
    ),
    ("bad body", lambda w: w.signed("volume", {"level": 101}), "bad_body"),
    ("unknown command", lambda w: w.signed("reboot", {}), "bad_body"),
    (
        "unknown body field",
        lambda w: w.signed("volume", {"level": 1, "shell": "rm -rf /"}),
        "bad_body",
    ),
    (
        "file: url",
        lambda w: w.signed("play", play_body(url="file:///etc/shadow")),
        "bad_body",
    ),
    (
        "host not allowed",
        lambda w: w.signed("play", play_body(url="https://evil.example/a.mp3")),
        "policy",
    ),
    (
        "scheme not allowed",
        lambda w: w.signed("play", play_body(url="http://media.example/a.mp3")),
        "policy",
    ),
    (
        "relay on without a duration",
        lambda w: w.signed("relay", {"name": "amp", "state": "on"}),
        "bad_body",
    ),
]


@pytest.mark.parametrize(
    ("make", "reason"), [(m, r) for _, m, r in REJECTIONS], ids=[n for n, _, _ in REJECTIONS]
)
def test_each_rejection_has_its_reason_and_changes_nothing(
    make: Callable[[World], bytes], reason: str
) -> None:
    world = World()
    before = world.state
    rejection = only_rejection(world.send(make(world)))
    assert rejection.reason == reason
    assert unchanged(world.state, before)


def test_a_retained_command_is_never_acted_on() -> None:
    world = World()
    rejection = only_rejection(world.send(world.signed("volume", {"level": 5}), retained=True))
    assert rejection.reason == "policy"


def test_a_key_scoped_to_another_commune_is_not_authorized_here() -> None:
    other = SigningKey.generate("op-other")
    world = World(extra_keys=(trusted_key(other, ["operator"], ["commune-25-99999"]),))
    raw = world.signed("volume", {"level": 1}, other)
    assert only_rejection(world.send(raw)).reason == "not_authorized"


def test_a_key_scoped_to_this_group_or_device_is_authorized() -> None:
    by_group = SigningKey.generate("op-group")
    by_device = SigningKey.generate("op-dev")
    world = World(
        extra_keys=(
            trusted_key(by_group, ["operator"], ["commune-25-07873"]),
            trusted_key(by_device, ["operator"], [DEVICE]),
        )
    )
    for key in (by_group, by_device):
        effects = world.send(world.signed("volume", {"level": 3}, key))
        assert emitted(effects, "accepted"), effects


def test_an_expired_key_acts_no_more() -> None:
    old = SigningKey.generate("op-old")
    expired = Key("op-old", trusted_key(old, []).public, frozenset({"operator"}), frozenset("*"))
    expired = Key(expired.id, expired.public, expired.roles, frozenset({"*"}), not_after=1.0)
    world = World(extra_keys=(expired,))
    assert only_rejection(world.send(world.signed("volume", {"level": 1}, old))).reason == (
        "not_authorized"
    )


def test_without_trusted_time_expiry_is_judged_by_the_floor_and_start_at_is_refused() -> None:
    world = World(utc_trusted=False)
    world.utc = 0.0  # the board booted without a clock
    world.state = replace(
        world.state, floors=replace(world.state.floors, time_floor=1_800_000_000.0)
    )
    old = world.signed("volume", {"level": 1}, iat=1_799_990_000.0)
    assert only_rejection(world.send(old)).reason == "expired"
    fresh = world.signed("volume", {"level": 2}, iat=1_800_000_100.0)
    assert emitted(world.send(fresh), "accepted")
    assert world.state.floors.time_floor == 1_800_000_100.0
    timed = world.signed("play", play_body(start_at="2027-01-15T08:00:00Z"), iat=1_800_000_200.0)
    assert only_rejection(world.send(timed)).reason == "clock_untrusted"


def test_a_payload_flip_breaks_the_signature() -> None:
    world = World()
    env = json.loads(world.signed("volume", {"level": 10}))
    body = bytearray(base64.b64decode(env["payload"]))
    body[10] ^= 0x01
    env["payload"] = base64.b64encode(bytes(body)).decode()
    assert only_rejection(world.send(json.dumps(env).encode())).reason == "bad_signature"


def test_one_key_listed_twice_counts_once_toward_a_threshold() -> None:
    world = World()
    keyring = world.state.floors.keyring
    stricter = type(keyring)(keyring.keys, {"operator": 2, "emergency": 1, "root": 2})
    world.state = replace(world.state, floors=replace(world.state.floors, keyring=stricter))
    payload = world.payload("volume", {"level": 9})
    raw = sign_command(payload, [world.operator, world.operator])
    assert only_rejection(world.send(raw)).reason == "not_authorized"


def test_a_flood_of_rejections_is_reported_one_by_one_up_to_a_limit_then_summed_up() -> None:
    world = World()
    reported = [e for _ in range(150) for e in emitted(world.send(b"junk"))]
    assert len(reported) == 100 and {e.reason for e in reported} == {"malformed"}
    effects = world.advance(10.0)
    (summary,) = emitted(effects, "fault")
    assert summary.detail == (
        "50 more messages rejected within 10 s, not reported one by one: malformed 50"
    )
    assert [e.kind for e in emitted(world.send(b"junk"))] == ["rejected"]  # a new window
    assert emitted(world.send(world.signed("volume", {"level": 33})), "accepted")


def test_the_core_reads_the_host_allowlist_as_the_fetcher_does() -> None:
    # An entry with the scheme's default port allows a URL that does not spell the port out;
    # an IPv6 entry is written in brackets.
    world = World()
    allowed = ("media.example:443", "[2001:db8::1]:8443")
    world.state = replace(
        world.state, settings=replace(world.state.settings, allowed_hosts=allowed)
    )
    assert emitted(world.send(world.signed("play", play_body())), "accepted")
    ipv6 = play_body(url="https://[2001:db8::1]:8443/a.mp3", sha="c" * 64)
    assert emitted(world.send(world.signed("play", ipv6)), "accepted")
    elsewhere = play_body(url="https://media.example:8443/a.mp3", sha="d" * 64)
    assert only_rejection(world.send(world.signed("play", elsewhere))).reason == "policy"


def test_the_state_says_the_level_applied_now_and_accepted_says_when_one_was_clamped() -> None:
    world = World(max_volume=80)
    assert state_fields(world.state)["volume"] == 70  # the default, within the cap
    effects = world.send(world.signed("play", play_body(volume=100)))
    assert [e.detail for e in emitted(effects, "accepted")] == [
        "play; volume 100 clamped to 80 (max_volume)"
    ]
    world.feed(FetchFinished(SHA, "/c/a"))
    world.advance(1.0)
    world.feed(PlaybackStarted(1))
    assert state_fields(world.state)["volume"] == 80  # what the speaker gets, not the default
    world.feed(PlaybackEnded(1))
    assert state_fields(world.state)["volume"] == 70

    # An emergency plays at the emergency level (100 here), above the normal cap.
    world.send(world.signed("play", play_body("emergency"), world.emergency))
    world.feed(FetchFinished(SHA, "/c/a"))
    world.advance(1.0)
    world.feed(PlaybackStarted(2))
    assert state_fields(world.state)["volume"] == 100
    effects = world.send(world.signed("volume", {"level": 95}))
    assert [e.detail for e in emitted(effects, "accepted")] == [
        "volume; level 95 clamped to 80 (max_volume)"
    ]
    assert state_fields(world.state)["volume"] == 100  # the emergency keeps its level
    world.feed(PlaybackEnded(2))
    assert state_fields(world.state)["volume"] == 80

    effects = world.send(world.signed("volume", {"level": 40}))
    assert [e.detail for e in emitted(effects, "accepted")] == ["volume"]
