"""A broker as a province runs it (passwords, ACLs) and what the operator's tool needs around it."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from receiver.central.signing import SigningKey
from receiver.device_key import STATE_TYPE, DeviceKey, enrollment_line, seal_report
from receiver.timefmt import rfc3339
from tests.lab.broker import MosquittoBroker, Received, password_config

PREFIX = "loa/v1"
PASSWORDS = {"central": "central pw", "viewer": "viewer pw", "loa-001": "device pw"}
#: The devices the ``registry`` fixture enrolls, each with its key in ``keys``.
ENROLLED = ("loa-001", "loa-002", "loa-003")


@dataclass(frozen=True)
class Secured:
    """A running Mosquitto with logins and ACLs, and the files an operator passes to the tool."""

    broker: MosquittoBroker
    directory: Path

    def password_file(self, user: str, password: str | None = None) -> Path:
        path = self.directory / f"{user}.password"
        path.write_text((password if password is not None else PASSWORDS[user]) + "\n")
        return path

    def login(self, user: str = "central", password: str | None = None) -> list[str]:
        return [
            "--host",
            self.broker.host,
            "--port",
            str(self.broker.port),
            "--username",
            user,
            "--password-file",
            str(self.password_file(user, password)),
        ]


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    acl = workdir / "acl"
    # central writes commands and documents and reads everything; a viewer may only read the
    # states; a device reads its commands and writes its own state and events.
    acl.write_text(
        "user central\ntopic readwrite loa/v1/#\n\n"
        "user viewer\ntopic read loa/v1/dev/+/state\n\n"
        "pattern read loa/v1/dev/%u/cmd\npattern read loa/v1/grp/+/cmd\n"
        "pattern read loa/v1/grp/+/schedule\npattern read loa/v1/trust\n"
        "pattern write loa/v1/dev/%u/state\npattern write loa/v1/dev/%u/events\n"
    )
    config = [*password_config(workdir, PASSWORDS), f"acl_file {acl}"]
    with MosquittoBroker(workdir, extra_config=config) as broker:
        yield Secured(broker, tmp_path)


@pytest.fixture
def operator_key(tmp_path: Path) -> Path:
    path = tmp_path / "op-1.pem"
    SigningKey.generate("op-1").save(path)
    return path


@pytest.fixture
def keys() -> dict[str, DeviceKey]:
    """The enrolled devices' own keys, which seal their states as the boards do."""
    return {name: DeviceKey(name, Ed25519PrivateKey.generate()) for name in ENROLLED}


@pytest.fixture
def registry(tmp_path: Path, keys: dict[str, DeviceKey]) -> Path:
    """The registry of enrolled device keys (``--registry``) that vouches for ``keys``."""
    path = tmp_path / "devices.jsonl"
    path.write_text("".join(enrollment_line(key) + "\n" for key in keys.values()))
    return path


def signed_state(key: DeviceKey, groups: list[str]) -> bytes:
    """A state listing ``groups``, sealed by ``key`` as a board seals it."""
    return seal_report(key, STATE_TYPE, device_state(key.id, time.time(), groups=groups))


def leave_states(secured: Secured, states: dict[str, bytes]) -> None:
    """Retain each device's state on the broker, as the boards leave them."""
    with Spy(secured) as spy:
        for device, payload in states.items():
            spy.publish(f"loa/v1/dev/{device}/state", payload)


def device_state(device: str, now: float, **fields: Any) -> bytes:
    message: dict[str, Any] = {
        "device": device,
        "online": True,
        "ts": rfc3339(now),
        "sw": "0.2.0",
        "state": "idle",
        "volume": 70,
        "relays": {"amp": "off"},
        "schedules": {},
        "trust_version": 0,
        "clock_synced": True,
        "cache": {"bytes": 0, "files": 0, "missing": 0},
        "uptime_s": 100,
    }
    message.update(fields)
    return json.dumps(message, ensure_ascii=False).encode("utf-8")


def device_event(device: str, n: int, kind: str, ts: float | None = None, **fields: Any) -> bytes:
    event = {"device": device, "n": n, "ts": rfc3339(time.time() if ts is None else ts)}
    event["kind"] = kind
    event.update(fields)
    return json.dumps(event).encode("utf-8")


class Spy:
    """A client logged in as central that records every message under ``topic``."""

    def __init__(self, secured: Secured, topic: str = "loa/v1/#", retained: bool = True) -> None:
        self.seen: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._retained = retained
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.username_pw_set("central", PASSWORDS["central"])
        self._client.on_message = self._message
        self._client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
        self._suback: dict[int, threading.Event] = {}
        self._client.on_subscribe = self._on_subscribe
        self._client.connect(secured.broker.host, secured.broker.port)
        self._client.loop_start()
        if not self._subscribed.wait(5):
            raise AssertionError("the spy could not subscribe")

    def _on_subscribe(self, _c: mqtt.Client, _u: object, mid: int, *_rest: object) -> None:
        self._subscribed.set()
        with self._lock:
            done = self._suback.get(mid)
        if done is not None:
            done.set()

    def settle(self) -> None:
        """Return once everything the broker had for this spy has arrived: its retained
        messages, and what it received from other clients before now (what a tool published and
        saw acknowledged before it returned). The broker answers in order on one connection,
        so the SUBACK of one more subscription comes after all of it: no fixed wait, and an
        absence seen after this is an absence."""
        done = threading.Event()
        with self._lock:
            _rc, mid = self._client.subscribe("loa/v1/spy-settle", qos=1)
            assert mid is not None
            self._suback[mid] = done
        if not done.wait(5):
            raise AssertionError("the broker did not answer the spy's subscription")

    def _message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.retain and not self._retained:
            return
        with self._lock:
            self.seen.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos))

    def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)
        if not info.is_published():
            raise AssertionError(f"{topic}: not acknowledged")

    def topics(self) -> list[str]:
        with self._lock:
            return [r.topic for r in self.seen]

    def wait_for(self, topic: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while topic not in self.topics():
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing on {topic}; seen {self.topics()}")
            time.sleep(0.02)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Spy:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def read_retained(secured: Secured, topic: str) -> dict[str, Any] | None:
    """The payload of the envelope retained on ``topic`` now, as a fresh subscriber sees it."""
    with Spy(secured, topic) as spy:
        spy.settle()
        if not spy.seen:
            return None
        envelope = json.loads(spy.seen[0].payload)
    decoded: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return decoded
