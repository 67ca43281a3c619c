"""Live relays end to end against real stations: the daemon relays Icecast2 (its stream and its
``.m3u``) and an HLS live stream made by FFmpeg until the window ends, then nothing more reaches
the station; and bad input (a web page, a redirect loop, a playlist naming itself or a host off
the allowlist, a server trickling a byte a second, an HLS playlist that never adds segments, a
station that starts hanging up every connection in the middle of a relay, a station's name
that the name server never answers) each ends ``failed`` with a reason in bounded time, with no
request storm and the amplifier off; a stop while the name is being looked up is prompt."""

from __future__ import annotations

import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from receiver.central.signing import command_payload, sign_command
from receiver.streams import LOOKUP_TIMEOUT_S, RESOLVE_DEADLINE_S
from tests.e2e.conftest import Site
from tests.e2e.test_daemon import wait_online
from tests.e2e.test_relay_window import next_event, past_reset_floor
from tests.lab.audio import dominant_of, read_wav, trim_silence
from tests.lab.broker import Subscriber
from tests.lab.daemon import DEVICE, Daemon
from tests.lab.stations import (
    HlsStation,
    IcecastStation,
    Request,
    WebServer,
    answer,
    mp3_tone,
    plays_then_hangs_up,
    redirect,
    trickle,
)

STALL_TIMEOUT_S = 5
MAX_RESTARTS = 1


def relay_config(site: Site, *ports: int) -> None:
    text = site.config.read_text(encoding="utf-8")
    text = text.replace(
        "  default_volume: 100\n",
        f"  default_volume: 100\n  stall_timeout_s: {STALL_TIMEOUT_S}\n"
        f"  stream_max_restarts: {MAX_RESTARTS}\n",
    )
    hosts = ", ".join(f'"127.0.0.1:{port}"' for port in (site.media.port, *ports))
    text = text.replace(
        f'allowed_hosts: ["127.0.0.1:{site.media.port}"]', f"allowed_hosts: [{hosts}]"
    )
    site.config.write_text(text, encoding="utf-8")


def relay(watcher: Subscriber, site: Site, url: str, max_duration_s: int = 300) -> None:
    body = {
        "priority": "normal",
        "max_duration_s": max_duration_s,
        "source": {"stream": {"url": url}},
    }
    payload = command_payload("play", body, env="lab", aud=[f"dev:{DEVICE}"], message_id="relay")
    watcher.publish(site.cmd_topic, sign_command(payload, [site.operator]))


def amplifier_goes_off(daemon: Daemon) -> None:
    daemon.wait_log(lambda _: daemon.logged("relay_switched")[-1]["on"] is False, 5)


def busiest_second(requests: list[Request]) -> int:
    """The most requests the server got within any one second."""
    times = sorted(r.mono for r in requests)
    return max((sum(1 for t in times if start <= t < start + 1.0) for start in times), default=0)


# --- good stations ---------------------------------------------------------------------------


def test_the_daemon_relays_hls_until_its_window_ends_then_leaves_the_server_alone(
    site: Site, hls: HlsStation, start_daemon: Callable[[], Daemon], watcher: Subscriber
) -> None:
    relay_config(site, hls.web.port)
    daemon = start_daemon()
    wait_online(watcher, site)
    past_reset_floor(daemon)
    start = time.monotonic()
    relay(watcher, site, hls.url, max_duration_s=10)
    assert next_event(watcher, site, ("started", "failed"), 30)["kind"] == "started"
    finished = next_event(watcher, site, ("finished", "failed", "fault"), 30)
    assert finished["kind"] == "finished", finished
    ended = time.monotonic()
    time.sleep(1.0)
    during = [r for r in hls.web.requests if start <= r.mono]
    assert any(r.path.endswith(".ts") for r in during), during
    assert busiest_second(during) <= 5, during
    time.sleep(3.0)  # a relay left running would reload the playlist every second
    assert [r for r in hls.web.requests if r.mono > ended + 1.0] == []
    amplifier_goes_off(daemon)
    sound = read_wav(site.wav)
    assert dominant_of(trim_silence(sound.samples), sound.rate, (440.0, 1000.0)) == 1000.0


