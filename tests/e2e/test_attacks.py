"""Attacks on the real daemon, through a real Mosquitto, by someone who can publish anything.

Each attack asserts the rejection reason on the events topic *and* that nothing else happened:
no ``started`` event, no WAV written (or the WAV unchanged), no ``relay_switched`` on=True log
line beyond what the test itself caused, nothing new in the cache, no HTTP request where none
may be made, and the retained state (or keyring version) unchanged where that is the point.

One daemon is shared by many attacks where sharing cannot weaken them: every attack waits for
its own outcome before the next is sent, and the footprint is compared after each one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from receiver.central.signing import (
    SigningKey,
    command_payload,
    key_entry,
    sign,
    sign_command,
    sign_trust,
    trust_payload,
)
from receiver.core.envelope import COMMAND_TYPE, MAX_MESSAGE_BYTES, TRUST_TYPE
from tests.e2e.conftest import Site
from tests.lab.audio import dominant_of, trim_silence, wait_for_final_wav, write_tone
from tests.lab.broker import MosquittoBroker, Subscriber
from tests.lab.daemon import DEVICE, GROUP, Daemon, envelope, write_config
from tests.lab.web import MediaServer

Json = dict[str, Any]
KeySpec = tuple[SigningKey, list[str], list[str]]

OTHER_GROUP = "commune-other"
GROUP_TOPIC = f"loa/v1/grp/{GROUP}/cmd"
TRUST_TOPIC = "loa/v1/trust"
OUTCOMES = ("accepted", "rejected")
MAX_LOG_LINE_CHARS = 4096
# Characters that must never appear raw in a log line, nor inside a decoded log value: C0 and
# C1 controls, DEL, line/paragraph separators, bidi embeddings/overrides/isolates, BOM.
UNSAFE_IN_LOG = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")
JOURNALD_LINE = re.compile(r"<([0-7])>(\{.*\})")


# --- building messages ---------------------------------------------------------------------

_last_seq = [0]


def fresh_seq() -> int:
    """A command seq above every one used before in this process (the signer's ms clock)."""
    _last_seq[0] = max(_last_seq[0] + 1, int(time.time() * 1000))
    return _last_seq[0]


def media_file(site: Site, name: str, *, url: str | None = None) -> Json:
    data = (site.media.directory / name).read_bytes()
    return {
        "url": url or site.media.url(name),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "title": name,
    }


def play(
    site: Site,
    name: str,
    message_id: str,
    *,
    priority: str = "normal",
    url: str | None = None,
    source: Json | None = None,
    aud: Sequence[str] = (f"grp:{GROUP}",),
    env: str = "lab",
    iat: float | None = None,
    ttl_s: float = 300.0,
) -> Json:
    body = {
        "priority": priority,
        "source": source or {"files": [media_file(site, name, url=url)]},
        "max_duration_s": 60,
    }
    return command_payload(
        "play",
        body,
        env=env,
        aud=list(aud),
        message_id=message_id,
        seq=fresh_seq(),
        iat=iat,
        ttl_s=ttl_s,
    )


def simple(kind: str, body: Json, message_id: str) -> Json:
    return command_payload(
        kind, body, env="lab", aud=[f"dev:{DEVICE}"], message_id=message_id, seq=fresh_seq()
    )


def report(message_id: str) -> Json:
    return simple("report", {}, message_id)


def configure(site: Site, keys: list[KeySpec], thresholds: dict[str, int] | None = None) -> None:
    """Rewrite the site's config with another keyring (same broker, media, paths)."""
    write_config(
        site.config,
        broker_port=site.broker.port,
        media_port=site.media.port,
        keys=keys,
        wav=site.wav,
        state_dir=site.root / "state",
        cache_dir=site.root / "cache",
        thresholds=thresholds,
    )


# --- watching ------------------------------------------------------------------------------


class Feed:
    """One topic's messages as the watcher received them, decoded, searchable from a mark.

    Reads ``watcher.seen`` (never its queue), so waiting for one message never consumes
    another that a later wait looks for.
    """

    def __init__(self, watcher: Subscriber, topic: str) -> None:
        self.watcher = watcher
        self.topic = topic
        self._items: list[Json] = []
        self._scanned = 0

    def all(self) -> list[Json]:
        seen = self.watcher.seen[self._scanned :]
        self._scanned += len(seen)
        self._items += [json.loads(m.payload) for m in seen if m.topic == self.topic]
        return self._items

    def mark(self) -> int:
        return len(self.all())

    def wait(self, predicate: Callable[[Json], bool], since: int = 0, timeout: float = 15) -> Json:
        return self.all()[self.position(predicate, since, timeout)]

    def position(
        self, predicate: Callable[[Json], bool], since: int = 0, timeout: float = 15
    ) -> int:
        """Where the first message from ``since`` on that satisfies ``predicate`` is."""
        deadline = time.monotonic() + timeout
        while True:
            for index, item in enumerate(self.all()[since:], since):
                if predicate(item):
                    return index
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"nothing matching on {self.topic} within {timeout} s; "
                    f"last seen: {self.all()[-5:]!r}"
                )
            time.sleep(0.005)

    def kind(self, kind: str, ref: str | None = None, since: int = 0, timeout: float = 15) -> Json:
        return self.wait(
            lambda e: e.get("kind") == kind and (ref is None or e.get("ref") == ref),
            since,
            timeout,
        )


