"""The state directory's lock: one daemon per state, found by the next one and by relay-off.

relay-off (the unit's ExecStopPost) leaves the relay alone while another daemon holds the
state's lock: that daemon drives it (the service, started while a hand-run daemon holds the
lock, exits 75 and is restarted every 5 s; each exit must not cut the hand-run daemon's sound).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from receiver import cli, instance_lock
from tests.test_start_refusals import board, level, write_config  # noqa: F401 - a fixture


class Held:
    """The lock of a state directory, held as a running daemon holds it, until released."""

    def __init__(self, state_dir: Path) -> None:
        self.fd: int | None = instance_lock.hold(state_dir)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Held]:
    lock = Held(tmp_path / "state")
    yield lock
    lock.release()


def test_a_held_lock_names_its_holder_and_refuses_a_second_holder(
    tmp_path: Path, held: Held
) -> None:
    assert instance_lock.holder(tmp_path / "state") == os.getpid()
    with pytest.raises(instance_lock.AlreadyRunningError) as refused:
        instance_lock.hold(tmp_path / "state")
    assert refused.value.pid == os.getpid()


def test_a_lock_let_go_is_free_and_a_missing_one_is_not_made(tmp_path: Path) -> None:
    os.close(instance_lock.hold(tmp_path / "state"))
    assert instance_lock.holder(tmp_path / "state") is None
    assert instance_lock.holder(tmp_path / "elsewhere") is None
    assert not (tmp_path / "elsewhere").exists()
    os.close(instance_lock.hold(tmp_path / "state"))  # taken again once free


def test_relay_off_leaves_the_relay_to_the_daemon_that_holds_the_state(
    tmp_path: Path,
    board: MockFactory,  # noqa: F811 - the fixture
    held: Held,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path)  # gpio: mock, GPIO22, active low
    board.pin("GPIO22").drive_low()  # the running daemon's relay is on
    assert cli.main(["relay-off", "--config", str(config)]) == 0
    assert level(board, "GPIO22") is False  # still on: its daemon drives it
    (line,) = capsys.readouterr().out.splitlines()
    assert f"relay left alone: a daemon is running (pid {os.getpid()})" in line, line
    held.release()  # that daemon ends: now the relay goes off
    assert cli.main(["relay-off", "--config", str(config)]) == 0
    assert level(board, "GPIO22") is True
