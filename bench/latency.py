"""Command latency: a signed ``play`` of a cached file, from publish to the ``started`` event.

What it measures. The real daemon (``receiver run`` as a child process, config written by
``tests/e2e/daemon.py``) against a real Mosquitto (``tests/broker.py``). The benchmark signs a
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
    off on its socket (see :meth:`TimedSubscriber.start`), so that it adds no stall of its own to
    either measurement; the daemon's socket is left as the daemon makes it.
(b) libVLC start: ``receiver.player.Player`` with output ``file`` (the daemon's config: afile,
    volume 100) in this process, ``play()`` of the same cached file to its ``PlaybackStarted``
    callback; each item is left to end before the next, as in the daemon.

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

import argparse
import hashlib
import json
import os
import queue
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import paho.mqtt.client as mqtt
import pytest

from receiver.config_model import PlayerConfig
from receiver.core.events import Event, PlaybackEnded, PlaybackStarted
from receiver.player import Player
from receiver.signing import SigningKey, command_payload, sign_command
from tests.audio import write_tone
from tests.broker import MosquittoBroker, Received, Subscriber
from tests.e2e.daemon import DEVICE, GROUP, Daemon, MediaServer, write_config

DEFAULT_COUNT = 40
DEFAULT_WARMUP = 3
TONE_S = 0.3
TAIL_S = 0.2
TIMEOUT_S = 15.0
PREFIX = "loa/v1"
# What the bench changes in tests/e2e/daemon.py's config, as (template line, bench line).
CONFIG_EDITS = (
    ("  warm_up_s: 0.3\n", "  warm_up_s: 0\n"),
    ("  tail_s: 0.5\n", f"  tail_s: {TAIL_S}\n"),
    ("  level: debug\n", "  level: info\n"),
)


class BenchError(RuntimeError):
    """The benchmark could not measure: a command refused, an event missing, a process dead."""


# --- instruments ---------------------------------------------------------------------------


class TimedSubscriber(Subscriber):
    """``tests.broker.Subscriber`` that stamps every message with ``time.monotonic()`` on arrival.

    The stamp is taken first thing in paho's callback, so the time this process takes to pick
    the message off a queue is not counted. Messages go to :attr:`arrivals`, not to the base
    class's ``messages``/``seen``.
    """

    def __init__(self, broker: MosquittoBroker, topics: Sequence[str]) -> None:
        super().__init__(broker, topics, client_id=f"bench-{os.getpid()}", timeout_s=TIMEOUT_S)
        self.arrivals: queue.Queue[tuple[float, Received]] = queue.Queue()

    def start(self) -> Self:
        """Connect, and turn Nagle's algorithm off on our socket (paho leaves it on).

        Without this our own client would be part of what is measured: a command published a
        few milliseconds after we acknowledged a message (our PUBACK not yet ACKed by the
        broker's delayed ACK) is held back by Nagle for up to 40 ms.
        """
        super().start()
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        at = time.monotonic()
        received = Received(
            topic=message.topic,
            payload=bytes(message.payload),
            retain=bool(message.retain),
            qos=message.qos,
        )
        self.arrivals.put((at, received))

    def next_matching(
        self, predicate: Callable[[Received], bool], what: str
    ) -> tuple[float, Received]:
        """Arrival time and message of the next one that satisfies ``predicate``."""
        deadline = time.monotonic() + TIMEOUT_S
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                at, message = self.arrivals.get(timeout=remaining)
            except queue.Empty:
                break
            if predicate(message):
                return at, message
        raise BenchError(f"no {what} within {TIMEOUT_S:g} s")


class PlayerEvents:
    """``Player``'s ``on_event``: each event with the ``time.monotonic()`` it was reported at."""

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[float, Event]] = queue.Queue()

    def __call__(self, event: Event) -> None:
        self.queue.put((time.monotonic(), event))

    def next_for(self, token: int) -> tuple[float, Event]:
        deadline = time.monotonic() + TIMEOUT_S
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                at, event = self.queue.get(timeout=remaining)
            except queue.Empty:
                break
            if getattr(event, "token", None) == token:
                return at, event
        raise BenchError(f"libVLC reported nothing for item {token} within {TIMEOUT_S:g} s")


# --- the site: broker, media, daemon, our client, a player ---------------------------------


