"""The central side never loses a device's event: ``watch`` reconnects, ``collect`` persists.

The collector is killed (SIGKILL) and the broker restarted while devices keep publishing; every
event ends up in SQLite exactly once. Devices are played by a publisher that, like the
receiver's outbox, sends each event again until the broker acknowledges it (so the broker may
deliver one twice: the collector must store it once).
"""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.central.conftest import PASSWORDS, Secured, device_event, device_state
from tests.lab.daemon import read_stream_lines, stopping

ROOT = Path(__file__).resolve().parents[2]
DEVICES = [f"loa-{i:03d}" for i in range(1, 6)]
EVENTS_PER_DEVICE = 120


def admin(secured: Secured, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "receiver.central.admin", *argv, *secured.login()],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


class Devices:
    """Publishes events as devices' outboxes do: each until acknowledged, resent if not."""

    def __init__(self, secured: Secured) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.username_pw_set("central", PASSWORDS["central"])
        self.client.reconnect_delay_set(1, 1)
        self.client.connect(secured.broker.host, secured.broker.port)
        self.client.loop_start()
        self.resent = 0

    def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = self.client.publish(topic, payload, qos=1, retain=retain)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                with suppress(RuntimeError, ValueError):
                    info.wait_for_publish(timeout=1.0)
                if info.is_published():
                    return
            self.resent += 1
            time.sleep(0.1)
        raise AssertionError(f"{topic}: never acknowledged")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def subscribed(devices: Devices, lines: queue.Queue[str], device: str = "loa-001") -> None:
    """Waits until a new ``watch`` prints ``device``'s retained state: its subscription is in
    place, so an event published now reaches it (starting one takes seconds on a busy board)."""
    devices.send(f"loa/v1/dev/{device}/state", device_state(device, time.time()), retain=True)
    line = lines.get(timeout=60)
    assert line.startswith("state "), line


def next_event_line(lines: queue.Queue[str], timeout: float = 10) -> str:
    """The next ``events`` line, past any retained state printed again after a reconnect."""
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        if not line.startswith("state "):
            return line


def stored(db: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(db) as conn:
        return [(d, n) for d, n in conn.execute("SELECT device, n FROM events ORDER BY device, n")]


def test_collector_killed_and_broker_restarted_mid_stream_loses_and_doubles_nothing(
    secured: Secured, tmp_path: Path
) -> None:
    db = tmp_path / "events.db"
    devices = Devices(secured)
    collect = ["collect", "--db", str(db), "--client-id", "central-collector"]
    try:
        for device in DEVICES:
            devices.send(
                f"loa/v1/dev/{device}/state", device_state(device, time.time()), retain=True
            )
        with stopping(admin(secured, *collect)) as first:
            assert first.stderr is not None
            said = first.stderr.readline()  # subscribed (its session now exists on the broker)
            assert said.startswith("collecting "), said + first.stderr.read()
            for n in range(1, EVENTS_PER_DEVICE + 1):
                for device in DEVICES:
                    devices.send(f"loa/v1/dev/{device}/events", device_event(device, n, "fault"))
                if n == 30:
                    first.send_signal(signal.SIGKILL)  # mid-stream, no goodbye
                    first.wait(timeout=10)
                if n == 60:
                    second = admin(secured, *collect)
                    assert second.stderr is not None
                    said = second.stderr.readline()  # connected and subscribed: it says so
                    assert said.startswith("collecting "), said + second.stderr.read()
                if n == 80:
                    secured.broker.restart()  # sessions and queued messages are persisted
                if n == 90:
                    assert second.poll() is None, second.stderr.read() if second.stderr else ""
        with stopping(second):
            expected = sorted((d, n) for d in DEVICES for n in range(1, EVENTS_PER_DEVICE + 1))
            deadline = time.monotonic() + 30
            while stored(db) != expected and time.monotonic() < deadline:
                time.sleep(0.2)
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=15) == 0
            assert second.stderr is not None
            log = second.stderr.read()
    finally:
        devices.close()
    got = stored(db)
    missing = sorted(set(expected) - set(got))
    assert got == expected, f"missing {missing[:10]}, log: {log}"  # none lost, none doubled
    assert "Traceback" not in log
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM event_conflicts").fetchone() == (0,)
        states = conn.execute("SELECT count(DISTINCT device) FROM states").fetchone()
    assert states == (len(DEVICES),)


def test_watch_reconnects_after_a_broker_restart_and_prints_each_event_once(
    secured: Secured,
) -> None:
    devices = Devices(secured)
    lines: queue.Queue[str] = queue.Queue()
    errors: queue.Queue[str] = queue.Queue()
    try:
        with stopping(admin(secured, "watch", "--device", "loa-001")) as watch:
            assert watch.stdout is not None and watch.stderr is not None
            read_stream_lines(watch.stdout, lines)
            read_stream_lines(watch.stderr, errors)
            subscribed(devices, lines)
            devices.send("loa/v1/dev/loa-001/events", device_event("loa-001", 1, "fault"))
            assert '"n":1' in next_event_line(lines)
            secured.broker.restart()
            deadline = time.monotonic() + 20
            said: list[str] = []
            while not any("reconnected" in s for s in said):
                said.append(errors.get(timeout=max(0.1, deadline - time.monotonic())))
            assert any("connection lost" in s for s in said)
            devices.send("loa/v1/dev/loa-001/events", device_event("loa-001", 2, "fault"))
            assert '"n":2' in next_event_line(lines)
            watch.send_signal(signal.SIGINT)
            assert watch.wait(timeout=30) == 0  # a loaded machine can be slow to let go
    finally:
        devices.close()
    threading.Event().wait(0.2)
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    assert not any('"n":1' in line or '"n":2' in line for line in rest)


def test_watch_with_a_session_prints_what_was_sent_while_it_was_away(secured: Secured) -> None:
    devices = Devices(secured)
    argv = ["watch", "--device", "loa-001", "--client-id", "desk-1", "--count", "1"]
    try:
        with stopping(admin(secured, *argv)) as first:
            assert first.stdout is not None
            lines: queue.Queue[str] = queue.Queue()
            read_stream_lines(first.stdout, lines)
            subscribed(devices, lines)  # --count counts events only, not this state
            devices.send("loa/v1/dev/loa-001/events", device_event("loa-001", 1, "fault"))
            assert first.wait(timeout=30) == 0  # --count 1: done after the first event
        devices.send("loa/v1/dev/loa-001/events", device_event("loa-001", 2, "fault"))
        with stopping(admin(secured, *argv)) as second:
            assert second.wait(timeout=30) == 0
            assert second.stdout is not None
            assert '"n":2' in second.stdout.read()
    finally:
        devices.close()