@dataclass
class Watch:
    site: Site
    watcher: Subscriber
    events: Feed
    states: Feed

    @classmethod
    def of(cls, site: Site, watcher: Subscriber) -> Watch:
        return cls(site, watcher, Feed(watcher, site.events_topic), Feed(watcher, site.state_topic))

    def send(
        self, topic: str, payload: bytes, *, ref: str | None = None, retain: bool = False
    ) -> Json:
        """Publish and return the message's outcome: the next accepted/rejected event (that
        names ``ref``, if given; refusals before the payload is read name none)."""
        mark = self.events.mark()
        self.watcher.publish(topic, payload, retain=retain)
        return self.events.wait(
            lambda e: e.get("kind") in OUTCOMES and (ref is None or e.get("ref") == ref), mark
        )

    def refused(self, topic: str, payload: bytes, reason: str, ref: str | None = None) -> Json:
        """Publish and expect a rejection for ``reason``; with ``ref`` None, one that names no
        message (the refusals before the payload is read), so that a late event about some
        other message cannot stand in for it."""
        mark = self.events.mark()
        self.watcher.publish(topic, payload)
        event = self.events.wait(lambda e: e.get("kind") in OUTCOMES and e.get("ref") == ref, mark)
        assert event["kind"] == "rejected", event
        assert event.get("reason") == reason, event
        return event

    def accepted(self, topic: str, payload: bytes, ref: str) -> Json:
        event = self.send(topic, payload, ref=ref)
        assert event["kind"] == "accepted", event
        return event

    def online(self, since: int = 0) -> Json:
        return self.states.wait(lambda s: s.get("online") is True, since)

    def offline(self, since: int = 0) -> int:
        """The position of the next offline state from ``since``."""
        return self.states.position(lambda s: s.get("online") is False, since)

    def started_refs(self) -> list[str]:
        return [str(e.get("ref")) for e in self.events.all() if e.get("kind") == "started"]


# The parts of the device state an attack could change (not clocks, health figures, link
# and outbox counters, which move by themselves).
STATE_FIELDS = ("online", "state", "playing", "volume", "relays", "trust_version", "schedules")


def retained_state(site: Site) -> Json:
    """What the broker keeps as the device's state for newcomers (its STATE_FIELDS, and the
    cache's file count and size)."""
    with Subscriber(site.broker, [site.state_topic]) as fresh:
        message = fresh.wait_for(lambda m: m.retain, 10)
    state: Json = json.loads(message.payload)
    kept = {name: state.get(name) for name in STATE_FIELDS}
    cache = state.get("cache") or {}
    kept["cache"] = {k: cache.get(k) for k in ("bytes", "files")}
    return kept


def restart(daemon: Daemon, start: Callable[[], Daemon], watch: Watch) -> tuple[Daemon, Json]:
    """SIGTERM, wait for the offline state, start again, wait for the new online state."""
    mark = watch.states.mark()
    assert daemon.stop() == 0
    mark = watch.offline(mark)
    fresh = start()
    return fresh, watch.online(mark)


def relay_ons(daemon: Daemon) -> int:
    return sum(1 for line in daemon.logged("relay_switched") if line.get("on") is True)


def cache_files(site: Site) -> list[str]:
    cache = site.root / "cache"
    if not cache.exists():
        return []
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())


@dataclass(frozen=True)
class Footprint:
    """Everything an attack must leave as it was."""

    started: tuple[str, ...]
    relay_ons: int
    wav: bytes | None
    cache: tuple[str, ...]
    media_requests: int

    @classmethod
    def of(cls, watch: Watch, daemon: Daemon) -> Footprint:
        site = watch.site
        return cls(
            started=tuple(watch.started_refs()),
            relay_ons=relay_ons(daemon),
            wav=site.wav.read_bytes() if site.wav.exists() else None,
            cache=tuple(cache_files(site)),
            media_requests=len(site.media.requests),
        )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def pid_of(daemon: Daemon) -> int:
    assert daemon.process is not None
    return daemon.process.pid


# --- 1-8: refusals on one shared daemon ----------------------------------------------------


