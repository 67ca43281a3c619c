"""Shared fixtures over the lab (:mod:`tests.lab`): a real Mosquitto per test, and the real
stations the relay tests play (Icecast2 and HLS fed by FFmpeg, a web server for bad answers)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # imported in the fixtures: the core tier runs without paho installed
    from tests.lab.broker import MosquittoBroker
    from tests.lab.stations import HlsStation, IcecastStation, WebServer


@pytest.fixture(autouse=True)
def _logging_as_found() -> Iterator[None]:
    """A test that runs the CLI in this process points structlog at its own captured stdout,
    which pytest closes after it: later tests' log lines, written from adapter threads, then
    failed with "I/O operation on closed file". The configuration is put back after each test."""
    imported = sys.modules.get("structlog")  # the core tier runs without it
    before: dict[str, Any] | None = imported.get_config() if imported is not None else None
    yield
    structlog = sys.modules.get("structlog")
    if structlog is None:
        return
    if before is None:  # imported by the test itself
        structlog.reset_defaults()
    elif structlog.get_config() != before:
        structlog.configure(**before)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A running Mosquitto on a free loopback port, stopped at teardown."""
    from tests.lab.broker import MosquittoBroker

    with MosquittoBroker(tmp_path / "mosquitto") as running:
        yield running


@pytest.fixture
def stopped_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A Mosquitto with its port and config chosen but not started (the test starts it)."""
    from tests.lab.broker import MosquittoBroker

    idle = MosquittoBroker(tmp_path / "mosquitto")
    try:
        yield idle
    finally:
        idle.stop()


@pytest.fixture(scope="module")
def icecast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IcecastStation]:
    """Icecast2 with FFmpeg sending a 440 Hz tone, one per test module (it takes a while)."""
    from tests.lab.stations import IcecastStation

    station = IcecastStation(tmp_path_factory.mktemp("icecast"), 440.0)
    yield station
    station.close()


@pytest.fixture
def hls(tmp_path: Path) -> Iterator[HlsStation]:
    """A live HLS stream of a 1000 Hz tone made by FFmpeg."""
    from tests.lab.stations import HlsStation

    station = HlsStation(tmp_path, 1000.0)
    yield station
    station.close()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    """An empty directory served over HTTP; a test adds files and routes (bad answers)."""
    from tests.lab.stations import WebServer

    (tmp_path / "www").mkdir()
    server = WebServer(tmp_path / "www")
    yield server
    server.close()
