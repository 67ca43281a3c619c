"""Live relays: a signed ``play`` of a stream to the ``started`` event, for Icecast and HLS, beside
libVLC opening the same URLs directly; and the requests a relay makes to the station.

What it measures. Two real stations started here (``tests/lab/stations.py``): Icecast2 fed by FFmpeg
(MP3 128 kbit/s on ``/live.mp3``) and an HLS live stream made by FFmpeg (AAC, 1 s segments,
served by a Python HTTP server that logs each request). The real daemon (``receiver run`` as a
child process) against a real Mosquitto, with output ``file`` and ``warm_up_s: 0``. Each round,
for each station, interleaved so a noisy neighbour slows all alike:

(floor) ``receiver.player.Player`` *without* the stream resolver, in this process, ``play()`` of
    the same URL (live, the options for its kind) to ``PlaybackStarted``: libVLC opening the URL
    directly, nothing of ours in between;
(command) the benchmark publishes a signed ``play`` of the URL (``max_duration_s`` a few
    seconds) and times from just before the publish to the ``started`` event's arrival; then it
    waits for ``finished`` and the amplifier off, so each command starts from idle.

The command path adds to the floor: MQTT both ways, verification, the relay switch, and the
resolver's probe (one ``GET`` of the URL, headers only for Icecast; the playlist for HLS) before
libVLC opens it. ``started`` comes when libVLC says ``Playing``, before audio is heard.

Then one longer relay per station (``--relay-s``, default 20 s) counts the requests the station
received while the daemon relayed it: HLS from the server's log (playlist reloads and segments),
Icecast from its access log (one line per connection, written when it closes). The figure to
watch is requests per second against the HLS segment rate (1 s segments: about 2 a second,
one playlist reload and one segment, is what a player must make).

Compare ratios between runs, not raw milliseconds: the machine is shared. Nothing here asserts a
time; a run fails only if a command is refused or an event never comes.

Run: ``python -m bench.relay [--count N]``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench._common import (
    CMD_TOPIC,
    EVENTS_TOPIC,
    STATE_TOPIC,
    BenchError,
    Lab,
    PlayerEvents,
    TimedClient,
    event_for,
    explained_by_logs,
    is_idle,
    load_line,
    median,
    open_lab,
    open_stations,
    parser_for,
    ratio,
    run_main,
    start_daemons,
    wait_online,
)
from receiver.config_model import PlayerConfig
from receiver.core.events import PlaybackStarted
from receiver.player import Player
from tests.lab.daemon import DEVICE, Daemon
from tests.lab.stations import HlsStation, IcecastStation

DEFAULT_COUNT = 5
RELAY_S = 4  # each timed command's window
DEFAULT_LONG_RELAY_S = 20
TIMEOUT_S = 30.0
CONFIG_EDITS = (
    ("  warm_up_s: 0.3\n", "  warm_up_s: 0\n"),
    ("  tail_s: 0.5\n", "  tail_s: 0.2\n"),
    ("  level: debug\n", "  level: info\n"),
)
CONFIG_APPEND = "policy:\n  relay_max_toggles_per_min: 60\n"


@dataclass
class Site:
    lab: Lab
    daemon: Daemon
    client: TimedClient
    icecast: IcecastStation
    hls: HlsStation
    floor_events: PlayerEvents
    floor: Player
    next_token: int = 1

    def urls(self) -> dict[str, str]:
        return {"icecast": self.icecast.url(), "hls": self.hls.url}


@contextmanager
def open_site(root: Path) -> Iterator[Site]:
    with (
        open_lab(root, tone_name="tone.wav", tone_s=0.3, key_id="op-relay-bench") as lab,
        ExitStack() as stack,
    ):
        icecast, hls, allowlist = open_stations(stack, root, lab)
        edits = (*CONFIG_EDITS, allowlist)
        config = lab.daemon_config(root, edits=edits, append=CONFIG_APPEND, wav_name="out.wav")
        client = TimedClient(lab.broker, [EVENTS_TOPIC, STATE_TOPIC], timeout_s=TIMEOUT_S)
        client.start()
        stack.callback(client.close)
        events = PlayerEvents(TIMEOUT_S)
        floor = Player(
            PlayerConfig(output="file", wav_file=root / "floor.wav", default_volume=100), events
        )
        stack.callback(floor.close)
        (daemon,) = start_daemons(stack, [config])
        with explained_by_logs({"daemon": daemon}, 30):
            wait_online(client)
            # A fresh store takes commands issued from its first trusted instant on, which it
            # sets a moment after it says "online".
            time.sleep(1.0)
            yield Site(lab, daemon, client, icecast, hls, events, floor)


def libvlc_open_s(site: Site, url: str) -> float:
    """Seconds from ``Player.play()`` of ``url`` (no resolver) to ``PlaybackStarted``."""
    token = site.next_token
    site.next_token += 1
    start = time.monotonic()
    site.floor.play(token, url, 100, live=True)
    at, event = site.floor_events.next_for(token)
    site.floor.stop()
    if not isinstance(event, PlaybackStarted):
        raise BenchError(f"libVLC did not open {url}: {event!r}")
    return at - start


def relay_command(site: Site, url: str, ref: str, seconds: int) -> float:
    """Publish a signed relay of ``url``; seconds to ``started``; returns once idle again."""
    body = {"priority": "normal", "max_duration_s": seconds, "source": {"stream": {"url": url}}}
    envelope = site.lab.signed("play", body, ref, aud=f"dev:{DEVICE}")
    start = time.monotonic()
    site.client.publish(CMD_TOPIC, envelope)
    seen, _ = site.client.next_matching(
        event_for(ref, "started", EVENTS_TOPIC, unreferenced=True), f"started for {ref}"
    )
    site.client.next_matching(
        event_for(ref, "finished", EVENTS_TOPIC, unreferenced=True),
        f"finished for {ref}",
        timeout_s=seconds + TIMEOUT_S,
    )
    site.client.next_matching(is_idle(STATE_TOPIC), f"relay off after {ref}")
    return seen - start


def request_rates(site: Site, seconds: int) -> dict[str, tuple[int, float]]:
    """Per station: requests received during one relay of ``seconds``, and per second."""
    rates: dict[str, tuple[int, float]] = {}
    before_hls = time.monotonic()
    relay_command(site, site.hls.url, "rate-hls", seconds)
    after_hls = time.monotonic()
    hls = [r for r in site.hls.web.requests if before_hls <= r.mono <= after_hls]
    rates["hls"] = (len(hls), len(hls) / (after_hls - before_hls))
    lines_before = len(site.icecast.requests())
    before = time.monotonic()
    relay_command(site, site.icecast.url(), "rate-icecast", seconds)
    after = time.monotonic()
    time.sleep(1.0)  # Icecast logs a connection when it closes
    count = len(site.icecast.requests()) - lines_before
    rates["icecast"] = (count, count / (after - before))
    return rates


def run(root: Path, count: int, long_relay_s: int) -> None:
    load_before = os.getloadavg()
    print(f"relay: starting Mosquitto, Icecast2, FFmpeg (HLS) and the daemon in {root}", flush=True)
    with open_site(root) as site:
        urls = site.urls()
        for name, url in urls.items():  # warm-up: libVLC's plugins, the daemon's first relay
            libvlc_open_s(site, url)
            relay_command(site, url, f"warmup-{name}", RELAY_S)
        floors: dict[str, list[float]] = {name: [] for name in urls}
        commands: dict[str, list[float]] = {name: [] for name in urls}
        for i in range(count):
            for name, url in urls.items():
                floors[name].append(libvlc_open_s(site, url))
                commands[name].append(relay_command(site, url, f"bench-{name}-{i}", RELAY_S))
        rates = request_rates(site, long_relay_s)
    print(f"\nsigned relay command -> `started` event, {count} rounds per station (median ms):")
    print(f"  {'station':<10} {'command':>9} {'floor':>9} {'/ floor':>9} {'overhead':>9}")
    for name in urls:
        command_ms = median(commands[name]) * 1000
        floor_ms = median(floors[name]) * 1000
        print(
            f"  {name:<10} {command_ms:9.1f} {floor_ms:9.1f} {ratio(command_ms, floor_ms):9.2f} "
            f"{command_ms - floor_ms:9.1f}"
        )
    print("  floor: libVLC play() of the same URL to PlaybackStarted, no resolver, same run")
    print(f"\nrequests to the station during one {long_relay_s} s relay (command to idle):")
    for name, (n, per_s) in rates.items():
        print(f"  {name:<10} {n:5d} requests, {per_s:5.2f} a second")
    print(load_line(load_before, os.getloadavg()))


def main(argv: Sequence[str] = ()) -> int:
    parser = parser_for("relay", __doc__)
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="rounds per station")
    parser.add_argument(
        "--relay-s", type=int, default=DEFAULT_LONG_RELAY_S, help="the long relay's seconds"
    )
    args = parser.parse_args(list(argv))
    return run_main("relay", lambda root: run(root, args.count, args.relay_s))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