def test_forged_misaddressed_stale_and_oversized_commands_are_refused_and_nothing_happens(
    site: Site, start_daemon: Callable[[], Daemon], watcher: Subscriber
) -> None:
    province = SigningKey.generate("op-prov")  # an operator for everywhere: covers this device
    foreign = SigningKey.generate("op-other")  # an operator of another commune only
    configure(
        site,
        [
            (site.operator, ["operator"], [GROUP]),
            (site.emergency, ["emergency"], ["*"]),
            (province, ["operator"], ["*"]),
            (foreign, ["operator"], [OTHER_GROUP]),
        ],
    )
    rogue_dir = site.root / "rogue"
    rogue_dir.mkdir()
    (rogue_dir / "tone440.wav").write_bytes((site.media.directory / "tone440.wav").read_bytes())
    rogue = MediaServer(rogue_dir)  # a server that is not on the allowlist
    try:
        daemon = start_daemon()
        watch = Watch.of(site, watcher)
        watch.online()
        state_before = retained_state(site)
        quiet = Footprint.of(watch, daemon)
        assert quiet.relay_ons == 0 and quiet.wav is None and quiet.cache == ()
        cmd = site.cmd_topic
        op = [site.operator]

        def refused(
            name: str, payload: bytes, reason: str, ref: str | None = None, topic: str = cmd
        ) -> None:
            event = watch.refused(topic, payload, reason, ref)
            print(f"{name}: rejected {event.get('reason')} ({event.get('detail')})")
            assert Footprint.of(watch, daemon) == quiet, name
            assert rogue.requests == [], name

        tone = "tone440.wav"
        # 2. Cross-commune: a command validly signed for another commune's group, by a key
        # that covers this device too, republished on this device's topic.
        refused(
            "cross-commune replay",
            sign_command(play(site, tone, "for-other", aud=[f"grp:{OTHER_GROUP}"]), [province]),
            "not_for_me",
            "for-other",
        )
        # ... and a key whose scopes cover only another commune, naming this device.
        refused(
            "foreign commune's key",
            sign_command(play(site, tone, "by-other", aud=[f"dev:{DEVICE}"]), [foreign]),
            "not_authorized",
        )
        refused(
            "foreign commune's key, group topic",
            sign_command(play(site, tone, "by-other-2"), [foreign]),
            "not_authorized",
            topic=GROUP_TOPIC,
        )
        # 3. Another environment, another device.
        refused(
            "other env",
            sign_command(play(site, tone, "for-prod", env="prod"), op),
            "wrong_env",
            "for-prod",
        )
        refused(
            "other device",
            sign_command(play(site, tone, "for-dev-02", aud=["dev:e2e-dev-02"]), op),
            "not_for_me",
            "for-dev-02",
        )
        # 5. Roles: an operator signing an emergency play or a trust document; the emergency
        # key signing an ordinary play.
        refused(
            "operator signs emergency",
            sign_command(play(site, tone, "op-emergency", priority="emergency"), op),
            "not_authorized",
            "op-emergency",
        )
        refused(
            "emergency key signs a normal play",
            sign_command(play(site, tone, "em-normal"), [site.emergency]),
            "not_authorized",
            "em-normal",
        )
        refused(
            "operator signs a trust document",
            sign_trust(
                trust_payload(9, [key_entry(site.operator, ["operator", "root"])], env="lab"),
                op,
            ),
            "not_authorized",
            topic=TRUST_TOPIC,
        )
        # 6. Signatures and parsing.
        stranger = SigningKey(site.operator.id, SigningKey.generate("x").private)
        refused(
            "stranger under a trusted keyid",
            sign_command(play(site, tone, "forged"), [stranger]),
            "bad_signature",
        )
        refused(
            "unknown keyid",
            sign_command(play(site, tone, "unknown"), [SigningKey.generate("op-nobody")]),
            "unknown_key",
        )
        body = json.dumps(play(site, tone, "unsigned")).encode()
        refused("empty signature list", envelope(COMMAND_TYPE, body, []), "unsigned")
        no_sigs = {"payloadType": COMMAND_TYPE, "payload": base64.b64encode(body).decode()}
        refused("no signatures field", json.dumps(no_sigs).encode(), "unsigned")
        big = play(site, tone, "huge")
        big["body"]["source"]["files"][0]["title"] = "x" * 15_000
        huge = sign_command(big, op)
        assert 20 * 1024 < len(huge) < 21 * 1024, len(huge)
        refused("20 KiB message", huge, "too_large")
        refused("invalid JSON", b'{"payloadType": "' + COMMAND_TYPE.encode() + b'", ', "malformed")
        signed = json.loads(sign_command(play(site, tone, "dup-env"), op))
        duplicated = json.dumps(signed)[:-1] + ', "payloadType": "' + COMMAND_TYPE + '"}'
        refused("duplicate key in the envelope", duplicated.encode(), "malformed")
        dup_body = json.dumps(play(site, tone, "dup-body"))[:-1] + ', "type": "stop"}'
        refused(
            "duplicate key in the signed payload",
            sign(COMMAND_TYPE, dup_body.encode(), op),
            "malformed",
        )
        refused(
            "NaN in the signed payload",
            sign(
                COMMAND_TYPE, json.dumps(play(site, tone, "nan")).replace("60", "NaN").encode(), op
            ),
            "malformed",
        )
        genuine = json.loads(sign_command(play(site, tone, "genuine"), op))
        swapped = json.loads(sign_command(play(site, "tone1000.wav", "swapped"), op))
        genuine["payload"] = swapped["payload"]  # a valid signature over other bytes
        refused("payload swapped under a signature", json.dumps(genuine).encode(), "bad_signature")
        refused(
            "command signed as a trust payloadType",
            sign(TRUST_TYPE, json.dumps(play(site, tone, "as-trust")).encode(), op),
            "bad_type",
        )
        refused(
            "command on the trust topic",
            sign_command(play(site, tone, "on-trust"), op),
            "bad_type",
            topic=TRUST_TOPIC,
        )
        # 7. Freshness (iat after this fresh store's reset instant, so the reason is the
        # expiry itself and not the reset: anything issued before that is `replayed`).
        reset_at = datetime.fromisoformat(daemon.logged("reset_floor_set")[0]["utc"]).timestamp()
        time.sleep(max(0.0, reset_at + 0.2 - time.time()))
        now = time.time()
        refused(
            "expired",
            sign_command(
                play(site, tone, "expired", iat=(reset_at + now) / 2, ttl_s=(now - reset_at) / 4),
                op,
            ),
            "expired",
            "expired",
        )
        refused(
            "issued an hour in the future",
            sign_command(play(site, tone, "future", iat=now + 3600, ttl_s=7200), op),
            "not_yet_valid",
            "future",
        )
        # 8. URLs off the allowlist: refused before any request is made.
        refused(
            "host not on the allowlist",
            sign_command(play(site, tone, "rogue-host", url=rogue.url(tone)), op),
            "policy",
            "rogue-host",
        )
        refused(
            "allowed server under another name",
            sign_command(
                play(site, tone, "localhost", url=f"http://localhost:{site.media.port}/{tone}"),
                op,
            ),
            "policy",
            "localhost",
        )
        refused(
            "file: URL",
            sign_command(play(site, tone, "file-url", url="file:///etc/passwd"), op),
            "bad_body",
            "file-url",
        )
        refused(
            "file: URL with the allowed host",
            sign_command(
                play(site, tone, "file-host", url=f"file://127.0.0.1:{site.media.port}/etc/passwd"),
                op,
            ),
            "policy",
            "file-host",
        )
        refused(
            "stream from a rogue host",
            sign_command(
                play(site, tone, "rogue-stream", source={"stream": {"url": rogue.url("live")}}),
                op,
            ),
            "policy",
            "rogue-stream",
        )

        # 8. Media whose bytes differ from the pinned hash (same size): accepted, then failed,
        # one request made, nothing cached, nothing played.
        write_tone(site.media.directory / "evil.wav", 1000.0, 1.5)
        assert (site.media.directory / "evil.wav").stat().st_size == (
            site.media.directory / tone
        ).stat().st_size
        mark = watch.events.mark()
        watch.accepted(
            cmd,
            sign_command(play(site, tone, "bad-hash", url=site.media.url("evil.wav")), op),
            "bad-hash",
        )
        failed = watch.events.kind("failed", "bad-hash", mark)
        assert failed["reason"] == "hash_mismatch", failed
        fetched = site.media.requests[quiet.media_requests :]
        assert fetched and all(r.startswith("GET /evil.wav ") for r in fetched), fetched
        assert cache_files(site) == []
        assert watch.started_refs() == [] and relay_ons(daemon) == 0 and not site.wav.exists()

        # The daemon is alive and nothing was played, switched, cached or changed.
        assert retained_state(site) == state_before
        watch.accepted(cmd, sign_command(report("barrier"), op), "barrier")
        accepted = [e.get("ref") for e in watch.events.all() if e["kind"] == "accepted"]
        assert accepted == ["bad-hash", "barrier"]
        assert watch.started_refs() == []
        assert [line["on"] for line in daemon.logged("relay_switched")] == [False]
        assert not site.wav.exists() and cache_files(site) == [] and rogue.requests == []
        assert daemon.stop() == 0
    finally:
        rogue.close()


