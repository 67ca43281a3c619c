"""Footprint: the daemon's memory and CPU when idle and while playing, and its reconnect time.

What it measures. The real daemon (``receiver run``, config from ``tests/lab/daemon.py`` with
log level ``info``) on a real Mosquitto, read from ``/proc/<pid>/status`` (VmRSS: resident now;
VmHWM: the peak so far) and ``/proc/<pid>/stat`` (utime + stime of all its threads), once a
second by a sampling thread here; summed over the daemon and its child processes (its player
runs libVLC in one: ``receiver.player_process``), the peak as the sum of their peaks:

1. idle, connected, for 60 s (from the moment its state says ``online``);
2. playing a 30 s tone (output ``file``: libVLC's afile writes a WAV at about real time), from
   the signed ``play`` until its ``finished`` event; the first play downloads the tone from a
   local HTTP server into the cache, a fraction of a second of the phase.

Floors, sampled by the same thread over the same seconds: bare Python processes that import the
libraries the daemon imports (paho-mqtt, python-vlc, cryptography's Ed25519, gpiozero,
structlog, PyYAML), create one ``vlc.Instance`` with the daemon's own arguments
(``receiver.player.instance_args``) and one media player, and then do nothing: (i) "idle floor",
idle in both phases; (ii) "libVLC floor", idle in phase 1, and in phase 2 playing the same tone
through the same afile output (no events, no volume, no relay, no MQTT). The daemon's RSS over
(i) is what its own code and state cost; its CPU over (ii) in phase 2 is what it adds to
libVLC's own playback.

3. Reconnect: the broker is stopped (SIGTERM) and started again, 5 times; the figure is the time
   from the restarted broker accepting connections to the device's retained state showing
   ``online: true`` again, as seen by a fresh client that connects right away. Before each stop
   the benchmark overwrites the retained state with a marker (``online: false``), so a stale
   retained "online" cannot count. Floor, measured in the same restarts the same way: a plain
   paho client (``loop_start``, ``reconnect_delay_set`` with the daemon's configured
   ``reconnect_min_s``/``reconnect_max_s``, 0.2/2.0 s) that publishes a retained ``online`` on
   every connect. The daemon draws its delay at random in ``[min, min * 2**(n+1)]`` capped at the
   max, where n counts failures since the last connection that stayed up 30 s (so restarts a
   few seconds apart get slower on purpose: anti-flapping); paho waits exactly min after any
   CONNACK. So the daemon's figure is also split: the delay it drew (``retry_in_s`` of its
   ``mqtt_link_lost`` log line) and what came on top of it (from that line's timestamp plus the
   delay to the state seen here; ``retry_in_s`` is logged to 10 ms), beside the floor's time
   beyond its fixed delay (from its ``on_disconnect``).

How to read it: RSS in MiB; PSS (``/proc/<pid>/smaps_rollup``: shared pages divided among the
processes mapping them, the floors included) in MiB; CPU in percent of one core, averaged over the
phase ((cpu_end - cpu_start) / wall). "daemon" is the daemon with its player child; the child's
own row and the daemon process alone (the sum minus the child) follow it. Compare the daemon
with its floor, and ratios between runs, not raw figures: the machine is shared. No figure is
asserted.

Which sum is fair. The daemon is two processes (crash isolation), the floor one, so a plain sum
of RSS counts twice every page the daemon and its child share (the interpreter, libc, the file
pages of the libraries both load): it overstates the daemon. PSS divides each shared page among
*all* the processes mapping it, here the floors too and whatever else runs on the machine (other
Python processes share the interpreter's pages): it understates both sides by amounts that
depend on the neighbours, and two identical floors halve each other. The verdict therefore
uses a third figure, "pages": the distinct physical pages resident in the process tree, each
counted once however many of its processes map it (the page frames of ``/proc/<pid>/pagemap``;
for one process it is its RSS). That is what the tree would hold on a board where it runs alone,
which is the question. Reading page frames needs root (CAP_SYS_ADMIN); without it the figure is
missing and the verdict falls back to PSS, saying so.

The floors. "idle floor" and "libVLC floor" are one process each (the issue's floor: the
libraries and libVLC in one interpreter). A third, "two-process floor", is the same split the
daemon makes: bare Python with the libraries but not python-vlc, plus ``python -I`` with
python-vlc, one instance and one player; its pages are counted once like the daemon's. The
daemon over the one-process floor is the whole cost; over the two-process floor it is the
daemon's own (its code, state and threads), the difference between the floors being the price
of the second interpreter that crash isolation needs.

Byte code. The run first byte-compiles the ``receiver`` package (``compileall``) as an install
does (pip compiles on install; the daemon's user cannot write its program directory), so that a
checkout run with ``PYTHONDONTWRITEBYTECODE`` does not charge the daemon for compiling its
modules from source at every start (the compiler's transient memory stays in the heap).

Run: ``python -m bench.footprint [--idle S] [--tone S] [--restarts N]``.
"""

