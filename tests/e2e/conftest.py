"""Fixtures for end-to-end tests: media server, keys, a config, the daemon process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from receiver.central.signing import SigningKey
from tests.lab.audio import write_tone
from tests.lab.broker import MosquittoBroker, Subscriber
from tests.lab.daemon import DEVICE, Daemon, write_config
from tests.lab.web import MediaServer


@dataclass
class Site:
    """Everything one receiver needs, laid out in a temporary directory."""

    root: Path
    broker: MosquittoBroker
    media: MediaServer
    operator: SigningKey
    emergency: SigningKey
    config: Path
    wav: Path

    @property
    def events_topic(self) -> str:
        return f"loa/v1/dev/{DEVICE}/events"

    @property
    def state_topic(self) -> str:
        return f"loa/v1/dev/{DEVICE}/state"

    @property
    def cmd_topic(self) -> str:
        return f"loa/v1/dev/{DEVICE}/cmd"


@pytest.fixture
def site(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Site]:
    media_dir = tmp_path / "media"
    media_dir.mkdir()
    write_tone(media_dir / "tone440.wav", 440.0, 1.5)
    write_tone(media_dir / "tone1000.wav", 1000.0, 1.0)
    media = MediaServer(media_dir)
    operator = SigningKey.generate("op-e2e")
    emergency = SigningKey.generate("em-e2e")
    wav = tmp_path / "out.wav"
    config = write_config(
        tmp_path / "receiver.yaml",
        broker_port=broker.port,
        media_port=media.port,
        keys=[(operator, ["operator"], ["commune-e2e"]), (emergency, ["emergency"], ["*"])],
        wav=wav,
        state_dir=tmp_path / "state",
        cache_dir=tmp_path / "cache",
    )
    try:
        yield Site(tmp_path, broker, media, operator, emergency, config, wav)
    finally:
        media.close()


@pytest.fixture
def start_daemon(site: Site) -> Iterator[Callable[[], Daemon]]:
    started: list[Daemon] = []

    def start() -> Daemon:
        daemon = Daemon(site.config).start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()
        print("".join(daemon.raw))  # shown by pytest when the test failed


@pytest.fixture
def watcher(site: Site) -> Iterator[Subscriber]:
    with Subscriber(site.broker, [site.events_topic, site.state_topic]) as sub:
        yield sub
