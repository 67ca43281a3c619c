"""Fleet view: ``receiver-admin fleet`` and ``report`` at province size, beside their floors.

What it measures. Each figure is one fresh Python process (so its peak RSS is its own), timed
from start to exit, median of ``--runs`` runs:

1. ``fleet``: the real command (``python -m receiver.central.admin fleet``) against a real
   Mosquitto holding 1,000 retained device states, drawing the whole table. Floors, in the same
   run: (i) a bare paho client that subscribes to the same states and stops the same way (once
   they stop coming for 0.5 s); (ii) a process that reads the same 1,000 states from SQLite
   and decodes their JSON.
2. ``report``: the proof-of-play report (``report --db ... --csv``, output to /dev/null) over
   a month of events from 1,000 devices (30 days x 4 plays x 3 events, plus a state a day:
   360,000 events, 30,000 states), as ``collect`` stores them. Floor: a process that reads the
   same event rows of that month from the same SQLite file, in the report's order.

How to read it: seconds and peak RSS (MiB) per process, the command beside its floor with their
ratio. The interpreter's start (about 0.1 s and 10 MiB) is in every figure, floors included.
Compare ratios between runs, not raw figures: the machine is shared. No figure is asserted.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from bench._common import BenchError, parser_for, ratio, run_main
from receiver.central import collector
from receiver.timefmt import rfc3339
from tests.lab.broker import MosquittoBroker, Subscriber

DEVICES = 1000
DAYS = 30
PLAYS_PER_DAY = 4
HCM = ZoneInfo("Asia/Ho_Chi_Minh")
ROOT = Path(__file__).resolve().parents[1]

# One measured child: runs ``body`` (Python source using ARGS), prints seconds and peak RSS.
CHILD = """
import json, sys, time
start = time.monotonic()
ARGS = json.loads(sys.argv[1])
{body}
took = time.monotonic() - start
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
peak = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
print(json.dumps({{"s": took, "rss_kib": int(peak)}}))
"""

ADMIN = """
from receiver.central.admin import main
import contextlib, io, os
with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
    code = main(ARGS["argv"])
assert code == 0, code
"""

PAHO_FLOOR = """
import queue, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
got = queue.Queue()
client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
client.on_connect = lambda c, *a: c.subscribe("loa/v1/dev/+/state", qos=1)
client.on_message = lambda c, u, m: got.put((m.topic, bytes(m.payload)))
client.connect(ARGS["host"], ARGS["port"])
client.loop_start()
states = {}
topic, payload = got.get(timeout=10)
states[topic] = payload
while True:
    try:
        topic, payload = got.get(timeout=0.5)
    except queue.Empty:
        break
    states[topic] = payload
client.disconnect()
client.loop_stop()
assert len(states) == ARGS["count"], len(states)
"""

SQLITE_STATES_FLOOR = """
import json, sqlite3
db = sqlite3.connect(ARGS["db"])
rows = db.execute(
    "SELECT device, raw FROM states s WHERE ts_utc = "
    "(SELECT max(ts_utc) FROM states WHERE device = s.device)"
).fetchall()
decoded = {device: json.loads(raw) for device, raw in rows}
assert len(decoded) == ARGS["count"], len(decoded)
"""

SQLITE_EVENTS_FLOOR = """
import sqlite3
db = sqlite3.connect(ARGS["db"])
count = 0
for row in db.execute(
    "SELECT device, n, ts_utc, kind, ref, reason, detail FROM events "
    "WHERE ts_utc >= ? AND ts_utc < ? ORDER BY device, n", (ARGS["lo"], ARGS["hi"])
):
    count += 1