from __future__ import annotations

import array
import compileall
import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt

from bench._common import (
    CMD_TOPIC,
    EVENTS_TOPIC,
    STATE_TOPIC,
    BenchError,
    Lab,
    ProcSample,
    Sampler,
    TimedClient,
    event_for,
    explained_by_logs,
    is_online,
    load_line,
    log_mono,
    median,
    open_lab,
    paho_client,
    parser_for,
    pid_of,
    process_tree,
    ratio,
    run_main,
    start_daemons,
    wait_log,
    wait_online,
    wall_minus_mono,
)
from receiver.config_model import PlayerConfig
from receiver.player import instance_args
from tests.lab.broker import MosquittoBroker
from tests.lab.daemon import DEVICE, Daemon

DEFAULT_IDLE_S = 60.0
DEFAULT_TONE_S = 30.0
DEFAULT_RESTARTS = 5
RECONNECT_MIN_S = 0.2  # tests/lab/daemon.py's broker.reconnect_min_s / reconnect_max_s
RECONNECT_MAX_S = 2.0
RESTART_GAP_S = 0.5
TIMEOUT_S = 30.0
PLAYER_CHILD = "  player child"  # the daemon's libVLC process, part of "daemon"
SPLIT_FLOOR = "two-process floor"  # the libraries, and libVLC in a python -I child
CONFIG_EDITS = (("  level: debug\n", "  level: info\n"),)

# The libraries the daemon imports, besides python-vlc (which its player child imports).
LIBRARIES = (
    "paho.mqtt.client",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
    "gpiozero",
    "structlog",
    "yaml",
)

# The floor process: some libraries, optionally one libVLC instance + player, and optionally a
# child process of the same kind (the player's process of the two-process floor), nothing else.
# Arguments (JSON): the modules to import, libVLC's arguments (null: no python-vlc), the child's
# command line (null: none). Reads commands on stdin: "play <path>" starts the file, end of input
# ends the process (and so its child's input, and the child).
FLOOR_SCRIPT = """
import json, subprocess, sys
libraries, vlc_args, child_command = (json.loads(argument) for argument in sys.argv[1:4])
for name in libraries:
    __import__(name)
if vlc_args is not None:
    import vlc
    instance = vlc.Instance(vlc_args)
    if instance is None:
        sys.exit("vlc.Instance refused the arguments")
    player = instance.media_player_new()
if child_command is not None:
    child = subprocess.Popen(child_command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    if child.stdout.readline().strip() != b"ready":
        sys.exit("the floor's player process did not start")
print("ready", flush=True)
for line in sys.stdin:
    command, _, argument = line.strip().partition(" ")
    if command == "play":
        media = instance.media_new_path(argument)
        player.set_media(media)
        media.release()
        player.play()
        print("playing", flush=True)
"""


def floor_command(
    libraries: Sequence[str],
    vlc_args: Sequence[str] | None,
    child: Sequence[str] | None = None,
    *,
    isolated: bool = False,
) -> list[str]:
    """The command line of a floor process (``isolated``: ``python -I``, like the player's)."""
    return [
        sys.executable,
        *(["-I"] if isolated else []),
        "-c",
        FLOOR_SCRIPT,
        json.dumps(list(libraries)),
        json.dumps(None if vlc_args is None else list(vlc_args)),
        json.dumps(None if child is None else list(child)),
    ]


