"""Live relays end to end against real stations: the daemon relays Icecast2 (its stream and its
``.m3u``) and an HLS live stream made by FFmpeg until the window ends, then nothing more reaches
the station; and bad input (a web page, a redirect loop, a playlist naming itself or a host off
the allowlist, a server trickling a byte a second, an HLS playlist that never adds segments)
each ends ``failed`` with a reason in bounded time, with no request storm and the amplifier
off."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from receiver.central.signing import command_payload, sign_command
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
        time.sleep(1.5)
        assert [r for r in server.requests if r.mono > start + took + 0.5] == []
        assert server.serving == 0, "the receiver still holds a connection"
    finally:
        if hls is not None:
            hls.close()