@pytest.mark.parametrize("path", ["/live.mp3", "/live.mp3.m3u"])
def test_the_daemon_relays_icecast_and_its_m3u(
    site: Site,
    icecast: IcecastStation,
    start_daemon: Callable[[], Daemon],
    watcher: Subscriber,
    path: str,
) -> None:
    relay_config(site, icecast.port)
    daemon = start_daemon()
    wait_online(watcher, site)
    past_reset_floor(daemon)
    before = len(icecast.requests())
    relay(watcher, site, icecast.url(path), max_duration_s=6)
    assert next_event(watcher, site, ("started", "failed"), 30)["kind"] == "started"
    assert next_event(watcher, site, ("finished", "failed", "fault"), 30)["kind"] == "finished"
    amplifier_goes_off(daemon)
    time.sleep(1.0)
    lines = icecast.requests()[before:]
    assert 1 <= len(lines) <= 4, lines  # the probe (and the playlist), then one connection
    sound = read_wav(site.wav)
    assert dominant_of(trim_silence(sound.samples), sound.rate, (440.0, 1000.0)) == 440.0


# --- bad input -------------------------------------------------------------------------------

BadSetup = Callable[[WebServer, HlsStation | None], str]


def html_page(web: WebServer, hls: HlsStation | None) -> str:
    return web.route("/radio", answer(200, "text/html", b"<html><body>Radio</body></html>"))


def redirect_loop(web: WebServer, hls: HlsStation | None) -> str:
    web.route("/b", redirect("/a"))
    return web.route("/a", redirect("/b"))


def playlist_naming_itself(web: WebServer, hls: HlsStation | None) -> str:
    return web.route("/self.m3u", answer(200, "audio/x-mpegurl", web.url("/self.m3u").encode()))


def playlist_off_the_allowlist(web: WebServer, hls: HlsStation | None) -> str:
    body = b"[playlist]\nFile1=http://radio.example/live.mp3\nNumberOfEntries=1\n"
    return web.route("/radio.pls", answer(200, "audio/x-scpls", body))


def trickling_server(web: WebServer, hls: HlsStation | None) -> str:
    return web.route("/slow.mp3", trickle(1.0, limit_s=20))


def frozen_hls(web: WebServer, hls: HlsStation | None) -> str:
    assert hls is not None
    hls.freeze()  # the encoder died: the playlist never gets another segment
    return hls.url


@pytest.mark.parametrize(
    "case",
    [
        (html_page, 15, 2 * (1 + MAX_RESTARTS)),
        (redirect_loop, 15, 4 * (1 + MAX_RESTARTS)),
        (playlist_naming_itself, 15, 1 + MAX_RESTARTS),
        (playlist_off_the_allowlist, 15, 1 + MAX_RESTARTS),
        (trickling_server, 40, 1 + MAX_RESTARTS),
        (frozen_hls, 60, None),
    ],
    ids=lambda case: case[0].__name__,
)
def test_bad_input_ends_failed_in_bounded_time_without_a_request_storm(
    site: Site,
    web: WebServer,
    start_daemon: Callable[[], Daemon],
    watcher: Subscriber,
    case: tuple[BadSetup, float, int | None],
) -> None:
    setup, bound_s, max_requests = case
    hls = HlsStation(site.root, 1000.0) if setup is frozen_hls else None
    try:
        server = hls.web if hls is not None else web
        relay_config(site, server.port)
        daemon = start_daemon()
        wait_online(watcher, site)
        past_reset_floor(daemon)
        url = setup(web, hls)
        start = time.monotonic()
        relay(watcher, site, url)
        failed = next_event(watcher, site, ("failed", "finished"), bound_s)
        took = time.monotonic() - start
        assert failed["kind"] == "failed", failed
        assert failed["reason"] == "stream_failed" and failed["detail"], failed
        requests = [r for r in server.requests if r.mono >= start]
        if max_requests is not None:
            assert len(requests) <= max_requests, requests
        assert busiest_second(requests) <= 5, requests
        amplifier_goes_off(daemon)
        quiet_from = time.monotonic()
        # A server only learns of a hang-up when a write fails, and the first write after the
        # close still succeeds (the peer's reset comes back with it): a route writing a byte a
        # second notices up to two seconds later. Poll for the release, then keep watching
        # for new requests for the rest of the quiet interval.
        deadline = quiet_from + 5.0
        while server.serving != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.serving == 0, "the receiver still holds a connection"
        time.sleep(max(0.0, quiet_from + 1.5 - time.monotonic()))
        assert [r for r in server.requests if r.mono > start + took + 0.5] == []
    finally:
        if hls is not None:
            hls.close()


