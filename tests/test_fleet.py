"""``receiver-admin fleet`` against a real Mosquitto holding retained device states."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from receiver.central import admin
from receiver.timefmt import rfc3339
from tests.central.conftest import device_state
from tests.lab.broker import MosquittoBroker, Subscriber
from tests.lab.daemon import read_stream_lines, stopping

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "loa/v1"


def state(device: str, now: float, **fields: Any) -> bytes:
    """The device's state message as it sent it five seconds before ``now``."""
    return device_state(device, now - 5.0, **fields)


def publish_fleet(broker: MosquittoBroker) -> None:
    now = time.time()
    with Subscriber(broker) as central:
        central.publish(
            f"{PREFIX}/dev/loa-001/state",
            state(
                "loa-001",
                now,
                state="playing",
                playing={
                    "ref": "cmd-1",
                    "title": "Bản tin sáng",
                    "priority": "normal",
                    "since": rfc3339(now - 30),
                },
                relays={"amp": "on"},
                schedules={"morning": 12, "evening": 3},
                trust_version=3,
                volume=80,
            ),
            retain=True,
        )
        central.publish(
            f"{PREFIX}/dev/loa-002/state",
            state("loa-002", now - 7200, clock_synced=False),
            retain=True,
        )
        central.publish(
            f"{PREFIX}/dev/loa-003/state",
            b'{"device": "loa-003", "online": false}',
            retain=True,
        )
        # Another prefix and another topic of a device: not part of this fleet's table.
        central.publish("loa/lab/dev/loa-999/state", state("loa-999", now), retain=True)
        central.publish(f"{PREFIX}/dev/loa-001/events", b'{"n": 1}', retain=True)


def rows_of(output: str) -> dict[str, list[str]]:
    """Device -> cells, from the table (columns are separated by at least two spaces)."""
    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("DEVICE"))
    starts = [lines[header].index(name) for name in admin.FLEET_COLUMNS]
    found: dict[str, list[str]] = {}
    for line in lines[header + 1 :]:
        if not line.startswith("loa-"):
            continue
        bounds = [*starts[1:], len(line) + 1]
        cells = [line[a:b].strip() for a, b in zip(starts, bounds, strict=True)]
        found[cells[0]] = cells
    return found


def test_fleet_prints_one_row_per_device(
    broker: MosquittoBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_fleet(broker)
    started = time.monotonic()
    code = admin.main(
        ["fleet", "--host", broker.host, "--port", str(broker.port), "--timeout", "1"]
    )
    assert code == 0
    assert time.monotonic() - started < 5.0  # done once the retained states stop coming
    output = capsys.readouterr().out
    assert f"{PREFIX}/dev/+/state" in output.splitlines()[0]
    rows = rows_of(output)
    assert set(rows) == {"loa-001", "loa-002", "loa-003"}
    *cells, last_seen = rows["loa-001"]
    assert cells == [
        "loa-001",
        "yes",
        "playing: Bản tin sáng",
        "80",
        "on",
        "evening:3,morning:12",
        "3",
        "0",
        "0",
    ]
    assert last_seen in {"5s", "6s", "7s", "8s"}  # ts was 5 s old, plus the collection
    assert rows["loa-002"] == ["loa-002", "yes", "idle", "70", "off", "-", "0", "0", "0", "2h?"]
    assert rows["loa-003"] == ["loa-003", "no", "-", "-", "-", "-", "-", "-", "-", "-"]
    assert output.splitlines()[-2:] == [
        "(an age ending in ? comes from a device whose clock is not synchronised)",
        "3 devices: 2 online, 1 offline or unknown, 1 playing, 0 failing, 1 below trust 3, "
        "0 missing media, 0 with pending events",
    ]


def test_fleet_with_nothing_retained_says_so(
    broker: MosquittoBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["fleet", "--host", broker.host, "--port", str(broker.port), "--timeout", "0.3"]
    assert admin.main(args) == 0
    assert "no device has a retained state here" in capsys.readouterr().out


def test_fleet_cannot_connect_exits_3(
    stopped_broker: MosquittoBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["fleet", "--host", stopped_broker.host, "--port", str(stopped_broker.port)]
    assert admin.main(args) == 3
    assert "cannot connect" in capsys.readouterr().err


def test_fleet_watch_redraws_and_follows_changes_until_ctrl_c(broker: MosquittoBroker) -> None:
    publish_fleet(broker)
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "receiver.central.admin",
            "fleet",
            "--watch",
            "--host",
            broker.host,
            "--port",
            str(broker.port),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    lines: queue.Queue[str] = queue.Queue()
    with stopping(child):
        assert child.stdout is not None
        read_stream_lines(child.stdout, lines)

        def next_summary(timeout: float = 5.0) -> str:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if " devices: " in line or " device: " in line:
                    return line
            raise AssertionError("no table was drawn")

        # The first draw can come before every retained message is in: wait for all three.
        deadline = time.monotonic() + 5.0
        while "3 devices" not in next_summary():
            assert time.monotonic() < deadline
        with Subscriber(broker) as central:  # loa-003 comes back, loa-002 is decommissioned
            central.publish(f"{PREFIX}/dev/loa-003/state", state("loa-003", time.time()))
            central.publish(f"{PREFIX}/dev/loa-002/state", b"", retain=True)
        deadline = time.monotonic() + 5.0
        while not next_summary().startswith("2 devices: 2 online, 0 offline or unknown, 1 playing"):
            assert time.monotonic() < deadline
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=30) == 0  # a loaded machine can be slow to let go
        assert child.stderr is not None
        assert "Traceback" not in child.stderr.read()


def test_a_state_older_than_the_stale_limit_is_not_shown_online(
    broker: MosquittoBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    """A board's retained "online" state 20 minutes old (it died without its will being
    published) showed ONLINE ``yes`` while the summary counted it offline and ``--offline``
    listed it."""
    now = time.time()
    with Subscriber(broker) as central:
        central.publish(f"{PREFIX}/dev/loa-001/state", state("loa-001", now), retain=True)
        central.publish(f"{PREFIX}/dev/loa-002/state", state("loa-002", now - 1200), retain=True)
    login = ["--host", broker.host, "--port", str(broker.port), "--timeout", "1"]
    assert admin.main(["fleet", *login]) == 0
    output = capsys.readouterr().out
    rows = rows_of(output)
    assert rows["loa-001"][1] == "yes"
    assert rows["loa-002"][1] == "stale"
    assert rows["loa-002"][-1] == "20m"
    assert "1 online, 1 offline or unknown" in output.splitlines()[-1]
    assert admin.main(["fleet", "--offline", *login]) == 0
    assert set(rows_of(capsys.readouterr().out)) == {"loa-002"}