class FloorProcess:
    """A bare Python process running :data:`FLOOR_SCRIPT`."""

    def __init__(self, command: Sequence[str]) -> None:
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def _stdin(self) -> IO[str]:
        assert self.process.stdin is not None
        return self.process.stdin

    def expect(self, word: str, timeout_s: float = TIMEOUT_S) -> None:
        """Wait for the process to print ``word`` on a line of its own."""
        stdout = self.process.stdout
        assert stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not result or result[0].strip() != word:
            raise BenchError(f"the floor process did not say {word!r} (said {result!r})")

    def play(self, path: Path) -> None:
        self._stdin().write(f"play {path}\n")
        self._stdin().flush()
        self.expect("playing")

    def close(self) -> None:
        if self.process.poll() is None:
            self._stdin().close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


class PahoFloorClient:
    """A plain paho client with paho's own reconnect, publishing a retained ``online`` on connect.

    ``reconnect_delay_set`` is annotated ``int`` in paho but works in float seconds (it only
    compares and sleeps); we pass the daemon's 0.2/2.0 through an untyped reference.
    """

    def __init__(self, broker: MosquittoBroker) -> None:
        self.topic = f"bench/{uuid.uuid4().hex[:8]}/floor/state"
        self.client = paho_client("floor")
        delay_set: Callable[..., None] = self.client.reconnect_delay_set
        delay_set(min_delay=RECONNECT_MIN_S, max_delay=RECONNECT_MAX_S)
        self.client.will_set(self.topic, b'{"online": false}', qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.connected = threading.Event()
        self.disconnected_at = float("nan")  # time.monotonic() of the last lost connection
        self.broker = broker

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.publish(self.topic, b'{"online": true}', qos=1, retain=True)
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, *args: Any) -> None:
        self.disconnected_at = time.monotonic()

    def start(self) -> PahoFloorClient:
        self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(TIMEOUT_S):
            raise BenchError("the floor MQTT client could not connect")
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Site:
    lab: Lab
    daemon: Daemon
    client: TimedClient
    idle_floor: FloorProcess
    vlc_floor: FloorProcess
    split_floor: FloorProcess

    def play_command(self, ref: str) -> bytes:
        body = self.lab.play_body("long tone", max_duration_s=600)
        return self.lab.signed("play", body, ref, aud=f"dev:{DEVICE}")


@contextmanager
def open_site(root: Path, tone_s: float) -> Iterator[Site]:
    with (
        open_lab(root, tone_name="long.wav", tone_s=tone_s, key_id="op-footprint") as lab,
        ExitStack() as stack,
    ):
        config = lab.daemon_config(root, edits=CONFIG_EDITS)
        client = TimedClient(lab.broker, [EVENTS_TOPIC, STATE_TOPIC], timeout_s=TIMEOUT_S)
        client.start()
        stack.callback(client.close)
        floors = []
        for name in ("idle", "vlc", "split"):
            args = instance_args(PlayerConfig(output="file", wav_file=root / f"floor-{name}.wav"))
            if name == "split":  # the libraries here, libVLC in an isolated child
                player = floor_command((), args, isolated=True)
                command = floor_command(LIBRARIES, None, player)
            else:
                command = floor_command(LIBRARIES, args)
            floor = FloorProcess(command)
            stack.callback(floor.close)
            floors.append(floor)
        (daemon,) = start_daemons(stack, [config])
        with explained_by_logs({"daemon": daemon}, 20):
            for floor in floors:
                floor.expect("ready")
            wait_online(client)
            yield Site(lab, daemon, client, *floors)


# --- phases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One process over one phase."""

    samples: tuple[ProcSample, ...]

    @property
    def start_mib(self) -> float:
        return self.samples[0].rss_kib / 1024

    @property
    def end_mib(self) -> float:
        return self.samples[-1].rss_kib / 1024

    @property
    def max_mib(self) -> float:
        return max(s.rss_kib for s in self.samples) / 1024

    @property
    def max_pss_mib(self) -> float:
        return max(s.pss_kib for s in self.samples) / 1024

    @property
    def hwm_mib(self) -> float:
        return self.samples[-1].hwm_kib / 1024

    @property
    def cpu_percent(self) -> float:
        first, last = self.samples[0], self.samples[-1]
        wall = last.mono - first.mono
        return 100.0 * (last.cpu_s - first.cpu_s) / wall if wall > 0 else float("nan")

    @property
    def seconds(self) -> float:
        return self.samples[-1].mono - self.samples[0].mono