def test_a_station_hanging_up_in_mid_relay_ends_failed_without_a_request_storm(
    site: Site, web: WebServer, start_daemon: Callable[[], Daemon], watcher: Subscriber
) -> None:
    # Before the stream gate, libVLC asked such a station about 1,900 times a second (with
    # Icecast's headers it reconnects at once whenever a read ends) until the stall watchdog.
    audio = mp3_tone(site.root / "tone.mp3", 440.0, 20.0)
    url = web.route("/live.mp3", plays_then_hangs_up(audio, 128_000, audio_s=4.0))
    relay_config(site, web.port)
    daemon = start_daemon()
    wait_online(watcher, site)
    past_reset_floor(daemon)
    start = time.monotonic()
    relay(watcher, site, url)
    assert next_event(watcher, site, ("started", "failed"), 30)["kind"] == "started"
    reconnect = next_event(watcher, site, ("fault", "failed", "finished"), 30)
    assert reconnect["kind"] == "fault" and "reconnect 1 of 1" in reconnect["detail"], reconnect
    failed = next_event(watcher, site, ("failed", "finished"), 30)
    ended = time.monotonic()
    assert failed["kind"] == "failed" and failed["reason"] == "stream_failed", failed
    requests = [r for r in web.requests if r.mono >= start]
    print(f"\nrequests: {len(requests)} in {ended - start:.1f} s")
    assert busiest_second(requests) <= 5, requests
    assert len(requests) <= 8, requests  # probe and gate, each (re)start
    amplifier_goes_off(daemon)
    time.sleep(1.0)
    assert web.serving == 0, "the receiver still holds a connection"
    size = site.wav.stat().st_size
    time.sleep(1.5)
    assert [r for r in web.requests if r.mono > ended + 0.5] == []
    assert site.wav.stat().st_size == size, "the WAV still grows after the relay failed"
    sound = read_wav(site.wav)
    assert dominant_of(trim_silence(sound.samples), sound.rate, (440.0, 1000.0)) == 440.0


# --- a name server gone silent ------------------------------------------------------------------


class SilentNameServer:
    """A UDP port 53 on a loopback address of its own that reads queries and never answers (a
    4G link whose name server has gone quiet: glibc then waits its full timeouts)."""

    def __init__(self) -> None:
        self.queries = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(20):
            self.address = f"127.53.{secrets.randbelow(254) + 1}.{secrets.randbelow(254) + 1}"
            try:
                self._sock.bind((self.address, 53))
                break
            except OSError:
                continue
        else:
            pytest.fail("no free loopback address for the silent name server (root?)")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                self._sock.recv(512)
            except OSError:
                return
            self.queries += 1

    def close(self) -> None:
        self._sock.close()


@dataclass
class SilentDnsDaemon(Daemon):
    """The daemon in a mount namespace of its own whose ``/etc/resolv.conf`` names only the
    silent name server (the network is the machine's loopback, as for every other test)."""

    resolv_conf: Path | None = None

    def command(self) -> list[str]:
        assert self.resolv_conf is not None
        script = 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
        inner = super().command()
        return ["unshare", "--mount", "sh", "-c", script, "sh", str(self.resolv_conf), *inner]


@pytest.fixture
def silent_dns_daemon(site: Site) -> Iterator[tuple[Callable[[], Daemon], SilentNameServer]]:
    for tool in ("unshare", "mount"):
        if shutil.which(tool) is None:
            pytest.fail(f"this test needs {tool} (util-linux)", pytrace=False)
    name_server = SilentNameServer()
    resolv_conf = site.config.parent / "resolv.conf"
    resolv_conf.write_text(f"nameserver {name_server.address}\noptions timeout:30 attempts:1\n")
    started: list[Daemon] = []

    def start() -> Daemon:
        daemon = SilentDnsDaemon(site.config, resolv_conf=resolv_conf).start()
        started.append(daemon)
        return daemon

    yield start, name_server
    for daemon in started:
        daemon.kill()
        print("".join(daemon.raw))  # shown by pytest when the test failed
    name_server.close()


