"""Command latency: a signed ``play`` of a cached file, from publish to the ``started`` event.

What it measures. The real daemon (``receiver run`` as a child process, config written by
``tests/lab/daemon.py``) against a real Mosquitto (``tests/lab/broker.py``). The benchmark signs a
``play`` command for a 0.3 s tone, publishes it on the device's command topic, and takes the
time from just before the publish to the arrival of the device's ``started`` event on the events
topic (stamped with ``time.monotonic()`` inside paho's message callback). Signing happens before
the clock starts: that is the central side's work, not the receiver's.

The path measured is the cold one a real command takes: every command is sent only after the
previous one's ``finished`` event *and* the relay tail (the state topic reporting the amplifier
off), so each starts from idle with the relay off. None preempts a playing item: preemption skips
the relay switch and adds the old item's stop, a different path. The config differs from the
end-to-end tests' in three lines, all printed: ``warm_up_s: 0`` (otherwise the amplifier warm-up,
a deliberate wait of its own, would dominate every figure), a short ``tail_s`` (only to keep the
run short: we wait it out) and log level ``info`` (what a deployment runs). The first warm-up
command downloads the tone into the cache; the media server is then shut down, so a later command
that were not a cache hit would fail loudly instead of timing a download.

Floors, measured in the same run and interleaved round by round with the commands (one MQTT round
trip, one libVLC start, one command, then again), so a noisy neighbour slows all three alike:

(a) MQTT round trip: the benchmark's own client publishes a payload of the command's size (QoS 1)
    on a topic it subscribes to, on the same broker, and times its return. The command's path
    crosses the broker twice (command in, event out); (a) is one crossing with both ends in this
    process, so it is a lower bound, not a model of the path. Our client turns Nagle's algorithm
    off on its socket (see :meth:`bench._common.TimedClient.start`), so that it adds no stall of
    its own to either measurement; the daemon's socket is left as the daemon makes it.
(b) libVLC start: ``receiver.player.Player`` with output ``file`` (the daemon's config: afile,
    volume 100) in this process, ``play()`` of the same cached file to its ``PlaybackStarted``
    callback; each item is left to end before the next, as in the daemon.

The daemon opens a command's cached file paused as soon as its loop takes the command, before
checking it (``Runtime._open_ahead_of_check``), so libVLC opens it while the command is checked
and its floors and intent and its started mark are written; the ``Play`` after them only
resumes it (or, if libVLC is still opening, lets it run on). Floor (b) is libVLC opening and
starting the file in one go, with nothing else to do.

Both players write their WAV (``player.output: file``, the stand-in for a sound card) to a
directory in memory (:data:`SOUND_DIR`, ``/dev/shm``; the run's directory if there is none), not
to the disk of the daemon's state: there, libVLC creating and writing the WAV while the daemon
commits its floors made those commits wait for the WAV's blocks too (ext4 writes a file's data
before the journal commit an ``fsync`` of another file waits for: 0.6-0.8 ms commits became 3-5
ms in about half the commands), a cost no board pays (its sound goes to ALSA) and floor (b) never
saw.

How to read it. The table gives median and 90th percentile in milliseconds and, for each line, the
ratio of its median to the floor sum median(a) + median(b). A command ratio near 1 means the daemon
adds little beyond the broker and libVLC; what it does add shows in the second table, cut at
the daemon's own ``time.monotonic()`` stamps in its JSON log (``mono`` on ``accepted``,
``relay_switched`` and ``started``; CLOCK_MONOTONIC is system-wide on Linux, so they compare with
ours). Compare ratios between runs, not raw milliseconds: the machine is shared. Nothing here
asserts a time; a run fails only if a command is refused or an event never comes.

Run: ``python -m bench.latency [--count N] [--warmup N]`` (``make bench`` runs every benchmark).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import (
    CMD_TOPIC,
    EVENTS_TOPIC,
    STATE_TOPIC,
    BenchError,
    Lab,
    TimedClient,
    TimedPlayer,
    event_for,
    explained_by_logs,
    is_idle,
    load_line,
    open_lab,
    parser_for,
    run_main,
    start_daemons,
    wait_online,
)
from tests.lab.daemon import GROUP, Daemon

DEFAULT_COUNT = 40
DEFAULT_WARMUP = 3
TONE_S = 0.3
TAIL_S = 0.2
TIMEOUT_S = 15.0
# What the bench changes in tests/lab/daemon.py's config, as (template line, bench line).
CONFIG_EDITS = (
    ("  warm_up_s: 0.3\n", "  warm_up_s: 0\n"),
    ("  tail_s: 0.5\n", f"  tail_s: {TAIL_S}\n"),
    ("  level: debug\n", "  level: info\n"),
)
# Forty plays a minute switch the relay far more often than a pole should (the default
# limit is 6 a minute); the bench lifts the limit so every command starts from idle.
CONFIG_APPEND = "policy:\n  relay_max_toggles_per_min: 60\n"
ROUND_PERIOD_S = 2.5
ECHO_TOPIC = f"bench/{os.getpid()}/echo"
# Where both players write their WAV (the stand-in for a sound card): in memory, apart from the
# state directory's disk (see the module's notes).
SOUND_DIR = Path("/dev/shm")


# --- the site: broker, media, daemon, our client, a player ---------------------------------


@dataclass
class Site:
    lab: Lab
    daemon: Daemon
    client: TimedClient
    player: TimedPlayer

    @property
    def cached(self) -> Path:
        return self.lab.cached(self.lab.root)

    def play_command(self, ref: str) -> bytes:
        body = self.lab.play_body("bench tone", max_duration_s=60)
        return self.lab.signed("play", body, ref, aud=f"grp:{GROUP}")


@contextmanager
def open_site(root: Path) -> Iterator[Site]:
    """Everything started, the daemon online; all of it stopped again on the way out."""
    with (
        open_lab(root, tone_name="tone.wav", tone_s=TONE_S, key_id="op-bench") as lab,
        ExitStack() as stack,
        tempfile.TemporaryDirectory(dir=SOUND_DIR if SOUND_DIR.is_dir() else root) as sound_dir,
    ):
        sound = Path(sound_dir)
        config = lab.daemon_config(
            root,
            edits=CONFIG_EDITS,
            append=CONFIG_APPEND,
            wav_name=str(sound / "daemon-out.wav"),  # absolute: not in ``root``
        )
        client = TimedClient(
            lab.broker, [EVENTS_TOPIC, STATE_TOPIC, ECHO_TOPIC], timeout_s=TIMEOUT_S
        ).start()
        stack.callback(client.close)
        player = TimedPlayer(sound / "floor-out.wav", TIMEOUT_S)
        stack.callback(player.close)
        (daemon,) = start_daemons(stack, [config])
        with explained_by_logs({"daemon": daemon}, 20):
            wait_online(client)
            yield Site(lab, daemon, client, player)


# --- one sample of each kind ---------------------------------------------------------------


def mqtt_round_trip(site: Site, payload_size: int, n: int) -> float:
    """Seconds from publish to our own subscriber receiving it back (QoS 1 both ways)."""
    tag = f"{n:08d}:".encode()
    payload = tag + b"." * max(0, payload_size - len(tag))
    start = time.monotonic()
    site.client.publish(ECHO_TOPIC, payload)
    at, _ = site.client.next_matching(
        lambda m: m.topic == ECHO_TOPIC and m.payload == payload, "echo of our publish"
    )
    return at - start


def libvlc_start(site: Site) -> float:
    """Seconds from ``Player.play()`` of the cached file to ``PlaybackStarted``; waits its end."""
    return site.player.start_s(site.cached)


@dataclass(frozen=True)
class CommandSample:
    """One command: our publish and arrival stamps, and the daemon's own stamps from its log."""

    published: float
    started_seen: float
    accepted: float | None  # the loop took the message (``now`` of that step)
    relay_on: float | None  # the loop took the cache hit and switched the relay on
    started: float | None  # the loop took libVLC's PlaybackStarted

    @property
    def total(self) -> float:
        return self.started_seen - self.published

    def segments(self) -> tuple[float, float, float, float] | None:
        """The total cut at the daemon's stamps (:data:`SEGMENTS`); None if one is missing."""
        if self.accepted is None or self.relay_on is None or self.started is None:
            return None
        return (
            self.accepted - self.published,
            self.relay_on - self.accepted,
            self.started - self.relay_on,
            self.started_seen - self.started,
        )