def _pids(site: Site) -> dict[str, int]:
    """Each row's process; its descendants are part of it (the daemon's child is also a row)."""
    daemon = pid_of(site.daemon)
    children = process_tree(daemon)[1:]
    if len(children) != 1:
        raise BenchError(f"the daemon should have one child, its player; it has {children}")
    return {
        "daemon": daemon,
        PLAYER_CHILD: children[0],
        "idle floor": site.idle_floor.pid,
        "libVLC floor": site.vlc_floor.pid,
        SPLIT_FLOOR: site.split_floor.pid,
    }


# --- pages counted once ----------------------------------------------------------------------

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
PAGES_EVERY_S = 2.0
_PRESENT = 1 << 63  # /proc/<pid>/pagemap: bit 63 the page is resident, bits 0-54 its frame
_FRAME = (1 << 55) - 1


def resident_frames(pid: int) -> set[int]:
    """The physical page frames resident in ``pid``'s address space (``/proc/<pid>/pagemap``;
    without CAP_SYS_ADMIN every frame number reads 0)."""
    frames: set[int] = set()
    with (
        open(f"/proc/{pid}/maps", encoding="ascii") as maps,
        open(f"/proc/{pid}/pagemap", "rb") as pagemap,
    ):
        for line in maps:
            fields = line.split()
            if fields[1].startswith("---") or fields[-1] == "[vsyscall]":
                continue  # no access, nothing resident: guard pages, the arenas' reserves
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            pagemap.seek(start // PAGE_BYTES * 8)
            entries = array.array("Q", pagemap.read((end - start) // PAGE_BYTES * 8))
            frames.update(entry & _FRAME for entry in entries if entry & _PRESENT)
    return frames


def frames_readable() -> bool:
    """Whether this process may read page frame numbers (root), so that "pages" can be counted."""
    return len(resident_frames(os.getpid())) > 1


def tree_pages_mib(root: int) -> float:
    """The distinct physical pages resident in ``root`` and its descendants, in MiB: a page
    that several of them map (the interpreter's, libc's, shared libraries') counts once."""
    frames: set[int] = set()
    for pid in process_tree(root):
        with contextlib.suppress(OSError):  # a process that just ended
            frames |= resident_frames(pid)
    return len(frames) * PAGE_BYTES / 2**20


class PageSampler:
    """The peak of :func:`tree_pages_mib` per row over a phase, every :data:`PAGES_EVERY_S` on a
    thread of its own (NaN throughout when page frames cannot be read)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peaks = dict.fromkeys(pids, math.nan)
        self._readable = frames_readable()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> PageSampler:
        self._take()
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._take()
        return self.peaks

    def _take(self) -> None:
        if not self._readable:
            return
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                value = tree_pages_mib(pid)
                previous = self.peaks[name]
                self.peaks[name] = value if math.isnan(previous) else max(value, previous)

    def _run(self) -> None:
        while not self._stop.wait(PAGES_EVERY_S):
            self._take()


@dataclass(frozen=True)
class Phase:
    """A phase's samples per row, and each row's peak of pages counted once (MiB)."""

    series: dict[str, Series]
    pages: dict[str, float]


def _series(samples: dict[str, list[ProcSample]]) -> dict[str, Series]:
    out = {}
    for name, values in samples.items():
        if len(values) < 2:
            raise BenchError(f"{name} ended during the phase (only {len(values)} samples)")
        out[name] = Series(tuple(values))
    return out


def idle_phase(site: Site, seconds: float) -> Phase:
    print(f"footprint: idle for {seconds:g} s", flush=True)
    pids = _pids(site)
    sampler, pages = Sampler(pids).start(), PageSampler(pids).start()
    time.sleep(seconds)
    return Phase(_series(sampler.stop()), pages.stop())


def playing_phase(site: Site, tone_s: float) -> Phase:
    print(f"footprint: playing a {tone_s:g} s tone", flush=True)
    pids = _pids(site)
    sampler, pages = Sampler(pids).start(), PageSampler(pids).start()
    site.client.publish(CMD_TOPIC, site.play_command("long"))
    site.vlc_floor.play(site.lab.tone)
    site.client.next_matching(event_for("long", "started", EVENTS_TOPIC), "the tone's start")
    site.client.next_matching(
        event_for("long", "finished", EVENTS_TOPIC),
        "the tone's end",
        timeout_s=tone_s + TIMEOUT_S,
    )
    return Phase(_series(sampler.stop()), pages.stop())


# --- reconnect -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Restart:
    down_s: float  # broker stopped -> accepting again
    daemon_s: float  # accepting -> the daemon's retained state online, seen by a fresh client
    floor_s: float  # the same for the plain paho client
    daemon_delay_s: float  # the backoff delay the daemon drew (its mqtt_link_lost retry_in_s)
    daemon_beyond_s: float  # online seen - (link lost + drawn delay): the daemon's own work
    floor_beyond_s: float  # online seen - (its link lost + paho's fixed min delay)


def restarts(site: Site, count: int) -> list[Restart]:
    print(f"footprint: {count} broker restarts", flush=True)
    site.client.close()  # its own reconnects would only add noise; observers are fresh clients
    floor = PahoFloorClient(site.lab.broker).start()
    topics = {"daemon": STATE_TOPIC, "floor": floor.topic}
    marker = b'{"online": false, "bench": "marker: stale until the client publishes again"}'
    publisher = TimedClient(site.lab.broker, []).start()
    out: list[Restart] = []
    try:
        for _ in range(count):
            for topic in topics.values():
                publisher.publish(topic, marker, retain=True)
            publisher.close()
            mark = len(site.daemon.lines)
            offset = wall_minus_mono()
            stopped = time.monotonic()
            site.lab.broker.stop()
            site.lab.broker.start()
            up = time.monotonic()
            publisher = TimedClient(site.lab.broker, list(topics.values())).start()
            seen = publisher.wait_all(
                {name: is_online(topic) for name, topic in topics.items()},
                "online again",
                timeout_s=TIMEOUT_S,
            )
            lost = wait_log(
                site.daemon,
                mark,
                lambda ln: ln.get("event") == "mqtt_link_lost",
                "mqtt_link_lost log line",
            )
            delay = float(lost.get("retry_in_s", float("nan")))
            out.append(
                Restart(
                    down_s=up - stopped,
                    daemon_s=seen["daemon"] - up,
                    floor_s=seen["floor"] - up,
                    daemon_delay_s=delay,
                    daemon_beyond_s=seen["daemon"] - (log_mono(lost, offset) + delay),
                    floor_beyond_s=seen["floor"] - (floor.disconnected_at + RECONNECT_MIN_S),
                )
            )
            time.sleep(RESTART_GAP_S)
    finally:
        publisher.close()
        floor.close()
    return out


# --- report ----------------------------------------------------------------------------------


def report_phase(title: str, phase: Phase, *, verdict: bool = False) -> None:
    """The phase's table; ``verdict``: and the issue's figure, the fair sum over the idle floor."""
    series, pages = phase.series, phase.pages
    seconds = series["daemon"].seconds
    print(f"\n{title} ({seconds:.0f} s, {len(series['daemon'].samples)} samples)")
    print(
        f"  {'process':<18} {'RSS start':>10} {'RSS end':>9} {'RSS max':>9} {'VmHWM':>9} "
        f"{'PSS max':>9} {'pages max':>9} {'CPU %':>7}   MiB, CPU in % of one core"
    )
    for name, s in series.items():
        print(
            f"  {name:<18} {s.start_mib:10.1f} {s.end_mib:9.1f} {s.max_mib:9.1f} "
            f"{s.hwm_mib:9.1f} {s.max_pss_mib:9.1f} {pages[name]:9.1f} {s.cpu_percent:7.2f}"
        )
        if name == PLAYER_CHILD:
            daemon, child = series["daemon"], s
            print(
                f"  {'  daemon process':<18} {daemon.start_mib - child.start_mib:10.1f} "
                f"{daemon.end_mib - child.end_mib:9.1f} {'':>9} {'':>9} {'':>9} {'':>9} "
                f"{daemon.cpu_percent - child.cpu_percent:7.2f}   (daemon minus its child)"
            )
    daemon = series["daemon"]
    fair = "PSS (page frames unreadable)" if math.isnan(pages["daemon"]) else "pages"
    for label in ("idle floor", "libVLC floor", SPLIT_FLOOR):
        floor = series[label]
        extra_cpu = daemon.cpu_percent - floor.cpu_percent
        extra_pages = pages["daemon"] - pages[label]
        print(
            f"  daemon + child over the {label + ':':<19} pages max {extra_pages:+.1f} MiB "
            f"({ratio(pages['daemon'], pages[label]):.2f} x)"
            f", RSS max {daemon.max_mib - floor.max_mib:+.1f} MiB "
            f"({ratio(daemon.max_mib, floor.max_mib):.2f} x), PSS max "
            f"{ratio(daemon.max_pss_mib, floor.max_pss_mib):.2f} x, CPU {extra_cpu:+.2f} points"
        )
    if verdict:
        value = (
            ratio(pages["daemon"], pages["idle floor"])
            if fair == "pages"
            else ratio(daemon.max_pss_mib, series["idle floor"].max_pss_mib)
        )
        print(f"  verdict, by {fair}: daemon + child = {value:.2f} x the idle floor")


def report_restarts(results: Sequence[Restart]) -> None:
    print(
        f"\nbroker restart -> retained state `online: true` again, {len(results)} restarts "
        f"{RESTART_GAP_S:g} s apart (reconnect_min_s {RECONNECT_MIN_S:g}, reconnect_max_s "
        f"{RECONNECT_MAX_S:g}); timed from the restarted broker accepting connections"
    )
    print(f"  {'':<50} {'median ms':>9}  each restart, ms")
    rows = (
        ("daemon: retained state online again", [r.daemon_s for r in results]),
        ("  the backoff delay it drew (mqtt_link_lost)", [r.daemon_delay_s for r in results]),
        ("  beyond that delay (from its link-lost stamp)", [r.daemon_beyond_s for r in results]),
        ("floor: plain paho client, same way", [r.floor_s for r in results]),
        ("  beyond its fixed delay (from its link lost)", [r.floor_beyond_s for r in results]),
        ("(broker stopped -> accepting again)", [r.down_s for r in results]),
    )
    for label, values in rows:
        each = " ".join(f"{v * 1000:.0f}" for v in values)
        print(f"  {label:<50} {median(values) * 1000:9.1f}  {each}")
    ratio = median([r.daemon_s for r in results]) / median([r.floor_s for r in results])
    print(
        f"  daemon / floor (medians): {ratio:.2f}; first restart (after a connection up for "
        f"over 30 s, so the backoff starts from its minimum): daemon "
        f"{results[0].daemon_s * 1000:.0f} ms, floor {results[0].floor_s * 1000:.0f} ms"
    )


# --- the run ---------------------------------------------------------------------------------


def run(root: Path, idle_s: float, tone_s: float, count: int) -> None:
    load_before = os.getloadavg()
    print(
        f"footprint: starting Mosquitto, the daemon and two floor processes in {root}", flush=True
    )
    # As an install does (see the docstring): the daemon's modules load from byte code.
    compileall.compile_dir(Path(__file__).resolve().parents[1] / "receiver", quiet=1)
    with open_site(root, tone_s) as site:
        idle = idle_phase(site, idle_s)
        playing = playing_phase(site, tone_s)
        restart_results = restarts(site, count)
    report_phase("idle, connected", idle, verdict=True)
    report_phase(
        "playing the tone (the libVLC floor plays it too; the idle floor stays idle)", playing
    )
    report_restarts(restart_results)
    print(load_line(load_before, os.getloadavg()))


def main(argv: Sequence[str] = ()) -> int:
    parser = parser_for("footprint", __doc__)
    parser.add_argument("--idle", type=float, default=DEFAULT_IDLE_S, help="idle phase, s")
    parser.add_argument("--tone", type=float, default=DEFAULT_TONE_S, help="tone length, s")
    parser.add_argument("--restarts", type=int, default=DEFAULT_RESTARTS, help="broker restarts")
    args = parser.parse_args(list(argv))
    if args.idle < 2 or args.tone < 2 or args.restarts < 1:
        parser.error("--idle and --tone must be at least 2 s, --restarts at least 1")
    return run_main("footprint", lambda root: run(root, args.idle, args.tone, args.restarts))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
