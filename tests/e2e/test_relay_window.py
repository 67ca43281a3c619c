"""A live relay's window really ends it: past ``max_duration_s`` the player stops, the HTTP
connection to the station closes, the WAV stops growing and the amplifier goes off, also when a
manual ``relay on`` override keeps the amplifier itself on (then only the audio must stop)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from receiver.central.signing import command_payload, sign_command
from tests.e2e.conftest import Site
from tests.e2e.test_daemon import wait_online
from tests.lab.broker import Received, Subscriber
from tests.lab.daemon import DEVICE, Daemon
from tests.lab.streams import StreamServer, encode, mp3_stream, write_programme


@pytest.fixture
def radio(tmp_path: Path) -> Iterator[StreamServer]:
    wav = write_programme(tmp_path / "programme.wav", 440.0, 8.0)
    with StreamServer({"/vov.mp3": mp3_stream(encode(wav, tmp_path / "vov.mp3", "mp3"))}) as s:
        yield s


def allow_radio(site: Site, radio: StreamServer) -> None:
    text = site.config.read_text(encoding="utf-8")
    text = text.replace(
        f'allowed_hosts: ["127.0.0.1:{site.media.port}"]',
        f'allowed_hosts: ["127.0.0.1:{site.media.port}", "127.0.0.1:{radio.port}"]',
    )
    site.config.write_text(text, encoding="utf-8")


def send(watcher: Subscriber, site: Site, kind: str, body: dict[str, Any], ref: str) -> None:
    payload = command_payload(kind, body, env="lab", aud=[f"dev:{DEVICE}"], message_id=ref)
    watcher.publish(site.cmd_topic, sign_command(payload, [site.operator]))


def next_event(
    watcher: Subscriber, site: Site, kind: str | tuple[str, ...], timeout: float = 30
) -> dict[str, Any]:
    """The next event of the device of kind ``kind`` (or one of the kinds given)."""
    kinds = (kind,) if isinstance(kind, str) else kind

    def matches(message: Received) -> bool:
        return message.topic == site.events_topic and json.loads(message.payload)["kind"] in kinds

    event: dict[str, Any] = json.loads(watcher.wait_for(matches, timeout).payload)
    return event


def past_reset_floor(daemon: Daemon) -> None:
    """A fresh store takes commands issued from its first trusted instant on, which it sets a
    moment after it says "online": a command signed in between would be refused as replayed."""
    daemon.wait_log(lambda line: line.get("event") == "reset_floor_set")
    time.sleep(0.01)  # iat is written to the millisecond


def wav_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def relay_until_window_end(
    site: Site, radio: StreamServer, watcher: Subscriber, max_duration_s: int
) -> float:
    """Relay the radio for ``max_duration_s``; return when (monotonic) ``finished`` came."""
    body = {
        "priority": "normal",
        "max_duration_s": max_duration_s,
        "source": {"stream": {"url": radio.url("/vov.mp3")}},
    }
    send(watcher, site, "play", body, "relay")
    assert next_event(watcher, site, "started")["ref"] == "relay"
    finished = next_event(watcher, site, "finished", timeout=max_duration_s + 15)
    assert finished["ref"] == "relay"
    assert finished["detail"] == "relay ended at its planned time"
    return time.monotonic()


def assert_audio_and_connection_stopped(site: Site, radio: StreamServer, ended: float) -> None:
    deadline = ended + 1.0
    while radio.open_connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert radio.open_connections == 0, "the station still streams to the receiver"
    time.sleep(max(0.0, deadline - time.monotonic()))
    size = wav_size(site.wav)
    time.sleep(2.0)  # afile writes in real time: a live output grows by ~176 kB a second
    assert wav_size(site.wav) == size, "audio still flows into the output past the window"
    assert radio.open_connections == 0, "the receiver reconnected after its window"


def test_a_relay_stops_streaming_at_the_end_of_its_window(
    site: Site, radio: StreamServer, start_daemon: Callable[[], Daemon], watcher: Subscriber
) -> None:
    allow_radio(site, radio)
    daemon = start_daemon()
    wait_online(watcher, site)
    past_reset_floor(daemon)
    ended = relay_until_window_end(site, radio, watcher, 4)
    assert_audio_and_connection_stopped(site, radio, ended)
    daemon.wait_log(lambda line: line.get("event") == "relay_switched" and not line["on"])
    assert daemon.logged("relay_switched")[-1]["on"] is False


def test_a_relay_stops_at_its_window_end_while_the_amplifier_is_held_on(
    site: Site, radio: StreamServer, start_daemon: Callable[[], Daemon], watcher: Subscriber
) -> None:
    allow_radio(site, radio)
    daemon = start_daemon()
    wait_online(watcher, site)
    past_reset_floor(daemon)
    send(watcher, site, "relay", {"name": "amp", "state": "on", "duration_s": 600}, "amp-on")
    daemon.wait_log(lambda line: line.get("event") == "relay_switched" and line["on"])
    ended = relay_until_window_end(site, radio, watcher, 4)
    assert_audio_and_connection_stopped(site, radio, ended)
    assert daemon.logged("relay_switched")[-1]["on"] is True  # the override holds it on: silent