@dataclass
class Site:
    root: Path
    broker: MosquittoBroker
    media: MediaServer
    operator: SigningKey
    tone: Path
    sha256: str
    size: int
    daemon: Daemon
    client: TimedSubscriber
    player: Player
    player_events: PlayerEvents
    next_seq: int = field(default_factory=lambda: int(time.time() * 1000))
    next_token: int = 1

    @property
    def cmd_topic(self) -> str:
        return f"{PREFIX}/dev/{DEVICE}/cmd"

    @property
    def events_topic(self) -> str:
        return f"{PREFIX}/dev/{DEVICE}/events"

    @property
    def state_topic(self) -> str:
        return f"{PREFIX}/dev/{DEVICE}/state"

    @property
    def echo_topic(self) -> str:
        return f"bench/{os.getpid()}/echo"

    @property
    def cached(self) -> Path:
        return self.root / "cache" / self.sha256

    def play_command(self, ref: str) -> bytes:
        body = {
            "priority": "normal",
            "source": {
                "files": [
                    {
                        "url": self.media.url(self.tone.name),
                        "sha256": self.sha256,
                        "size": self.size,
                        "title": "bench tone",
                    }
                ]
            },
            "max_duration_s": 60,
        }
        self.next_seq += 1
        payload = command_payload(
            "play", body, env="lab", aud=[f"grp:{GROUP}"], message_id=ref, seq=self.next_seq
        )
        return sign_command(payload, [self.operator])


def _bench_config(path: Path, **kwargs: Any) -> Path:
    """``tests/e2e/daemon.py``'s config with :data:`CONFIG_EDITS` applied (each exactly once)."""
    write_config(path, **kwargs)
    text = path.read_text(encoding="utf-8")
    for old, new in CONFIG_EDITS:
        if text.count(old) != 1:
            raise BenchError(f"tests/e2e/daemon.py's config no longer has {old.strip()!r}")
        text = text.replace(old, new)
    # Forty plays a minute switch the relay far more often than a pole should (the default
    # limit is 6 a minute); the bench lifts the limit so every command starts from idle.
    text += "policy:\n  relay_max_toggles_per_min: 60\n"
    path.write_text(text, encoding="utf-8")
    return path


def _json(message: Received) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(message.payload)
    return value


@contextmanager
def open_site(root: Path) -> Iterator[Site]:
    """Everything started, the daemon online; all of it stopped again on the way out."""
    with ExitStack() as stack:
        broker = MosquittoBroker(root / "broker")
        broker.start()
        stack.callback(broker.stop)
        media_dir = root / "media"
        media_dir.mkdir()
        tone = write_tone(media_dir / "tone.wav", 440.0, TONE_S)
        data = tone.read_bytes()
        media = MediaServer(media_dir)
        stack.callback(media.close)
        operator = SigningKey.generate("op-bench")
        config = _bench_config(
            root / "receiver.yaml",
            broker_port=broker.port,
            media_port=media.port,
            keys=[(operator, ["operator"], [GROUP])],
            wav=root / "daemon-out.wav",
            state_dir=root / "state",
            cache_dir=root / "cache",
        )
        topics = [f"{PREFIX}/dev/{DEVICE}/events", f"{PREFIX}/dev/{DEVICE}/state"]
        client = TimedSubscriber(broker, [*topics, f"bench/{os.getpid()}/echo"]).start()
        stack.callback(client.close)
        player_events = PlayerEvents()
        player = Player(
            PlayerConfig(output="file", wav_file=root / "floor-out.wav", default_volume=100),
            player_events,
        )
        stack.callback(player.close)
        daemon = Daemon(config).start()
        stack.callback(daemon.kill)
        site = Site(
            root=root,
            broker=broker,
            media=media,
            operator=operator,
            tone=tone,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            daemon=daemon,
            client=client,
            player=player,
            player_events=player_events,
        )
        try:
            client.next_matching(
                lambda m: m.topic == site.state_topic and _json(m).get("online") is True,
                "online state from the daemon",
            )
            yield site
        except BenchError as exc:
            tail = "".join(daemon.raw[-20:]) or "(nothing)\n"
            raise BenchError(f"{exc}\nthe daemon's last log lines:\n{tail}") from exc
        finally:
            if daemon.process is not None and daemon.process.poll() is None:
                daemon.stop()