# --- 1, 4: replays across a restart, retained commands -------------------------------------


def test_replays_across_a_restart_and_retained_commands_never_act(
    site: Site, start_daemon: Callable[[], Daemon], watcher: Subscriber
) -> None:
    watch = Watch.of(site, watcher)
    op = [site.operator]
    first = start_daemon()
    watch.online()
    captured = sign_command(play(site, "tone1000.wav", "captured"), op)
    watch.accepted(GROUP_TOPIC, captured, "captured")
    watch.events.kind("finished", "captured")
    first.wait_log(lambda _: relay_ons(first) == 1 and len(first.logged("relay_switched")) >= 3)
    played = site.wav.read_bytes()

    # 1. The captured command, after a restart (SIGTERM, start again).
    second, state = restart(first, start_daemon, watch)
    assert state["relays"] == {"amp": "off"} and state["state"] == "idle"
    mark = watch.events.mark()
    duplicate = watch.accepted(site.cmd_topic, captured, "captured")  # the last one: a QoS 1 copy
    assert duplicate["detail"] == "duplicate of the last accepted"
    watch.accepted(site.cmd_topic, sign_command(report("later"), op), "later")
    watch.refused(site.cmd_topic, captured, "replayed", "captured")
    watch.refused(GROUP_TOPIC, captured, "replayed", "captured")
    print("replay after restart: duplicate acknowledged, then refused as replayed")

    # 4. A retained command, published while the daemon listens: seen with the retain flag.
    retained_live = sign_command(play(site, "tone1000.wav", "retained-live"), op)
    event = watch.send(site.cmd_topic, retained_live, retain=True)
    assert event["kind"] == "rejected" and event["reason"] == "policy", event
    event = watch.send(
        GROUP_TOPIC, sign_command(play(site, "tone1000.wav", "retained-grp"), op), retain=True
    )
    assert event["kind"] == "rejected" and event["reason"] == "policy", event
    since_second = watch.events.all()[mark:]
    assert not [e for e in since_second if e["kind"] in ("started", "stopped", "finished")]
    assert relay_ons(second) == 0 and site.wav.read_bytes() == played

    # ... and one published while it is down; then it restarts and subscribes afresh.
    mark = watch.states.mark()
    assert second.stop() == 0
    mark = watch.offline(mark)
    watcher.publish(
        site.cmd_topic, sign_command(play(site, "tone1000.wav", "retained-down"), op), retain=True
    )
    events_mark = watch.events.mark()
    third = start_daemon()
    watch.online(mark)
    watch.accepted(site.cmd_topic, sign_command(report("after-retained"), op), "after-retained")
    time.sleep(1.0)  # room for anything late to show up
    since_third = watch.events.all()[events_mark:]
    seen = [(e["kind"], e.get("ref"), e.get("reason")) for e in since_third]
    print(f"after a restart with retained commands on the broker: {seen}")
    assert [e.get("ref") for e in since_third if e["kind"] == "accepted"] == ["after-retained"]
    assert all(e.get("reason") == "policy" for e in since_third if e["kind"] == "rejected")
    assert not [e for e in since_third if e["kind"] in ("started", "stopped", "finished")]
    assert relay_ons(third) == 0 and site.wav.read_bytes() == played
    delivered = [
        line for line in third.logged("message") if str(line.get("topic", "")).endswith("/cmd")
    ]
    print(f"cmd messages delivered to the restarted daemon: {len(delivered)}")
    assert watch.started_refs() == ["captured"]
    assert third.stop() == 0


def test_a_wiped_state_directory_refuses_a_command_captured_a_moment_before_the_wipe(
    site: Site, start_daemon: Callable[[], Daemon], watcher: Subscriber
) -> None:
    """docs/security.md "After losing state": a play captured seconds before the state directory
    is wiped (well within ``clock.max_skew_s``, far from its ``exp``) does not play again."""
    watch = Watch.of(site, watcher)
    first = start_daemon()
    watch.online()
    captured = sign_command(play(site, "tone1000.wav", "captured-late"), [site.operator])
    watch.accepted(site.cmd_topic, captured, "captured-late")
    watch.events.kind("finished", "captured-late")
    mark = watch.states.mark()
    assert first.stop() == 0
    mark = watch.offline(mark)
    shutil.rmtree(site.root / "state")  # a technician clears it, or a new SD card
    second = start_daemon()
    watch.online(mark)
    refused = watch.refused(site.cmd_topic, captured, "replayed", "captured-late")
    assert "store was reset" in refused["detail"], refused
    fresh = sign_command(play(site, "tone1000.wav", "after-wipe"), [site.operator])
    watch.accepted(site.cmd_topic, fresh, "after-wipe")  # a new command is served at once
    watch.events.kind("finished", "after-wipe")
    assert watch.started_refs() == ["captured-late", "after-wipe"]
    assert second.stop() == 0


# --- 9, 10: key rotation, and an old keyring retained on the broker ------------------------