def play_command(site: Site, ref: str) -> CommandSample:
    """Publish a signed play, time it to ``started``; return once finished and the relay is off."""
    envelope = site.play_command(ref)
    mark = len(site.daemon.lines)
    start = time.monotonic()
    site.client.publish(CMD_TOPIC, envelope)
    seen, _ = site.client.next_matching(
        event_for(ref, "started", EVENTS_TOPIC, unreferenced=True), f"started event for {ref}"
    )
    site.client.next_matching(
        event_for(ref, "finished", EVENTS_TOPIC, unreferenced=True), f"finished event for {ref}"
    )
    site.client.next_matching(is_idle(STATE_TOPIC), f"relay off after {ref}")
    stamps = _daemon_stamps(site.daemon, mark, ref)
    return CommandSample(start, seen, *stamps)


def _daemon_stamps(daemon: Daemon, mark: int, ref: str) -> tuple[float | None, ...]:
    """``mono`` of this command's accepted, relay-on and started log lines (None if missing)."""
    deadline = time.monotonic() + 2.0
    while True:  # the log pipe may trail the MQTT events by a moment
        lines = daemon.lines[mark:]
        if any(ln.get("event") == "started" and ln.get("ref") == ref for ln in lines):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)

    def mono(predicate: Callable[[dict[str, Any]], bool]) -> float | None:
        found = next((ln for ln in lines if predicate(ln)), None)
        value = None if found is None else found.get("mono")
        return float(value) if isinstance(value, int | float) else None

    return (
        mono(lambda ln: ln.get("event") == "accepted" and ln.get("ref") == ref),
        mono(lambda ln: ln.get("event") == "relay_switched" and ln.get("on") is True),
        mono(lambda ln: ln.get("event") == "started" and ln.get("ref") == ref),
    )


