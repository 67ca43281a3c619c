"""Device-signed reports against the tricks the verifier must not fall for (protocol §14).

Each test builds the reports a device really signs, then changes what an attacker who can
publish on the device's topics could change, and checks that nothing but the real report is
``signed``.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.central.reports import Registry, RegistryError, ReportVerifier, open_report
from receiver.device_key import EVENT_TYPE, STATE_TYPE, DeviceKey, enrollment_line, seal_report
from receiver.timefmt import rfc3339

DEVICE = "loa-001"
EVENTS = f"loa/v1/dev/{DEVICE}/events"
STATE = f"loa/v1/dev/{DEVICE}/state"


def device_key() -> DeviceKey:
    return DeviceKey(DEVICE, Ed25519PrivateKey.generate())


def verifier(key: DeviceKey) -> ReportVerifier:
    return ReportVerifier(Registry.parse([enrollment_line(key)]))


def event(key: DeviceKey, n: int, ts: float, kind: str = "finished") -> bytes:
    body = {"device": DEVICE, "n": n, "ts": rfc3339(ts), "kind": kind}
    return seal_report(key, EVENT_TYPE, json.dumps(body, separators=(",", ":")).encode())


def test_an_event_from_before_a_counter_restart_is_still_a_replay() -> None:
    key = device_key()
    check = verifier(key)
    start = time.time() - 3600
    old = [event(key, n, start + n) for n in range(1, 501)]
    for payload in old:
        assert check.check(EVENTS, payload).verdict == "signed"
    # The device's store is reset: it numbers from 1 again, later.
    for n in range(1, 4):
        assert check.check(EVENTS, event(key, n, start + 1000 + n)).verdict == "signed"

    # Someone who recorded event 450 before the reset publishes it again: its n is above
    # anything the device has said since the reset, but it is older than the restart.
    replay = check.check(EVENTS, old[449])

    assert replay.verdict == "replayed", replay
    assert check.check(EVENTS, event(key, 4, start + 1010)).verdict == "signed"


def test_an_envelope_with_a_key_twice_is_not_read_two_ways() -> None:
    key = device_key()
    check = verifier(key)
    genuine = json.loads(event(key, 1, time.time(), kind="finished"))
    lie = base64.b64encode(
        json.dumps({"device": DEVICE, "n": 1, "ts": rfc3339(time.time()), "kind": "failed"})
        .replace(" ", "")
        .encode()
    ).decode()
    # A reader that takes the first "payload" sees the lie; one that takes the last, the
    # signed report. Whichever this verifier takes, it must not call the message signed.
    text = (
        f'{{"payloadType":"{EVENT_TYPE}","payload":"{lie}","payload":"{genuine["payload"]}",'
        f'"signatures":{json.dumps(genuine["signatures"])}}}'
    )

    report = check.check(EVENTS, text.encode())

    assert report.verdict == "malformed", report
    assert open_report(text.encode()) is None  # nor shown as if it were a report


def test_a_signed_body_with_a_key_twice_is_malformed() -> None:
    key = device_key()
    check = verifier(key)
    body = (
        f'{{"device":"{DEVICE}","n":1,"ts":"{rfc3339(time.time())}",'
        '"kind":"failed","kind":"finished"}'
    ).encode()

    assert check.check(EVENTS, seal_report(key, EVENT_TYPE, body)).verdict == "malformed"


def test_another_spelling_of_the_same_base64_is_not_a_second_report() -> None:
    key = device_key()
    check = verifier(key)
    envelope = json.loads(event(key, 1, time.time()))
    unpadded = dict(envelope, payload=envelope["payload"].rstrip("="))
    wrapped = dict(envelope, payload=envelope["payload"][:10] + "\n" + envelope["payload"][10:])
    assert check.check(EVENTS, json.dumps(envelope).encode()).verdict == "signed"

    for spelling in (unpadded, wrapped):
        if spelling["payload"] == envelope["payload"]:
            continue  # a payload whose base64 has no padding to strip
        verdict = check.check(EVENTS, json.dumps(spelling).encode()).verdict
        assert verdict == "malformed", spelling


def test_an_oversized_report_is_refused_before_it_is_parsed() -> None:
    key = device_key()
    check = verifier(key)
    body = {"device": DEVICE, "online": True, "ts": rfc3339(time.time()), "pad": "x" * 40_000}
    payload = seal_report(key, STATE_TYPE, json.dumps(body).encode())

    report = check.check(STATE, payload)

    assert report.verdict == "malformed"
    assert "bytes" in report.detail


def test_an_empty_registry_is_refused_not_taken_as_no_device_enrolled(tmp_path: Path) -> None:
    """An empty registry file (a path slip, or ``>`` where ``>>`` was meant) made every device
    ``unknown_device``: the collector counted nothing and said so only in the monthly report."""
    empty = tmp_path / "devices.jsonl"
    empty.write_text("# enrolled devices\n\n", encoding="utf-8")
    with pytest.raises(RegistryError, match="enrolls no device"):
        Registry.load(empty)


def test_what_the_verifier_remembers_per_device_stays_small() -> None:
    """A collector runs for months over thousands of devices: it remembered 10,000 event digests
    per device (about 1.7 MB each, 5 GB for a province of 3,000). A redelivery comes within the
    broker's in-flight window, far fewer; an older copy is still never counted (n below the
    newest: replayed, and the collector finds it stored)."""
    key = device_key()
    check = verifier(key)
    start = time.time() - 3600
    sent = [event(key, n, start + n) for n in range(1, 2001)]
    for payload in sent:
        assert check.check(EVENTS, payload).verdict == "signed"

    assert len(check.memory(DEVICE).events) <= 512
    assert check.check(EVENTS, sent[-20]).verdict == "duplicate"  # a redelivery
    assert check.check(EVENTS, sent[10]).verdict == "replayed"  # long gone: never counted
