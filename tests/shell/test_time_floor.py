"""The time floor on disk keeps up with the synchronised clock: saved every few minutes while the
daemon runs and once more when it stops, so a power cut or a restart with a clock spoofed back
loses minutes of it, not an hour (docs/security.md, Time)."""

from __future__ import annotations

import itertools
from pathlib import Path

from receiver.core.clock import Instant
from tests.shell.doubles import open_shell


def test_the_time_floor_on_disk_is_never_more_than_five_minutes_behind(tmp_path: Path) -> None:
    shell = open_shell(tmp_path)
    runtime, saved = shell.runtime, shell.store.saved_time_floors
    start_mono, start_utc = 1000.0, 1_800_000_000.0
    for minute in range(61):  # an hour of loop turns, one a minute, the clock synchronised
        seconds = minute * 60.0
        runtime._after_turn(Instant(start_mono + seconds, start_utc + seconds, True))
    assert saved, "never saved"
    gaps = [later - earlier for earlier, later in itertools.pairwise(saved)]
    assert max(gaps) <= 300.0, f"saved only every {max(gaps):.0f} s"
    assert start_utc + 3600.0 - saved[-1] <= 300.0


def test_a_clean_stop_saves_the_time_floor(tmp_path: Path) -> None:
    shell = open_shell(tmp_path).start()
    before = len(shell.store.saved_time_floors)
    shell.stop()
    assert len(shell.store.saved_time_floors) > before, "a clean stop left the floor unsaved"