# --- figures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    median_ms: float
    p90_ms: float
    n: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Figures:
        ms = [s * 1000.0 for s in seconds]
        if not ms:
            return cls(float("nan"), float("nan"), 0)
        p90 = ms[0] if len(ms) == 1 else statistics.quantiles(ms, n=10, method="inclusive")[-1]
        return cls(statistics.median(ms), p90, len(ms))


def _row(label: str, figures: Figures, floor_ms: float, note: str = "") -> str:
    ratio = figures.median_ms / floor_ms if floor_ms > 0 else float("nan")
    return (
        f"  {label:<44} {figures.median_ms:9.2f} {figures.p90_ms:9.2f} {ratio:9.2f}  {note}"
    ).rstrip()


SEGMENTS = (
    ("publish -> loop takes the message", "MQTT in: broker, paho thread, inbox"),
    ("-> loop takes the cache hit, relay on", "check, floors and intent"),
    (
        "-> loop takes libVLC's PlaybackStarted",
        "started mark, Play, accepted written and sent; libVLC opens (since the take)",
    ),
    ("-> started event arrives here", "started written and sent; MQTT out"),
)


def _segments(samples: Sequence[CommandSample]) -> list[list[float]]:
    """Per segment of :data:`SEGMENTS`, its seconds in every command that logged all stamps."""
    cuts = [cut for cut in (s.segments() for s in samples) if cut is not None]
    return [[cut[i] for cut in cuts] for i in range(len(SEGMENTS))]