def test_key_rotation_end_to_end_and_an_old_retained_keyring_is_refused(
    site: Site, start_daemon: Callable[[], Daemon], watcher: Subscriber
) -> None:
    roots = [SigningKey.generate(f"root-{n}") for n in (1, 2, 3)]
    r1, r2, r3 = roots
    r4 = SigningKey.generate("root-4")
    stolen = SigningKey.generate("op-stolen")
    fresh_op = SigningKey.generate("op-new")
    configure(
        site,
        [*((r, ["root"], ["*"]) for r in roots), (stolen, ["operator"], [GROUP])],
        thresholds={"root": 2},
    )
    watch = Watch.of(site, watcher)
    daemon = start_daemon()
    assert watch.online()["trust_version"] == 0
    cmd = site.cmd_topic

    def keyring(version: int, operator: SigningKey, root_keys: Sequence[SigningKey]) -> Json:
        return trust_payload(
            version,
            [
                *(key_entry(r, ["root"]) for r in root_keys),
                key_entry(operator, ["operator"], [GROUP]),
            ],
            env="lab",
            thresholds={"root": 2},
        )

    v1 = keyring(1, stolen, roots)
    # Below the root threshold, however it is dressed up.
    impostor = SigningKey(r2.id, SigningKey.generate("x").private)
    for name, signers in (
        ("one root", [r1]),
        ("one root twice", [r1, r1]),
        ("one root and a stranger under root-2's id", [r1, impostor]),
        ("one root and the operator", [r1, stolen]),
    ):
        watch.refused(TRUST_TOPIC, sign_trust(v1, signers), "not_authorized")
        print(f"trust v1 signed by {name}: not_authorized")
    assert relay_ons(daemon) == 0 and not daemon.logged("trust_replaced")

    trust_v1 = sign_trust(v1, [r1, r2])
    mark = watch.states.mark()
    event = watch.send(TRUST_TOPIC, trust_v1, ref="trust-v1", retain=True)
    assert event["kind"] == "accepted" and event["detail"] == "trust version 1", event
    assert watch.states.wait(lambda s: s.get("trust_version") == 1, mark)
    watch.accepted(cmd, sign_command(report("stolen-v1"), [stolen]), "stolen-v1")

    # v2: the stolen operator key goes, a new one comes; root-3 retires for root-4. Signed by
    # 2 of the 3 current roots and by the new roots as well (TUF: both thresholds).
    v2 = keyring(2, fresh_op, [r1, r2, r4])
    trust_v2 = sign_trust(v2, [r1, r2, r4])
    mark = watch.states.mark()
    event = watch.send(TRUST_TOPIC, trust_v2, ref="trust-v2", retain=True)
    assert event["kind"] == "accepted" and event["detail"] == "trust version 2", event
    assert watch.states.wait(lambda s: s.get("trust_version") == 2, mark)

    quiet = Footprint.of(watch, daemon)
    watch.refused(cmd, sign_command(report("stolen-v2"), [stolen]), "unknown_key")
    as_new = SigningKey(fresh_op.id, stolen.private)
    watch.refused(cmd, sign_command(report("stolen-as-new"), [as_new]), "bad_signature")
    watch.refused(
        cmd, sign_command(play(site, "tone440.wav", "stolen-play"), [stolen]), "unknown_key"
    )
    watch.refused(TRUST_TOPIC, trust_v1, "stale_version", "trust-v1")
    v3 = keyring(3, stolen, [r1, r3])
    watch.refused(TRUST_TOPIC, sign_trust(v3, [r1, r3]), "not_authorized")  # r3 was retired
    assert Footprint.of(watch, daemon) == quiet
    mark = watch.events.mark()
    watch.accepted(
        cmd, sign_command(play(site, "tone1000.wav", "new-key-play"), [fresh_op]), "new-key-play"
    )
    watch.events.kind("finished", "new-key-play", mark)
    print("rotation: stolen key unknown_key, new key plays, trust v1 stale_version")

    # Restart: the keyring is still v2 and the retained v2 is acknowledged as a duplicate.
    mark = watch.events.mark()
    daemon, state = restart(daemon, start_daemon, watch)
    assert state["trust_version"] == 2
    duplicate = watch.events.kind("accepted", "trust-v2", mark)
    assert duplicate["detail"] == "duplicate of the last accepted"
    watch.refused(cmd, sign_command(report("stolen-after-restart"), [stolen]), "unknown_key")
    watch.accepted(cmd, sign_command(report("new-after-restart"), [fresh_op]), "new-after-restart")
    assert not daemon.logged("trust_replaced")

    # 10. An old keyring (v1) retained on the broker when a daemon that stored v2 restarts.
    states_mark = watch.states.mark()
    assert daemon.stop() == 0
    states_mark = watch.offline(states_mark)
    watcher.publish(TRUST_TOPIC, trust_v1, retain=True)
    mark = watch.events.mark()
    daemon = start_daemon()
    assert watch.online(states_mark)["trust_version"] == 2
    stale = watch.events.kind("rejected", "trust-v1", mark)
    assert stale["reason"] == "stale_version", stale
    watch.refused(cmd, sign_command(report("stolen-under-old"), [stolen]), "unknown_key")
    watch.accepted(cmd, sign_command(report("new-under-old"), [fresh_op]), "new-under-old")
    assert retained_state(site)["trust_version"] == 2
    assert not daemon.logged("trust_replaced") and relay_ons(daemon) == 0
    print("retained trust v1 after restart: stale_version, keyring still v2")
    assert daemon.stop() == 0


# --- 11: a flood of junk while audio plays -------------------------------------------------


def junk(site: Site, count: int, seed: int = 11) -> list[tuple[str, bytes]]:
    """Random bytes and malformed envelopes, cheap and expensive ones, on every topic."""
    rng = random.Random(seed)  # noqa: S311 - reproducible junk, not a secret
    topics = (site.cmd_topic, GROUP_TOPIC, TRUST_TOPIC)
    body = json.dumps(play(site, "tone1000.wav", "junk")).encode()
    known = site.operator.id
    messages: list[tuple[str, bytes]] = []
    for i in range(count):
        kind = i % 8
        if kind == 0:
            payload = rng.randbytes(rng.randint(1, 600))
        elif kind == 1:
            payload = b'{"payloadType": "text/plain", "payload": "", "signatures": []}'
        elif kind == 2:
            payload = envelope(COMMAND_TYPE, body, [(f"nobody-{i}", rng.randbytes(64))])
        elif kind == 3:  # a trusted key id: costs an Ed25519 verification
            payload = envelope(COMMAND_TYPE, body, [(known, rng.randbytes(64))])
        elif kind == 4:  # the most signature entries allowed, all naming a trusted key
            payload = envelope(COMMAND_TYPE, body, [(known, rng.randbytes(64)) for _ in range(8)])
        elif kind == 5:
            payload = b"[" * rng.randint(20, 4000)
        elif kind == 6 and i % 40 == 6:
            payload = rng.randbytes(17 * 1024)
        elif kind == 6:
            payload = b'{"payloadType": "a", "payloadType": "b"}'
        else:
            payload = envelope(COMMAND_TYPE, body, [])
        messages.append((topics[rng.randrange(len(topics))], payload))
    return messages


