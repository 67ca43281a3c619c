"""``receiver-admin fleet`` and ``watch`` with the device registry: reports the enrolled key did
not sign are marked, signed (v1.1) and plain (v1.0) reports are both read, against a real broker.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.central import admin
from receiver.central.broker import Connection
from receiver.device_key import EVENT_TYPE, STATE_TYPE, DeviceKey, enrollment_line, seal_report
from receiver.timefmt import rfc3339
from tests.lab.broker import MosquittoBroker, Subscriber

PREFIX = "loa/v1"


def state(device: str) -> bytes:
    body = {"device": device, "online": True, "ts": rfc3339(time.time()), "state": "idle"}
    return json.dumps(body | {"volume": 70, "relays": {"amp": "off"}}).encode()


def test_fleet_marks_devices_whose_state_their_key_did_not_sign(
    broker: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = {
        name: DeviceKey(name, Ed25519PrivateKey.generate())
        for name in ("dev-a", "dev-b", "dev-c", "dev-d")
    }
    registry = tmp_path / "devices.jsonl"
    registry.write_text(
        "".join(enrollment_line(keys[n]) + "\n" for n in ("dev-a", "dev-b", "dev-c")),
        encoding="utf-8",
    )
    impostor = DeviceKey("dev-c", Ed25519PrivateKey.generate())
    with Subscriber(broker) as central:
        for device, payload in {
            "dev-a": seal_report(keys["dev-a"], STATE_TYPE, state("dev-a")),
            "dev-b": state("dev-b"),  # plain JSON: a v1.0 device, or anyone at all
            "dev-c": seal_report(impostor, STATE_TYPE, state("dev-c")),
            "dev-d": seal_report(keys["dev-d"], STATE_TYPE, state("dev-d")),  # never enrolled
        }.items():
            central.publish(f"{PREFIX}/dev/{device}/state", payload, retain=True)

    base = ["fleet", "--host", broker.host, "--port", str(broker.port), "--timeout", "1"]
    assert admin.main([*base, "--registry", str(registry)]) == 0
    names = [line.split("  ")[0] for line in capsys.readouterr().out.splitlines()[2:-1]]
    assert names == ["dev-a", "dev-b [UNSIGNED]", "dev-c [FORGED]", "dev-d [UNKNOWN DEVICE]"]

    assert admin.main(base) == 0  # without the registry: read, not judged
    rows = capsys.readouterr().out.splitlines()[2:-1]
    assert [row.split()[:3] for row in rows] == [[f"dev-{x}", "yes", "idle"] for x in "abcd"]


def test_watch_marks_each_report_by_its_verdict(
    broker: MosquittoBroker,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = DeviceKey("dev-a", Ed25519PrivateKey.generate())
    registry = tmp_path / "devices.jsonl"
    registry.write_text(enrollment_line(key) + "\n", encoding="utf-8")
    event = {"device": "dev-a", "n": 5, "ts": rfc3339(time.time()), "kind": "accepted"}
    genuine = seal_report(key, EVENT_TYPE, json.dumps(event).encode())
    older = seal_report(
        key, EVENT_TYPE, json.dumps(event | {"n": 4, "ts": "2026-01-01T00:00:00Z"}).encode()
    )
    topic = f"{PREFIX}/dev/dev-a/events"

    # The reports go out once the watch holds its subscription (a fixed sleep raced its
    # connect on a loaded machine, and the reports then went to nobody).
    subscribed = threading.Event()
    wait_subscribed = Connection.wait_subscribed

    def noting_subscribed(connection: Connection) -> None:
        wait_subscribed(connection)
        subscribed.set()

    monkeypatch.setattr(Connection, "wait_subscribed", noting_subscribed)

    def publish_later() -> None:
        subscribed.wait(timeout=10)
        with Subscriber(broker) as central:
            for payload in (genuine, genuine, older, json.dumps(event | {"n": 6}).encode()):
                central.publish(topic, payload)

    threading.Thread(target=publish_later, daemon=True).start()
    args = ["watch", "--device", "dev-a", "--host", broker.host, "--port", str(broker.port)]
    assert admin.main([*args, "--registry", str(registry), "--count", "4", "--timeout", "10"]) == 0
    marks = [line.rsplit("  [", 1)[-1] for line in capsys.readouterr().out.splitlines()]
    assert [m.split(":")[0].rstrip("]") for m in marks] == [
        "signed",
        "duplicate",
        "replayed",
        "unsigned",
    ]


def test_a_bad_registry_is_named_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = tmp_path / "devices.jsonl"
    registry.write_text("dev-a AAAA\n", encoding="utf-8")
    code = admin.main(["fleet", "--host", "127.0.0.1", "--port", "1", "--registry", str(registry)])
    assert code == 2
    assert f"{registry}:1: not a 'receiver enroll' line" in capsys.readouterr().err