def report(
    count: int,
    commands: Sequence[CommandSample],
    round_trips: Sequence[float],
    starts: Sequence[float],
    load: tuple[tuple[float, ...], tuple[float, ...]],
) -> None:
    total = Figures.of([c.total for c in commands])
    mqtt_figs = Figures.of(round_trips)
    vlc_figs = Figures.of(starts)
    floor = mqtt_figs.median_ms + vlc_figs.median_ms
    floor_p90 = mqtt_figs.p90_ms + vlc_figs.p90_ms
    header = f"  {'measurement':<44} {'median ms':>9} {'p90 ms':>9} {'/ floor':>9}"
    print(
        f"\nsigned play of a cached {TONE_S:g} s tone -> `started` event, {count} commands; "
        f"config: warm_up_s 0, tail_s {TAIL_S:g}, log level info, WAV output "
        f"{'in memory' if SOUND_DIR.is_dir() else 'in the run directory'};\n"
        "each command sent from idle (after the previous `finished` and relay off), "
        "none preempts."
    )
    print(header)
    print(_row("play command -> started event (daemon)", total, floor))
    print(_row("(a) MQTT round trip, same broker and client", mqtt_figs, floor))
    print(_row("(b) libVLC play() -> PlaybackStarted", vlc_figs, floor))
    print(
        f"  {'floor (a)+(b), sums of medians / of p90s':<44} {floor:9.2f} {floor_p90:9.2f} "
        f"{1.0:9.2f}"
    )
    print(f"  daemon overhead over the floor: median {total.median_ms - floor:.2f} ms")
    segments = _segments(commands)
    n = len(segments[0])
    print(
        f"\nwhere the time goes (the daemon's monotonic log stamps, logged to 1 ms; {n} of "
        f"{len(commands)} commands logged all three):"
    )
    print(header.replace("measurement", "segment    "))
    for (label, note), values in zip(SEGMENTS, segments, strict=True):
        print(_row(label, Figures.of(values), floor, note))
    print(load_line(*load))


# --- the run -------------------------------------------------------------------------------


def run(root: Path, count: int, warmup: int) -> None:
    load_before = os.getloadavg()
    print(f"latency: starting Mosquitto, the daemon and a libVLC player in {root}", flush=True)
    with open_site(root) as site:
        size = len(site.play_command("size-probe"))
        # Warm-up, not counted: the first command downloads the tone into the cache, the first
        # libVLC play loads its plugins; then the media server goes, so only cache hits can play.
        for i in range(max(1, warmup)):
            play_command(site, f"warmup-{i}")
            if i == 0:
                site.lab.media.close()
                if not site.cached.is_file():
                    raise BenchError(f"the tone is not in the daemon's cache at {site.cached}")
            libvlc_start(site)
            mqtt_round_trip(site, size, -1 - i)
        print(
            f"latency: {max(1, warmup)} warm-up rounds done; measuring {count} rounds "
            "(one MQTT round trip, one libVLC start, one command each)",
            flush=True,
        )
        commands: list[CommandSample] = []
        round_trips: list[float] = []
        starts: list[float] = []
        for i in range(count):
            began = time.monotonic()
            round_trips.append(mqtt_round_trip(site, size, i))
            starts.append(libvlc_start(site))
            commands.append(play_command(site, f"bench-{i}"))
            # Two relay switches a round: paced to stay under the daemon's limit of 60 a
            # minute, so that every command starts from idle with the relay off.
            time.sleep(max(0.0, ROUND_PERIOD_S - (time.monotonic() - began)))
    report(count, commands, round_trips, starts, (load_before, os.getloadavg()))


def main(argv: Sequence[str] = ()) -> int:
    parser = parser_for("latency", __doc__)
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="measured commands")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="uncounted rounds")
    args = parser.parse_args(list(argv))
    if args.count < 2:
        parser.error("--count must be at least 2")
    return run_main("latency", lambda root: run(root, args.count, args.warmup))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