def connected_client(broker: MosquittoBroker, name: str) -> mqtt.Client:
    """A plain paho client of the attacker's own, connected, its network loop running."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"{name}-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
        reconnect_on_failure=False,  # a client the broker cut off just ends
    )
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not client.is_connected():
        if time.monotonic() > deadline:
            client.loop_stop()
            raise AssertionError(f"{name} client could not connect")
        time.sleep(0.01)
    return client


def publish_as_stranger(
    broker: MosquittoBroker, topic: str, payload: bytes, *, qos: int = 1
) -> bool:
    """Publish from a throw-away client (a broker may cut it off for what it sends: the
    watcher must stay connected). True if the broker took it (PUBACK, or written at QoS 0)."""
    client = connected_client(broker, "stranger")
    gone = threading.Event()
    client.on_disconnect = lambda *_: gone.set()
    try:
        info = client.publish(topic, payload, qos=qos)

        def taken() -> bool:
            try:
                return info.is_published()
            except (RuntimeError, ValueError):  # paho: the connection went first
                return False

        deadline = time.monotonic() + 0.5  # a broker on loopback answers in milliseconds
        while not (taken() or gone.is_set()) and time.monotonic() < deadline:
            time.sleep(0.01)
        return taken()
    finally:
        if not gone.is_set():
            client.disconnect()
            client.loop_stop()
        # else: its network thread ends by itself (no reconnect); joining it would wait out
        # paho's one-second select


def flood(broker: MosquittoBroker, messages: Sequence[tuple[str, bytes]]) -> float:
    """Publish ``messages`` at QoS 0 as fast as one client can; the seconds it took."""
    client = connected_client(broker, "junk")
    try:
        started = time.monotonic()
        infos = [client.publish(topic, payload, qos=0) for topic, payload in messages]
        infos[-1].wait_for_publish(timeout=60)
        assert infos[-1].is_published()
        return time.monotonic() - started
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_junk_flood_during_playback_neither_stops_the_audio_nor_blocks_a_valid_command(
    site: Site, start_daemon: Callable[[], Daemon], watcher: Subscriber
) -> None:
    tone_s = 8.0
    write_tone(site.media.directory / "long440.wav", 440.0, tone_s)
    messages = junk(site, 10_000)
    watch = Watch.of(site, watcher)
    daemon = start_daemon()
    watch.online()
    op = [site.operator]
    mark = watch.events.mark()
    watch.accepted(site.cmd_topic, sign_command(play(site, "long440.wav", "long"), op), "long")
    watch.events.kind("started", "long", mark)
    before = rss_kib(pid_of(daemon))

    burst_s = flood(site.broker, messages)
    sent = time.monotonic()
    watcher.publish(site.cmd_topic, sign_command(report("after-flood"), op))
    took: float | None = None
    try:
        watch.events.kind("accepted", "after-flood", mark, timeout=20)
        took = time.monotonic() - sent
    except AssertionError:
        pass  # asserted last, once everything else has been checked
    after = rss_kib(pid_of(daemon))

    # The audio went on: the whole tone is in the WAV, and it finished rather than stopped.
    finished = watch.events.kind("finished", "long", mark, timeout=30)
    assert finished["detail"] == "long440.wav"
    sound = wait_for_final_wav(site.wav)
    assert tone_s - 0.2 < sound.duration_s < tone_s + 0.3, sound.duration_s
    assert dominant_of(trim_silence(sound.samples), sound.rate, (440.0, 1000.0)) == 440.0
    daemon.wait_log(lambda _: len(daemon.logged("relay_switched")) >= 3)
    assert [line["on"] for line in daemon.logged("relay_switched")] == [False, True, False]
    # Once the flood is over, the daemon takes commands again.
    watch.accepted(site.cmd_topic, sign_command(report("after-flood-2"), op), "after-flood-2")
    settled = rss_kib(pid_of(daemon))

    events = watch.events.all()[mark:]
    for_long = [e["kind"] for e in events if e.get("ref") == "long"]
    assert for_long == ["accepted", "started", "finished"], for_long
    accepted = [e.get("ref") for e in events if e["kind"] == "accepted"]
    assert set(accepted) <= {"long", "after-flood", "after-flood-2"}, accepted
    taken = len(daemon.logged("message")) - len(daemon.logged("accepted"))  # junk only
    dropped = sum(int(line.get("count", 0)) for line in daemon.logged("inbound_messages_dropped"))
    reasons: dict[str, int] = {}
    for event in events:
        if event["kind"] == "rejected":
            reasons[event["reason"]] = reasons.get(event["reason"], 0) + 1
    summaries = [e.get("detail") for e in events if e["kind"] == "fault"]
    print(
        f"flood: {len(messages)} junk messages published in {burst_s:.2f} s; the daemon took "
        f"{taken} from its inbox and dropped {dropped} there (the broker delivered no more); "
        f"rejections reported one by one: {reasons}; summed up: {summaries}"
    )
    outcome = "never (20 s)" if took is None else f"{took:.3f} s"
    print(f"flood: the valid command published right after it was accepted after {outcome}")
    print(
        f"flood: VmRSS {before} KiB before, {after} KiB right after, {settled} KiB once settled "
        f"({(after - before) / 1024:+.1f} MB)"
    )
    assert taken + dropped > 0
    assert after - before < 30 * 1024 and settled - before < 30 * 1024
    assert daemon.stop() == 0
    assert took is not None, (
        "a validly signed command published right after the junk flood was never acted on "
        f"(20 s); the daemon counted {dropped} messages dropped from its inbox, and a command "
        "sent once the flood had drained was accepted (whether the broker ever wrote it to the "
        "receiver shows in mosquitto.log: a 'Sending PUBLISH' with no PUBACK from the receiver)"
    )


ED25519_L = 2**252 + 27742317777372353535851937790883648493  # the order of the base point


def forged_signature(rng: random.Random) -> bytes:
    """R random, S a random scalar below L: the verifier must do the whole curve computation."""
    s = int.from_bytes(rng.randbytes(32), "little") % ED25519_L
    return rng.randbytes(32) + s.to_bytes(32, "little")


def test_a_forgery_flood_naming_the_operator_key_cannot_push_out_an_emergency_stop(
    site: Site, start_daemon: Callable[[], Daemon], watcher: Subscriber
) -> None:
    # 6,000 forgeries naming the operator's key, an emergency stop, 6,000 more, on one connection
    # (the broker keeps their order): the inbox is full when the stop comes, and more than it
    # holds come after the stop, faster than the loop can verify them. They push out each other,
    # never the stop, which has a lane of its own (its key) and gets its turn between two
    # forgeries. (With one lane for every key, the stop was pushed out in one run of two.)
    tone_s = 30.0
    write_tone(site.media.directory / "long440.wav", 440.0, tone_s)
    rng = random.Random(13)  # noqa: S311 - reproducible forgeries, not a secret
    forged_body = json.dumps(play(site, "long440.wav", "forged")).encode()
    forged = [
        (site.cmd_topic, envelope(COMMAND_TYPE, forged_body, [(site.operator.id, sig)]))
        for sig in (forged_signature(rng) for _ in range(12_000))
    ]
    watch = Watch.of(site, watcher)
    daemon = start_daemon()
    watch.online()
    mark = watch.events.mark()
    watch.accepted(
        site.cmd_topic, sign_command(play(site, "long440.wav", "long"), [site.operator]), "long"
    )
    watch.events.kind("started", "long", mark)
    stop = sign_command(simple("stop", {"target": "all"}, "em-stop"), [site.emergency])

    flood(site.broker, [*forged[:6000], (site.cmd_topic, stop), *forged[6000:]])

    watch.events.kind("accepted", "em-stop", mark, timeout=60)
    assert watch.events.kind("stopped", "long", mark, timeout=10)
    sound = wait_for_final_wav(site.wav)
    assert sound.duration_s < tone_s - 5, sound.duration_s  # the tone was cut, not played out
    daemon.wait_log(lambda _: len(daemon.logged("relay_switched")) >= 3)
    assert [line["on"] for line in daemon.logged("relay_switched")] == [False, True, False]
    dropped = sum(int(line.get("count", 0)) for line in daemon.logged("inbound_messages_dropped"))
    print(f"forgery flood: the emergency stop was acted on; {dropped} forgeries were shed")
    assert dropped > 0  # the flood did overflow the inbox: the stop survived a real overflow
    events = watch.events.all()[mark:]
    assert [e.get("ref") for e in events if e["kind"] == "accepted"] == ["long", "em-stop"]
    assert daemon.stop() == 0


# --- oversized messages -------------------------------------------------------------------


def test_oversized_messages_cannot_cut_the_device_off_from_commands(
    site: Site, start_daemon: Callable[[], Daemon], watcher: Subscriber
) -> None:
    """Messages above the size cap are refused (``too_large``), or never delivered (the
    receiver announces an MQTT 5 Maximum Packet Size; docs/protocol.md has the broker refuse
    bigger packets). Either way a valid command sent after a few dozen of them still acts:
    with Mosquitto 2.0.11, every QoS 1 message it drops for a client's Maximum Packet Size
    leaks one of that client's 20 in-flight slots, and the 21st cuts the receiver off."""
    watch = Watch.of(site, watcher)
    daemon = start_daemon()
    watch.online()
    op = [site.operator]
    oversized = 40 * 1024
    count = 25
    mark = watch.events.mark()
    taken = sum(
        publish_as_stranger(site.broker, site.cmd_topic, b"x" * (oversized + n))
        for n in range(count)
    )
    sent = time.monotonic()
    watcher.publish(site.cmd_topic, sign_command(report("after-oversized"), op))
    took: float | None = None
    try:
        watch.events.kind("accepted", "after-oversized", mark, timeout=20)
        took = time.monotonic() - sent
    except AssertionError:
        pass
    refused = [e for e in watch.events.all()[mark:] if e["kind"] == "rejected"]
    assert all(e["reason"] == "too_large" for e in refused), refused
    delivered = [m for m in daemon.logged("message") if m.get("size", 0) >= oversized]
    outcome = "never (20 s)" if took is None else f"after {took:.3f} s"
    print(
        f"oversized: {count} messages of {oversized // 1024} KiB at QoS 1, {taken} taken by the "
        f"broker, {len(delivered)} reached the daemon, {len(refused)} refused too_large; the "
        f"valid command after them was accepted {outcome}"
    )
    assert watch.started_refs() == [] and relay_ons(daemon) == 0 and not site.wav.exists()
    assert took is not None, (
        f"{count} oversized QoS 1 messages on the device's command topic cut it off from "
        "commands: the valid command published after them never reached the daemon"
    )
    assert daemon.stop() == 0