SILENT_HOST = "radio.silent.test"


def events_seen(watcher: Subscriber, site: Site) -> list[bytes]:
    return [m.payload for m in list(watcher.seen) if m.topic == site.events_topic]


def silent_host_config(site: Site, port: int) -> str:
    """Allow the station's name (it never resolves), with the stall watchdog at its default
    (8 s: the name's lookup gives up before it); the relay's URL."""
    relay_config(site, port)
    text = site.config.read_text(encoding="utf-8")
    text = text.replace("allowed_hosts: [", f'allowed_hosts: ["{SILENT_HOST}:{port}", ', 1)
    text = text.replace(f"stall_timeout_s: {STALL_TIMEOUT_S}\n", "stall_timeout_s: 8\n", 1)
    site.config.write_text(text, encoding="utf-8")
    return f"http://{SILENT_HOST}:{port}/live.mp3"


def test_a_station_name_the_name_server_never_answers_ends_failed_on_time(
    site: Site,
    web: WebServer,
    silent_dns_daemon: tuple[Callable[[], Daemon], SilentNameServer],
    watcher: Subscriber,
) -> None:
    start_daemon, name_server = silent_dns_daemon
    url = silent_host_config(site, web.port)
    daemon = start_daemon()
    wait_online(watcher, site)
    past_reset_floor(daemon)
    start = time.monotonic()
    relay(watcher, site, url)
    # Each start waits for the name LOOKUP_TIMEOUT_S, not glibc's 30 s; 1 s between the two.
    bound_s = (1 + MAX_RESTARTS) * LOOKUP_TIMEOUT_S + 1 + 5
    failed = next_event(watcher, site, ("failed", "finished"), bound_s)
    took = time.monotonic() - start
    print(f"\nfailed after {took:.1f} s; {name_server.queries} queries to the name server")
    assert failed["kind"] == "failed" and failed["reason"] == "stream_failed", failed
    assert failed["detail"] == (
        f"the stream failed: not relayed: cannot look up {SILENT_HOST}: the name server did "
        f"not answer in {LOOKUP_TIMEOUT_S:g} s; gave up after {MAX_RESTARTS} reconnects"
    ), failed
    assert name_server.queries >= 1, "the name server was never asked: the test proves nothing"
    amplifier_goes_off(daemon)
    assert web.requests == []


def test_a_stop_while_the_station_name_is_looked_up_is_prompt(
    site: Site,
    web: WebServer,
    silent_dns_daemon: tuple[Callable[[], Daemon], SilentNameServer],
    watcher: Subscriber,
) -> None:
    start_daemon, name_server = silent_dns_daemon
    url = silent_host_config(site, web.port)
    daemon = start_daemon()
    wait_online(watcher, site)
    past_reset_floor(daemon)
    relay(watcher, site, url)
    deadline = time.monotonic() + 10
    while name_server.queries == 0:
        assert time.monotonic() < deadline, "the station's name was never looked up"
        time.sleep(0.05)
    time.sleep(1.0)  # well into the lookup
    stop = command_payload("stop", {"target": "relay"}, env="lab", aud=[f"dev:{DEVICE}"])
    stopped_at = time.monotonic()
    watcher.publish(site.cmd_topic, sign_command(stop, [site.operator]))
    stopped = next_event(watcher, site, ("stopped", "failed", "finished"), 10)
    print(f"\nstopped {time.monotonic() - stopped_at:.2f} s after the stop was sent")
    assert stopped["kind"] == "stopped" and stopped["ref"] == "relay", stopped
    amplifier_goes_off(daemon)
    # Past the end: nothing more is reported for the relay, and nothing reaches the station.
    reported = events_seen(watcher, site)
    time.sleep(RESOLVE_DEADLINE_S + 2)  # past the lookup's deadline
    assert events_seen(watcher, site)[len(reported) :] == []
    assert daemon.logged("relay_switched")[-1]["on"] is False
    assert web.requests == []