assert count == ARGS["count"], count
"""


def measure(body: str, args: dict[str, object], runs: int) -> tuple[float, float]:
    """Median seconds and median peak RSS (MiB) of ``runs`` fresh processes running ``body``."""
    seconds, rss = [], []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", CHILD.format(body=body), json.dumps(args)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"a measured process failed:\n{done.stderr[-2000:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        seconds.append(figures["s"])
        rss.append(figures["rss_kib"] / 1024)
    return statistics.median(seconds), statistics.median(rss)


def state(device: str, now: float, rng: random.Random) -> dict[str, object]:
    return {
        "device": device,
        "online": True,
        "ts": rfc3339(now - rng.uniform(0, 60)),
        "sw": "0.2.0",
        "groups": [f"commune-{rng.randrange(100)}"],
        "state": "idle",
        "volume": 70,
        "relays": {"amp": "off"},
        "schedules": {"morning": 12},
        "trust_version": 3,
        "clock_synced": True,
        "cache": {"bytes": 12_345_678, "files": 4, "missing": 0},
        "uptime_s": 86_400,
        "link": {"up": True, "last_error": None, "reconnects": 2},
        "outbox": {"pending": 0, "dropped": 0},
    }


def month_database(path: Path, first_day: datetime) -> tuple[int, float, float]:
    """A month of events from DEVICES devices as collect stores them; (events, lo, hi)."""
    rng = random.Random(7)  # noqa: S311 - reproducible data, not a secret
    db = collector.open_database(path)
    db.execute("PRAGMA synchronous=OFF")  # making the data is not what is measured
    events: list[tuple[object, ...]] = []
    states: list[tuple[object, ...]] = []
    for d in range(DEVICES):
        device = f"loa-{d:04d}"
        n = 0
        for day in range(DAYS):
            date = first_day + timedelta(days=day)
            for play in range(PLAYS_PER_DAY):
                start = date.replace(hour=6 + 3 * play).timestamp() + rng.uniform(0, 3)
                ref = f"morning/e{play}/{date.date().isoformat()}"
                for kind, at in (
                    ("accepted", start - 1),
                    ("started", start),
                    ("finished", start + 900),
                ):
                    n += 1
                    raw = json.dumps(
                        {"device": device, "n": n, "ts": rfc3339(at), "kind": kind, "ref": ref}
                    ).encode()
                    events.append((device, n, at, kind, ref, None, None, at, raw))
            noon = date.replace(hour=12).timestamp()
            body = state(device, noon, rng)
            states.append(
                (device, noon, 1, "idle", None, None, None, 70, noon, json.dumps(body).encode())
            )
        if len(events) > 50_000:
            _insert(db, events, states)
            events, states = [], []
    _insert(db, events, states)
    lo = first_day.timestamp()
    hi = (first_day + timedelta(days=DAYS)).timestamp()
    (count,) = db.execute("SELECT count(*) FROM events").fetchone()
    db.close()
    return int(count), lo, hi


def _insert(
    db: sqlite3.Connection,
    events: Sequence[tuple[object, ...]],
    states: Sequence[tuple[object, ...]],
) -> None:
    db.execute("BEGIN")
    db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", events)
    db.executemany("INSERT INTO states VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", states)
    db.execute("COMMIT")


def line(name: str, figures: tuple[float, float], floor: tuple[float, float]) -> str:
    return (
        f"  {name:34} {figures[0]:7.2f} s  x{ratio(figures[0], floor[0]):5.1f}   "
        f"{figures[1]:6.1f} MiB  x{ratio(figures[1], floor[1]):4.1f}"
    )


def floor_line(name: str, figures: tuple[float, float]) -> str:
    return f"  {name:34} {figures[0]:7.2f} s           {figures[1]:6.1f} MiB"


def run(tmp: Path, runs: int) -> None:
    first_day = datetime(2026, 3, 1, tzinfo=HCM)
    db_path = tmp / "month.db"
    began = time.monotonic()
    count, lo, hi = month_database(db_path, first_day)
    print(
        f"made a month of events: {count} events, {DEVICES} devices "
        f"({time.monotonic() - began:.0f} s)"
    )
    load_before = os.getloadavg()

    with MosquittoBroker(tmp / "mosquitto") as broker:
        rng = random.Random(3)  # noqa: S311 - reproducible data, not a secret
        now = time.time()
        with Subscriber(broker) as publisher:
            for d in range(DEVICES):
                device = f"loa-{d:04d}"
                payload = json.dumps(state(device, now, rng)).encode()
                publisher.publish(f"loa/v1/dev/{device}/state", payload, retain=True)
        where = ["--host", broker.host, "--port", str(broker.port)]
        fleet = measure(ADMIN, {"argv": ["fleet", "--timeout", "30", *where]}, runs)
        paho_floor = measure(
            PAHO_FLOOR, {"host": broker.host, "port": broker.port, "count": DEVICES}, runs
        )
    sqlite_states = measure(SQLITE_STATES_FLOOR, {"db": str(db_path), "count": DEVICES}, runs)
    report = measure(
        ADMIN,
        {
            "argv": [
                "report",
                "--db",
                str(db_path),
                "--from",
                "2026-03-01",
                "--to",
                "2026-03-30",
                "--csv",
            ]
        },
        runs,
    )
    events_floor = measure(
        SQLITE_EVENTS_FLOOR, {"db": str(db_path), "lo": lo, "hi": hi, "count": count}, runs
    )
    load_after = os.getloadavg()

    print(f"\nfleet: {DEVICES} retained states on Mosquitto (median of {runs} processes)")
    print(line("receiver-admin fleet", fleet, paho_floor) + "   (ratios to the paho floor)")
    print(floor_line("floor: paho subscriber, same states", paho_floor))
    print(floor_line("floor: same states from SQLite", sqlite_states))
    print(f"\nreport: {count} events of {DEVICES} devices over {DAYS} days (median of {runs})")
    print(line("receiver-admin report --db --csv", report, events_floor))
    print(floor_line("floor: same event rows from SQLite", events_floor))
    print(
        f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
        f"{os.cpu_count()} CPUs; no figure here is asserted"
    )


def main(argv: Sequence[str] = ()) -> int:
    parser = parser_for("fleet_view", __doc__)
    parser.add_argument("--runs", type=int, default=3, help="processes per figure (median)")
    args = parser.parse_args(list(argv))
    return run_main("fleet_view", lambda tmp: run(tmp, args.runs))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
