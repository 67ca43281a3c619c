"""Crash isolation end to end: the media engine (libVLC's child process) dies in the middle of a
live relay, as it did with a general-protection fault inside a libVLC thread. The item ends
``failed`` ``playback_failed``, the amplifier goes off within 1 s, the station's connection is
gone, and the daemon carries on: same process, still online, and the next command plays."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from receiver.central.signing import command_payload, sign_command
from tests.e2e.conftest import Site
from tests.e2e.test_daemon import play_payload, wait_online
from tests.e2e.test_relay_window import next_event, past_reset_floor
from tests.lab.broker import Subscriber
from tests.lab.daemon import DEVICE, Daemon
from tests.lab.streams import StreamServer, encode, mp3_stream, write_programme


@pytest.fixture
def radio(tmp_path: Path) -> Iterator[StreamServer]:
    wav = write_programme(tmp_path / "programme.wav", 440.0, 8.0)
    with StreamServer({"/vov.mp3": mp3_stream(encode(wav, tmp_path / "vov.mp3", "mp3"))}) as s:
        yield s


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_a_crashed_media_engine_fails_the_relay_and_the_daemon_carries_on(
    site: Site, radio: StreamServer, start_daemon: Callable[[], Daemon], watcher: Subscriber
) -> None:
    text = site.config.read_text(encoding="utf-8")
    text = text.replace(
        f'allowed_hosts: ["127.0.0.1:{site.media.port}"]',
        f'allowed_hosts: ["127.0.0.1:{site.media.port}", "127.0.0.1:{radio.port}"]',
    )
    site.config.write_text(text, encoding="utf-8")
    daemon = start_daemon()
    wait_online(watcher, site)
    past_reset_floor(daemon)
    assert daemon.process is not None
    body = {
        "priority": "normal",
        "max_duration_s": 300,
        "source": {"stream": {"url": radio.url("/vov.mp3")}},
    }
    relay = command_payload("play", body, env="lab", aud=[f"dev:{DEVICE}"], message_id="relay")
    watcher.publish(site.cmd_topic, sign_command(relay, [site.operator]))
    assert next_event(watcher, site, "started")["ref"] == "relay"
    time.sleep(1.0)
    (engine,) = children(daemon.process.pid)
    hit = time.monotonic()
    os.kill(engine, signal.SIGSEGV)
    failed = next_event(watcher, site, "failed", 5)
    assert (failed["ref"], failed["reason"]) == ("relay", "playback_failed"), failed
    assert "media engine" in failed["detail"]
    off = daemon.wait_log(
        lambda line: (
            line.get("event") == "relay_switched"
            and line["on"] is False
            and line.get("mono", 0) > hit
        ),
        5,
    )
    assert off["mono"] - hit < 1.0, f"the amplifier went off {off['mono'] - hit:.2f} s after"
    deadline = time.monotonic() + 2.0
    while radio.open_connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert radio.open_connections == 0, "the station still streams to a dead engine"

    assert daemon.process.poll() is None, "the daemon went down with its media engine"
    watcher.publish(
        site.cmd_topic, sign_command(play_payload(site, "tone440.wav"), [site.operator])
    )
    assert next_event(watcher, site, "started")["kind"] == "started"
    assert next_event(watcher, site, "finished")["kind"] == "finished"
    assert children(daemon.process.pid) not in ([], [engine])  # a new engine
