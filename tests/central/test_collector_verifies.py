"""The collector with the device registry: what the enrolled key did not sign, or that replays an
older report, is set aside (not counted in events, states or the proof-of-play report), also
after the collector restarts; a plain redelivery is still just a duplicate. Real Mosquitto."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.central import admin
from receiver.central.broker import BrokerOptions
from receiver.central.collector import Collector, open_database
from receiver.central.reports import Registry, ReportVerifier
from receiver.device_key import EVENT_TYPE, DeviceKey, enrollment_line, seal_report
from receiver.timefmt import rfc3339
from tests.lab.broker import MosquittoBroker, Subscriber

DEVICE = "dev-a"
TOPIC = f"loa/v1/dev/{DEVICE}/events"


def event(n: int, kind: str, ts: float, ref: str = "play-1") -> bytes:
    body = {"device": DEVICE, "n": n, "ts": rfc3339(ts), "kind": kind, "ref": ref}
    return json.dumps(body, separators=(",", ":")).encode()


def collect(db_path: Path, broker: MosquittoBroker, registry: Registry) -> Collector:
    options = BrokerOptions(host=broker.host, port=broker.port)
    collector = Collector(
        open_database(db_path), options, "loa/v1", "collector-test", ReportVerifier(registry)
    )
    time.sleep(0.5)  # its subscription is in place
    return collector


def drain(collector: Collector, expected: int) -> None:
    deadline = time.monotonic() + 10
    stored = 0
    while stored < expected and time.monotonic() < deadline:
        stored += collector.turn(0.2)
    assert stored == expected, stored


def test_unsigned_forged_and_replayed_reports_are_set_aside_and_not_counted(
    broker: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = DeviceKey(DEVICE, Ed25519PrivateKey.generate())
    impostor = DeviceKey(DEVICE, Ed25519PrivateKey.generate())
    registry = Registry.parse([enrollment_line(key)])
    db_path = tmp_path / "collected.db"
    now = time.time() - 60
    genuine = [
        seal_report(key, EVENT_TYPE, event(n, kind, now + n))
        for n, kind in ((2, "accepted"), (3, "started"), (4, "finished"))
    ]
    held_back = seal_report(key, EVENT_TYPE, event(1, "finished", now - 3600, "old-play"))

    collector = collect(db_path, broker, registry)
    with Subscriber(broker) as device:
        for payload in genuine:
            device.publish(TOPIC, payload)
        device.publish(TOPIC, genuine[1])  # redelivered: at least once
        device.publish(TOPIC, event(5, "finished", now + 5, "play-2"))  # unsigned
        device.publish(TOPIC, seal_report(impostor, EVENT_TYPE, event(6, "finished", now + 6)))
    drain(collector, 6)
    assert (collector.counts.events, collector.counts.duplicates) == (3, 1)
    assert collector.counts.suspect == 2
    collector.close()

    # Restarted, the collector still knows n 4 was the newest: an older event it never stored,
    # replayed now, is set aside too.
    collector = collect(db_path, broker, registry)
    with Subscriber(broker) as attacker:
        attacker.publish(TOPIC, held_back)
        attacker.publish(TOPIC, genuine[2])
    drain(collector, 2)
    assert collector.counts.suspect == 1 and collector.counts.duplicates == 1
    collector.close()

    db = open_database(db_path)
    stored = [n for (n,) in db.execute("SELECT n FROM events ORDER BY n")]
    aside = [v for (v,) in db.execute("SELECT verdict FROM suspect_reports ORDER BY rowid")]
    db.close()
    assert stored == [2, 3, 4]
    assert aside == ["unsigned", "forged", "replayed"]

    assert admin.main(["report", "--db", str(db_path), "--tz", "UTC"]) == 0
    err = capsys.readouterr().err
    assert "not counted" in err and "1 forged, 1 replayed, 1 unsigned" in err, err