# --- 12: hostile strings in every text field -----------------------------------------------

HOSTILE: tuple[tuple[str, str], ...] = (
    ("newline", 'evil\n<6>{"event": "accepted", "forged": true}'),
    ("cr-ansi", "\r\x1b[2K\x1b[31mRED\x1b[0m"),
    ("bidi", "\u202egnp.exe\u202c \u2066x\u2069"),
    ("c1-sep", "\x9b31m\x85\u2028\u2029\ufeff\x7f"),
    ("nul", "nul\x00byte"),
    ("9kb", "\x1b[31m" + "A" * 9000 + "\n\u202e"),
    ("100kb", "\x1b]0;title\x07" + "B" * 100_000),
)


def _set(path: Sequence[str | int]) -> Callable[[Json, str], None]:
    def mutate(payload: Json, value: str) -> None:
        target: Any = payload
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return mutate


def _hostile_cases(site: Site) -> list[tuple[str, Callable[[str, str], Json]]]:
    """(field, make(message_id, hostile) -> payload) for every text field of a command."""

    def on_play(path: Sequence[str | int]) -> Callable[[str, str], Json]:
        def make(message_id: str, value: str) -> Json:
            payload = play(site, "tone1000.wav", message_id)
            _set(path)(payload, value)
            return payload

        return make

    def make_url_tail(message_id: str, value: str) -> Json:
        return play(site, "tone1000.wav", message_id, url=site.media.url("tone1000.wav?") + value)

    def make_stream(message_id: str, value: str) -> Json:
        source = {"stream": {"url": site.media.url("live/") + value}}
        return play(site, "tone1000.wav", message_id, source=source)

    def make_aud(message_id: str, value: str) -> Json:
        return play(site, "tone1000.wav", message_id, aud=[f"grp:{GROUP}", value])

    def make_extra_field(message_id: str, value: str) -> Json:
        payload = play(site, "tone1000.wav", message_id)
        payload[value] = value
        return payload

    def make_stop(message_id: str, value: str) -> Json:
        return simple("stop", {"target": value}, message_id)

    def make_relay(message_id: str, value: str) -> Json:
        return simple("relay", {"name": value, "state": value, "duration_s": 5}, message_id)

    def make_volume(message_id: str, value: str) -> Json:
        return simple("volume", {"level": value}, message_id)

    return [
        ("id", on_play(("id",))),
        ("env", on_play(("env",))),
        ("type", on_play(("type",))),
        ("iat", on_play(("iat",))),
        ("exp", on_play(("exp",))),
        ("seq", on_play(("seq",))),
        ("aud", make_aud),
        ("priority", on_play(("body", "priority"))),
        ("start_at", on_play(("body", "start_at"))),
        ("url", on_play(("body", "source", "files", 0, "url"))),
        ("url tail", make_url_tail),
        ("sha256", on_play(("body", "source", "files", 0, "sha256"))),
        ("title", on_play(("body", "source", "files", 0, "title"))),
        ("stream url", make_stream),
        ("field name", make_extra_field),
        ("stop target", make_stop),
        ("relay name/state", make_relay),
        ("volume level", make_volume),
    ]