# --- one sample of each kind ---------------------------------------------------------------


def mqtt_round_trip(site: Site, payload_size: int, n: int) -> float:
    """Seconds from publish to our own subscriber receiving it back (QoS 1 both ways)."""
    tag = f"{n:08d}:".encode()
    payload = tag + b"." * max(0, payload_size - len(tag))
    start = time.monotonic()
    site.client.publish(site.echo_topic, payload)
    at, _ = site.client.next_matching(
        lambda m: m.topic == site.echo_topic and m.payload == payload, "echo of our publish"
    )
    return at - start


def libvlc_start(site: Site) -> float:
    """Seconds from ``Player.play()`` of the cached file to ``PlaybackStarted``; waits its end."""
    token = site.next_token
    site.next_token += 1
    start = time.monotonic()
    site.player.play(token, str(site.cached), 100)
    at, event = site.player_events.next_for(token)
    if not isinstance(event, PlaybackStarted):
        raise BenchError(f"libVLC did not start the file: {event!r}")
    _, end = site.player_events.next_for(token)
    if not isinstance(end, PlaybackEnded):
        raise BenchError(f"libVLC did not end the file normally: {end!r}")
    return at - start


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


def _event_for(ref: str, kind: str, events_topic: str) -> Callable[[Received], bool]:
    """Matches ``kind`` for ``ref``; raises on any other outcome that means it will not come."""

    def matches(message: Received) -> bool:
        if message.topic != events_topic:
            return False
        event = _json(message)
        if event.get("kind") == "rejected" and event.get("ref") in (ref, None):
            raise BenchError(f"command {ref} rejected: {event.get('reason')} {event.get('detail')}")
        if event.get("ref") != ref:
            return False
        if event.get("kind") in ("failed", "stopped", "preempted") and kind != event.get("kind"):
            raise BenchError(f"command {ref} {event['kind']}: {event.get('reason')}")
        return bool(event.get("kind") == kind)

    return matches


def play_command(site: Site, ref: str) -> CommandSample:
    """Publish a signed play, time it to ``started``; return once finished and the relay is off."""
    envelope = site.play_command(ref)
    mark = len(site.daemon.lines)
    start = time.monotonic()
    site.client.publish(site.cmd_topic, envelope)
    seen, _ = site.client.next_matching(
        _event_for(ref, "started", site.events_topic), f"started event for {ref}"
    )
    site.client.next_matching(
        _event_for(ref, "finished", site.events_topic), f"finished event for {ref}"
    )
    site.client.next_matching(
        lambda m: (
            m.topic == site.state_topic
            and _json(m).get("relays") == {"amp": "off"}
            and _json(m).get("state") == "idle"
        ),
        f"relay off after {ref}",
    )
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
    ("-> loop takes the cache hit, relay on", "verify, persist floors, emit, fetch"),
    ("-> loop takes libVLC's PlaybackStarted", "Player.play(), libVLC to Playing; vs (b)"),
    ("-> started event arrives here", "emit (log line, publish), MQTT out; vs (a)"),
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
        f"config: warm_up_s 0, tail_s {TAIL_S:g}, log level info;\n"
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
    before, after = load
    print(
        f"\nload average before {before[0]:.2f} {before[1]:.2f}, after {after[0]:.2f} "
        f"{after[1]:.2f}; {os.cpu_count()} CPUs; no figure here is asserted"
    )


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
                site.media.close()
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
            round_trips.append(mqtt_round_trip(site, size, i))
            starts.append(libvlc_start(site))
            commands.append(play_command(site, f"bench-{i}"))
    report(count, commands, round_trips, starts, (load_before, os.getloadavg()))


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="measured commands")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="uncounted rounds")
    args = parser.parse_args(list(argv))
    if args.count < 2:
        parser.error("--count must be at least 2")
    try:
        with tempfile.TemporaryDirectory(prefix="loa-bench-latency-") as tmp:
            run(Path(tmp), args.count, args.warmup)
    except BenchError as exc:
        print(f"latency: could not measure: {exc}", file=sys.stderr)
        return 1
    except pytest.fail.Exception as exc:  # tests.broker's way of saying mosquitto is missing
        print(f"latency: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
