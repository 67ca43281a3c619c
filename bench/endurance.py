"""Endurance: does anything grow with the number of commands a daemon has handled?

A receiver runs for months. This runs the real daemon (``receiver run``, config from
``tests/lab/daemon.py`` with log level ``info``) on a real Mosquitto through N signed commands
(default 20,000), one at a time (each sent once the previous one's ``accepted`` event arrived),
in a cycle of four: a ``play`` of a 0.3 s tone, a ``stop`` naming that play (so some stops land
while libVLC is still opening the file), a ``volume`` and a ``report``. Every
:data:`CHECKPOINT` commands, once the daemon is quiet, it reads:

- the distinct pages resident in the daemon and its player child, each counted once
  (``bench/footprint.py``'s "pages"; without root, the sum of RSS);
- each process's anonymous memory (``RssAnon``: what a leak in our code or libVLC's would grow)
  and file-backed memory (``RssFile``: code and data of the libraries mapped, clean pages the
  kernel can take back);
- the size of the state database with its write-ahead log, and the rows of each of its tables;
- each process's threads and open descriptors.

Then live relays (default 200), Icecast and HLS stations of ``tests/lab/stations.py`` in turn:
each is started by a signed ``play``, relayed for a moment and stopped by a ``stop`` naming it;
the same readings every :data:`RELAY_CHECKPOINT` relays. A relay runs the stream gate's threads
and sockets in the player's process and libVLC's HTTP and adaptive (HLS) modules: a thread, a
descriptor or a buffer left behind by each would show here.

The floor is the daemon's own reading after the first checkpoint, once every path has run at
least once (warm-up: the first plays load libVLC's decoders, the first commands fill the
allocator's pools). The figures are the growth after it, per 1,000 commands, against zero.

How to read it: anonymous growth per 1,000 commands is what would add up over months (at a few
hundred commands a day, 100 KiB per 1,000 is about 4 MiB a year); file-backed growth is libVLC
loading more of its plugins (a stop that lands while libVLC probes the file makes it try its
other demuxers; each plugin is loaded once, for good), bounded by the plugins installed; the
database should stop growing once its bounded tables are full (the newest 256 stopped targets,
one floor row per key). Compare runs, not raw figures: the machine is shared. No figure is
asserted.

Run: ``python -m bench.endurance [--commands N] [--relays N]`` (``make bench`` runs every
benchmark).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench._common import (
    CMD_TOPIC,
    EVENTS_TOPIC,
    STATE_TOPIC,
    Lab,
    TimedClient,
    event_for,
    explained_by_logs,
    load_line,
    open_lab,
    open_stations,
    parser_for,
    pid_of,
    proc_status_kib,
    process_tree,
    run_main,
    start_daemons,
    wait_online,
)
from bench.footprint import frames_readable, tree_pages_mib
from tests.lab.daemon import DEVICE, Daemon
from tests.lab.stations import HlsStation, IcecastStation

DEFAULT_COMMANDS = 20_000
CHECKPOINT = 2_500
DEFAULT_RELAYS = 200
RELAY_CHECKPOINT = 50
RELAY_HELD_S = 0.3  # how long each relay plays before its stop
TONE_S = 0.3
TIMEOUT_S = 30.0
QUIET_S = 1.0  # before a reading: the last play's tail, the state publish
CONFIG_EDITS = (("  level: debug\n", "  level: info\n"),)
# The amplifier is switched on and off for every play: as often as the config allows.
CONFIG_APPEND = "policy:\n  relay_max_toggles_per_min: 60\n"


@dataclass(frozen=True)
class Reading:
    commands: int
    pages_mib: float
    anon_kib: dict[str, int]  # "daemon", "player child"
    file_kib: dict[str, int]
    db_kib: float
    rows: dict[str, int]
    threads: dict[str, int]
    descriptors: dict[str, int]


@dataclass
class Site:
    lab: Lab
    daemon: Daemon
    client: TimedClient
    home: Path
    icecast: IcecastStation
    hls: HlsStation


@contextmanager
def open_site(root: Path) -> Iterator[Site]:
    with (
        open_lab(root, tone_name="tone.wav", tone_s=TONE_S, key_id="op-endurance") as lab,
        ExitStack() as stack,
    ):
        icecast, hls, allowlist = open_stations(stack, root, lab)
        edits = (*CONFIG_EDITS, allowlist)
        config = lab.daemon_config(root, edits=edits, append=CONFIG_APPEND)
        client = TimedClient(lab.broker, [EVENTS_TOPIC, STATE_TOPIC], timeout_s=TIMEOUT_S).start()
        stack.callback(client.close)
        (daemon,) = start_daemons(stack, [config])
        with explained_by_logs({"daemon": daemon}, 20):
            wait_online(client)
            yield Site(lab, daemon, client, root, icecast, hls)


def command(site: Site, number: int) -> tuple[str, bytes]:
    """The ``number``-th command of the cycle: its ref and its signed bytes."""
    ref = f"c{number}"
    audience = f"dev:{DEVICE}"
    kind = number % 4
    if kind == 0:
        return ref, site.lab.signed("play", site.lab.play_body("tone", 5), ref, audience)
    if kind == 1:
        return ref, site.lab.signed("stop", {"target": f"c{number - 1}"}, ref, audience)
    if kind == 2:
        return ref, site.lab.signed("volume", {"level": 50 + number % 30}, ref, audience)
    return ref, site.lab.signed("report", {}, ref, audience)


def table_rows(database: Path) -> dict[str, int]:
    """Rows per table, read-only beside the daemon (SQLite in WAL mode allows it)."""
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        tables = [
            name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        return {
            name: int(db.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0])  # noqa: S608
            for name in tables
        }


def reading(site: Site, commands: int) -> Reading:
    root = pid_of(site.daemon)
    tree = process_tree(root)
    labels = {pid: ("daemon" if pid == root else "player child") for pid in tree}
    database = site.home / "state" / "state.db"
    files = [database, database.with_name("state.db-wal")]
    return Reading(
        commands=commands,
        pages_mib=(
            tree_pages_mib(root)
            if frames_readable()
            else sum(proc_status_kib(pid, "VmRSS") for pid in tree) / 1024
        ),
        anon_kib={labels[pid]: proc_status_kib(pid, "RssAnon") for pid in tree},
        file_kib={labels[pid]: proc_status_kib(pid, "RssFile") for pid in tree},
        db_kib=sum(path.stat().st_size for path in files if path.exists()) / 1024,
        rows=table_rows(database),
        threads={labels[pid]: len(os.listdir(f"/proc/{pid}/task")) for pid in tree},
        descriptors={labels[pid]: len(os.listdir(f"/proc/{pid}/fd")) for pid in tree},
    )


def run_commands(site: Site, count: int) -> tuple[list[Reading], float]:
    """Every command of the run; the readings and the commands per second."""
    readings = [reading(site, 0)]
    started = time.monotonic()
    busy = 0.0
    for number in range(1, count + 1):
        ref, raw = command(site, number)
        site.client.publish(CMD_TOPIC, raw)
        site.client.next_matching(
            event_for(ref, "accepted", EVENTS_TOPIC), f"accepted for {ref}", TIMEOUT_S
        )
        if number % CHECKPOINT == 0 or number == count:
            busy += time.monotonic() - started
            site.client.drain()
            del site.daemon.lines[:]  # the log lines kept here, not the daemon's memory
            time.sleep(QUIET_S)
            readings.append(reading(site, number))
            print(f"endurance: {number} commands", flush=True)
            started = time.monotonic()
    return readings, count / busy if busy else float("nan")


def run_relays(site: Site, count: int) -> list[Reading]:
    """``count`` relays, each started, held a moment and stopped; a reading every
    :data:`RELAY_CHECKPOINT` (the first before any relay)."""
    readings = [reading(site, 0)]
    for number in range(1, count + 1):
        url = site.icecast.url() if number % 2 else site.hls.url
        ref = f"relay-{number}"
        body = {"priority": "normal", "max_duration_s": 600, "source": {"stream": {"url": url}}}
        audience = f"dev:{DEVICE}"
        site.client.publish(CMD_TOPIC, site.lab.signed("play", body, ref, audience))
        site.client.next_matching(
            event_for(ref, "started", EVENTS_TOPIC, unreferenced=True), f"{ref} started"
        )
        time.sleep(RELAY_HELD_S)
        stop = site.lab.signed("stop", {"target": ref}, f"stop-{ref}", audience)
        site.client.publish(CMD_TOPIC, stop)
        site.client.next_matching(
            event_for(ref, "stopped", EVENTS_TOPIC, unreferenced=True), f"{ref} stopped"
        )
        if number % RELAY_CHECKPOINT == 0 or number == count:
            site.client.drain()
            del site.daemon.lines[:]
            time.sleep(QUIET_S)
            readings.append(reading(site, number))
            print(f"endurance: {number} relays", flush=True)
    return readings


def report_relays(readings: Sequence[Reading]) -> None:
    print(
        f"\n{'relays':>9} {'anon KiB (daemon, child)':>26} {'file KiB (daemon, child)':>26} "
        f"{'threads':>9} {'descriptors':>12}"
    )
    for r in readings:
        anon = f"{r.anon_kib.get('daemon', 0)}, {r.anon_kib.get('player child', 0)}"
        file = f"{r.file_kib.get('daemon', 0)}, {r.file_kib.get('player child', 0)}"
        threads = f"{r.threads.get('daemon', 0)}, {r.threads.get('player child', 0)}"
        fds = f"{r.descriptors.get('daemon', 0)}, {r.descriptors.get('player child', 0)}"
        print(f"{r.commands:>9} {anon:>26} {file:>26} {threads:>9} {fds:>12}")
    if len(readings) < 3:
        return
    base, last = readings[1], readings[-1]
    relays = last.commands - base.commands
    print(f"\nafter the first {base.commands} relays, per relay over the next {relays} (floor: 0):")
    for label in ("daemon", "player child"):
        anon_growth = (last.anon_kib.get(label, 0) - base.anon_kib.get(label, 0)) / relays
        thread_change = last.threads.get(label, 0) - base.threads.get(label, 0)
        fd_change = last.descriptors.get(label, 0) - base.descriptors.get(label, 0)
        print(
            f"  {label:<13} anonymous {anon_growth:+6.2f} KiB; threads {thread_change:+d}, "
            f"descriptors {fd_change:+d} in all"
        )


def report(readings: Sequence[Reading], rate: float) -> None:
    print(
        f"\n{'commands':>9} {'pages MiB':>10} {'anon KiB (daemon, child)':>26} "
        f"{'file KiB (daemon, child)':>26} {'db KiB':>8}  rows"
    )
    for r in readings:
        anon = f"{r.anon_kib.get('daemon', 0)}, {r.anon_kib.get('player child', 0)}"
        file = f"{r.file_kib.get('daemon', 0)}, {r.file_kib.get('player child', 0)}"
        rows = " ".join(f"{name}={n}" for name, n in sorted(r.rows.items()))
        print(
            f"{r.commands:>9} {r.pages_mib:>10.2f} {anon:>26} {file:>26} {r.db_kib:>8.1f}  {rows}"
        )
    if len(readings) < 3:
        return
    base, last = readings[1], readings[-1]
    thousands = (last.commands - base.commands) / 1000
    print(
        f"\nafter the warm-up ({base.commands} commands), per 1,000 commands over the next "
        f"{last.commands - base.commands} (floor: 0):"
    )
    for label in ("daemon", "player child"):
        anon_growth = (last.anon_kib.get(label, 0) - base.anon_kib.get(label, 0)) / thousands
        file_growth = (last.file_kib.get(label, 0) - base.file_kib.get(label, 0)) / thousands
        print(
            f"  {label:<13} anonymous {anon_growth:+8.1f} KiB, file-backed {file_growth:+8.1f} KiB"
        )
    pages = (last.pages_mib - base.pages_mib) * 1024 / thousands
    print(f"  {'both, pages':<13} {pages:+8.1f} KiB")
    print(f"  {'database':<13} {(last.db_kib - base.db_kib) / thousands:+8.1f} KiB")
    print(f"\n{rate:.0f} commands a second, one at a time (publish to accepted, then the next)")


def run(root: Path, count: int, relays: int) -> None:
    load_before = os.getloadavg()
    print(f"endurance: {count} commands and {relays} relays through the daemon in {root}")
    with open_site(root) as site:
        readings, rate = run_commands(site, count)
        relay_readings = run_relays(site, relays) if relays else []
    report(readings, rate)
    if relay_readings:
        report_relays(relay_readings)
    print(load_line(load_before, os.getloadavg()))


def main(argv: Sequence[str] = ()) -> int:
    parser = parser_for("endurance", __doc__)
    parser.add_argument("--commands", type=int, default=DEFAULT_COMMANDS, help="how many")
    parser.add_argument("--relays", type=int, default=DEFAULT_RELAYS, help="how many (0: none)")
    args = parser.parse_args(list(argv))
    if args.commands < 2 * CHECKPOINT:
        parser.error(f"--commands must be at least {2 * CHECKPOINT}")
    if args.relays and args.relays < 2 * RELAY_CHECKPOINT:
        parser.error(f"--relays must be 0 or at least {2 * RELAY_CHECKPOINT}")
    return run_main("endurance", lambda root: run(root, args.commands, args.relays))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