def log_line_problems(raw: Sequence[str]) -> list[str]:
    """Why each printed line is not one bounded, escaped journald JSON line (empty: all fine)."""
    problems: list[str] = []

    def strings(value: Any) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, dict):
            return [s for k, v in value.items() for s in (k, *strings(v))]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return []

    for number, line in enumerate(raw):
        text = line[:-1] if line.endswith("\n") else line
        shown = f"line {number}: {text[:120]!r}"
        if len(text) > MAX_LOG_LINE_CHARS:
            problems.append(f"{shown}: {len(text)} characters")
        if UNSAFE_IN_LOG.search(text):
            problems.append(f"{shown}: raw control, separator or bidi character")
        match = JOURNALD_LINE.fullmatch(text)
        if match is None:
            problems.append(f"{shown}: not <N> followed by one JSON object")
            continue
        try:
            doc = json.loads(match[2])
        except ValueError:
            problems.append(f"{shown}: not valid JSON")
            continue
        if not isinstance(doc, dict):
            problems.append(f"{shown}: not a JSON object")
        elif any(UNSAFE_IN_LOG.search(s) for s in strings(doc)):
            problems.append(f"{shown}: a value carries a control or bidi character")
    return problems


def outcome_of(watch: Watch, payload: bytes, keys: Sequence[SigningKey]) -> Json | None:
    """The outcome of one message; None if it never reached the daemon.

    A message over the size cap may be refused by the daemon (``too_large``) or never be
    delivered at all (a broker honours the client's MQTT 5 Maximum Packet Size): a signed
    report sent after it tells the two apart without waiting for a timeout.
    """
    topic = watch.site.cmd_topic
    if len(payload) <= MAX_MESSAGE_BYTES:
        return watch.send(topic, payload)
    mark = watch.events.mark()
    # From a client of its own (the broker may cut off who sends it), at QoS 0: what is tested
    # here is what the daemon makes of the content (oversized QoS 1 messages are an attack of
    # their own, see test_oversized_messages_cannot_cut_the_device_off_from_commands).
    publish_as_stranger(watch.site.broker, topic, payload, qos=0)
    probe = f"probe-{fresh_seq()}"
    watch.accepted(topic, sign_command(report(probe), keys), probe)
    between = [
        e for e in watch.events.all()[mark:] if e.get("kind") in OUTCOMES and e.get("ref") != probe
    ]
    assert len(between) <= 1, between
    if between:
        assert between[0]["kind"] == "rejected" and between[0]["reason"] == "too_large", between
        return between[0]
    return None


def test_hostile_strings_in_every_field_never_reach_the_log_raw(
    site: Site, start_daemon: Callable[[], Daemon], watcher: Subscriber
) -> None:
    watch = Watch.of(site, watcher)
    # Every hostile string must get its own report: no flood summary (by default beyond 100
    # rejections in 10 s), so no pacing either.
    with site.config.open("a", encoding="utf-8") as config:
        config.write("policy:\n  rejections_per_window: 10000\n")
    daemon = start_daemon()
    watch.online()
    op = [site.operator]
    outcomes: dict[str, int] = {}

    def count(event: Json | None) -> None:
        key = "not delivered" if event is None else f"{event['kind']}:{event.get('reason', '-')}"
        outcomes[key] = outcomes.get(key, 0) + 1

    def paced(payload: bytes) -> Json | None:
        return outcome_of(watch, payload, op)

    number = 0
    for field_name, make in _hostile_cases(site):
        for label, value in HOSTILE:
            number += 1
            event = paced(sign_command(make(f"hostile-{number}", value), op))
            count(event)
            if event is not None and event["kind"] == "accepted":
                print(f"hostile {label} in {field_name}: accepted ({event.get('detail')})")
    # The envelope's own strings.
    body = json.dumps(play(site, "tone1000.wav", "hostile-envelope")).encode()
    for label, value in HOSTILE:
        for payload in (
            envelope(COMMAND_TYPE, body, [(value, b"\x00" * 64)]),
            envelope(value, body, [(site.operator.id, b"\x00" * 64)]),
            json.dumps({"payloadType": COMMAND_TYPE, value: value}).encode(),
        ):
            event = paced(payload)
            assert event is None or event["kind"] == "rejected", (label, event)
            count(event)
    print(f"hostile strings: outcomes {dict(sorted(outcomes.items()))}")
    watch.accepted(site.cmd_topic, sign_command(report("after-hostile"), op), "after-hostile")
    assert daemon.stop() == 0

    assert daemon.raw, "the daemon printed nothing"
    longest = max(len(line) for line in daemon.raw)
    print(f"hostile strings: {len(daemon.raw)} log lines, the longest {longest} characters")
    problems = log_line_problems(daemon.raw)
    assert not problems, "\n".join(problems[:20])
    assert not [line for line in daemon.lines if "forged" in line]
