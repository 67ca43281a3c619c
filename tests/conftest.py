"""Shared fixtures: a real Mosquitto per test (see :mod:`tests.lab.broker`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # imported in the fixtures: the core tier runs without paho installed
    from tests.lab.broker import MosquittoBroker


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
