"""A live relay end to end: a real MP3 stream that plays, stalls, comes back, then goes away for
good; the daemon's watchdog restarts it, then falls back to the local file, each reported, and
the WAV holds the fallback's audio."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from receiver.central.signing import command_payload, sign_command
from tests.e2e.conftest import Site
from tests.e2e.test_daemon import wait_online
from tests.e2e.test_relay_window import next_event
from tests.lab.audio import dominant_of, read_wav, trim_silence, write_tone
from tests.lab.broker import Subscriber
from tests.lab.daemon import DEVICE, Daemon
from tests.lab.streams import StreamServer, encode, mp3_stream, write_programme


@pytest.fixture
def radio(tmp_path: Path) -> Iterator[StreamServer]:
    wav = write_programme(tmp_path / "programme.wav", 440.0, 8.0)
    with StreamServer({"/vov.mp3": mp3_stream(encode(wav, tmp_path / "vov.mp3", "mp3"))}) as s:
        yield s


def relay_config(site: Site, radio: StreamServer, fallback: Path) -> None:
    text = site.config.read_text(encoding="utf-8")
    text = text.replace(
        "  default_volume: 100\n",
        f"  default_volume: 100\n  fallback_file: {fallback}\n  stall_timeout_s: 5\n"
        "  stream_max_restarts: 1\n",
    )
    text = text.replace(
        f'allowed_hosts: ["127.0.0.1:{site.media.port}"]',
        f'allowed_hosts: ["127.0.0.1:{site.media.port}", "127.0.0.1:{radio.port}"]',
    )
    site.config.write_text(text, encoding="utf-8")


def test_a_stalled_then_lost_stream_is_restarted_then_replaced_by_the_fallback(
    site: Site,
    radio: StreamServer,
    start_daemon: Callable[[], Daemon],
    watcher: Subscriber,
    tmp_path: Path,
) -> None:
    fallback = write_tone(tmp_path / "fallback.wav", 1000.0, 3.0)
    relay_config(site, radio, fallback)
    daemon = start_daemon()
    wait_online(watcher, site)
    body = {
        "priority": "normal",
        "max_duration_s": 300,
        "source": {"stream": {"url": radio.url("/vov.mp3")}},
    }
    relay = command_payload("play", body, env="lab", aud=[f"dev:{DEVICE}"], message_id="relay")
    watcher.publish(site.cmd_topic, sign_command(relay, [site.operator]))
    assert next_event(watcher, site, "started")["ref"] == "relay"

    radio.set_mode("stall")  # the source stops sending; libVLC still says "playing"
    stalled = next_event(watcher, site, "fault")
    assert "stalled" in stalled["detail"] and "reconnect 1 of 1" in stalled["detail"]
    radio.set_mode("healthy")
    assert next_event(watcher, site, "started")["detail"] == "stream rejoined"
    assert radio.connections >= 2

    radio.set_mode("gone")  # the source leaves: the server closes and answers 404
    fell_back = next_event(watcher, site, "fault")
    assert "fallback" in fell_back["detail"]
    assert next_event(watcher, site, "started")["detail"] == "fallback file"
    daemon.wait_log(lambda line: line.get("event") == "play" and str(fallback) in line["media"])

    stop = command_payload("stop", {"target": "relay"}, env="lab", aud=[f"dev:{DEVICE}"])
    watcher.publish(site.cmd_topic, sign_command(stop, [site.operator]))
    assert next_event(watcher, site, "stopped")["ref"] == "relay"
    sound = read_wav(site.wav)  # afile starts a new WAV per item: this one is the fallback's
    assert dominant_of(trim_silence(sound.samples), sound.rate, (440.0, 1000.0)) == 1000.0
