"""Reports signed by the device, end to end: the real daemon signs, a real Mosquitto carries,
central's verifier (receiver/central/reports.py) judges. An attacker who can publish on the
device's topics forges, tampers with, replays and reorders reports; each one is flagged, and
every genuine report passes.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable

from receiver.central.reports import Registry, Report, ReportVerifier
from receiver.central.signing import SigningKey, command_payload, sign, sign_command
from receiver.device_key import EVENT_TYPE, STATE_TYPE
from tests.e2e.conftest import Site
from tests.e2e.test_daemon import play_payload, wait_event
from tests.lab.broker import Received, Subscriber
from tests.lab.daemon import DEVICE, Daemon

OTHER_DEVICE = "e2e-dev-02"


def enroll(site: Site) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "enroll", "--config", str(site.config)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    (line,) = result.stdout.splitlines()
    return line


def tampered(envelope: bytes, change: Callable[[dict[str, object]], None]) -> bytes:
    """The genuine envelope with its payload edited and the device's signature kept."""
    doc = json.loads(envelope)
    body = json.loads(base64.b64decode(doc["payload"]))
    change(body)
    doc["payload"] = base64.b64encode(json.dumps(body).encode()).decode()
    return json.dumps(doc).encode()


def test_forged_tampered_replayed_and_reordered_reports_are_each_flagged(
    site: Site, start_daemon: Callable[[], Daemon]
) -> None:
    entry = enroll(site)
    assert json.loads(entry)["device"] == DEVICE
    key_file = site.root / "state" / "device.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    registry = Registry.parse([entry, json.dumps({"device": OTHER_DEVICE, "ed25519": entry_of()})])

    with Subscriber(site.broker, [site.events_topic, site.state_topic]) as central:
        daemon = start_daemon()
        daemon.wait_log(lambda line: line.get("event") == "broker_connected", 20)
        for number in (1, 2):
            central.publish(
                site.cmd_topic,
                sign_command(
                    play_payload(site, "tone1000.wav", message_id=f"play-{number}"),
                    [site.operator],
                ),
            )
            wait_event(central, site, "finished", f"play-{number}")
        central.publish(
            site.cmd_topic,
            sign_command(
                command_payload("report", {}, env="lab", aud=[f"dev:{DEVICE}"], message_id="rep"),
                [site.operator],
            ),
        )
        wait_event(central, site, "accepted", "rep")
        genuine = list(central.seen)

    # The device's own reports, in the order they came: every one signed and new.
    verifier = ReportVerifier(registry)
    verdicts = [verifier.check(m.topic, m.raw) for m in genuine]
    assert {v.verdict for v in verdicts} == {"signed"}, verdicts
    events = [m for m in genuine if m.topic == site.events_topic]
    states = [m for m in genuine if m.topic == site.state_topic and b'"online":true' in m.payload]
    assert len(events) >= 6 and len(states) >= 2

    attacker = SigningKey(DEVICE, SigningKey.generate("attacker").private)
    newest_n = max(json.loads(m.payload)["n"] for m in events)
    finished = json.loads(events[-1].payload)
    attacks: dict[str, tuple[str, bytes]] = {
        # plain JSON, as every device sent before v1.1
        "unsigned": (
            site.events_topic,
            json.dumps({**finished, "n": newest_n + 1, "ref": "play-999"}).encode(),
        ),
        # an envelope signed by a key that is not the enrolled one, under the device's key id
        "forged key": (
            site.events_topic,
            sign(EVENT_TYPE, json.dumps({**finished, "n": newest_n + 2}).encode(), [attacker]),
        ),
        # the genuine envelope with its report changed
        "tampered": (
            site.events_topic,
            tampered(events[-1].raw, lambda body: body.update(kind="failed", reason="policy")),
        ),
        # another device's genuine report, published as this device's
        "wrong device": (
            f"loa/v1/dev/{OTHER_DEVICE}/events",
            events[-1].raw,
        ),
        # a signed state, on the events topic
        "wrong topic": (site.events_topic, states[-1].raw),
        # an event seen before, sent again
        "replayed": (site.events_topic, events[1].raw),
        # an old state after a newer one (it would show an old volume, or playing)
        "stale state": (site.state_topic, states[0].raw),
    }
    with Subscriber(site.broker, ["loa/v1/dev/+/events", site.state_topic]) as collector:
        for topic, payload in attacks.values():
            collector.publish(topic, payload)
        sent = {(topic, payload) for topic, payload in attacks.values()}
        arrived: list[Received] = []
        while len(arrived) < len(attacks):  # skipping the retained state, and any fresh one
            arrived.append(collector.wait_for(lambda m: (m.topic, m.raw) in sent))
    judged = {
        name: verifier.check(message.topic, message.raw)
        for name, message in zip(attacks, arrived, strict=True)
    }
    expected = {
        "unsigned": "unsigned",
        "forged key": "forged",
        "tampered": "forged",
        "wrong device": "forged",
        "wrong topic": "forged",
        "replayed": "duplicate",
        "stale state": "replayed",
    }
    assert {name: report.verdict for name, report in judged.items()} == expected, judged

    # Reordered: a collector that came in after the device's first events gets an older one
    # after newer ones; it has never seen it, and still flags it.
    late = ReportVerifier(registry)
    later: list[Report] = [late.check(m.topic, m.raw) for m in events[2:]]
    assert {r.verdict for r in later} == {"signed"}
    reordered = late.check(events[0].topic, events[0].raw)
    assert reordered.verdict == "replayed", reordered

    # A reader without the registry still gets the JSON, marked unchecked.
    blind = ReportVerifier(None).check(events[-1].topic, events[-1].raw)
    assert blind.verdict == "unchecked" and blind.body == json.loads(events[-1].payload)
    # The state on the board (receiver status) stays plain JSON.
    status = json.loads((site.root / "state" / "status.json").read_text(encoding="utf-8"))
    assert status["device"] == DEVICE
    assert STATE_TYPE not in json.dumps(status)


def entry_of() -> str:
    return SigningKey.generate(OTHER_DEVICE).public_b64
