"""The shell's clock: one ``Instant`` per loop turn, and whether the wall clock can be believed.

"Synchronised" is the kernel's own verdict (``adjtimex``: not TIME_ERROR), which NTP daemons —
systemd-timesyncd, chrony, ntpd — maintain. A Pi without a battery-backed clock boots with a
wrong time and this says so until NTP has answered. When the uplink is gone for hours the
kernel eventually drops its "synchronised" flag although the clock is still good; the time is
then still trusted while it keeps in step with the monotonic clock since the last synchronised
reading (nobody stepped it) for up to ``HOLDOVER_S``, so a cached programme plays on through a
long outage.

Test hook: ``RECEIVER_TEST_CLOCK=<utc start>:<speed>`` makes the daemon's clocks start at that
UTC instant and run ``speed`` times faster (trusted). It exists for end-to-end tests of whole
days; the systemd unit never sets it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import time
from typing import Any, Final

from receiver.core.clock import Instant

TIME_ERROR: Final = 5  # adjtimex: the clock is not synchronised
HOLDOVER_S: Final = 7 * 86400.0
STEP_TOLERANCE_S: Final = 5.0
TEST_CLOCK_ENV: Final = "RECEIVER_TEST_CLOCK"


@functools.cache
def _libc() -> Any:
    """The C library this process already has loaded. (``ctypes.util.find_library`` would run
    ``/sbin/ldconfig -p``: a process started at each question, every 10 s in ``auto``.)"""
    return ctypes.CDLL(None, use_errno=True)


def kernel_clock_synchronised() -> bool:
    try:
        timex = ctypes.create_string_buffer(512)  # struct timex, modes = 0: read only
        state = int(_libc().adjtimex(timex))
    except (OSError, AttributeError):
        return False
    return state not in (-1, TIME_ERROR)


class SystemClock:
    speed: float = 1.0

    def __init__(self, trust: str = "auto") -> None:
        self.trust = trust  # auto | always | never
        self._checked_mono = -1e9
        self._kernel_synced = False
        self._last_sync: tuple[float, float] | None = None  # (mono, utc) when last synchronised

    def synchronised(self, mono: float, utc: float) -> bool:
        if self.trust != "auto":
            return self.trust == "always"
        if mono - self._checked_mono > 10.0:  # a syscall per loop turn would be waste
            self._kernel_synced = kernel_clock_synchronised()
            self._checked_mono = mono
        if self._kernel_synced:
            self._last_sync = (mono, utc)
            return True
        if self._last_sync is None:
            return False
        sync_mono, sync_utc = self._last_sync
        in_step = abs((utc - sync_utc) - (mono - sync_mono)) <= STEP_TOLERANCE_S
        return in_step and mono - sync_mono <= HOLDOVER_S

    def now(self) -> Instant:
        mono, utc = time.monotonic(), time.time()
        return Instant(mono, utc, self.synchronised(mono, utc))


class ScaledTestClock(SystemClock):
    """The test hook's clock: starts at a chosen UTC instant, runs ``speed`` times faster."""

    def __init__(self, start_utc: float, speed: float) -> None:
        super().__init__("always")
        self.speed = speed
        self._start_utc = start_utc
        self._origin = time.monotonic()

    def now(self) -> Instant:
        elapsed = (time.monotonic() - self._origin) * self.speed
        return Instant(self._origin + elapsed, self._start_utc + elapsed, True)


def make_clock(trust: str) -> SystemClock:
    hook = os.environ.get(TEST_CLOCK_ENV)
    if not hook:
        return SystemClock(trust)
    start, _, speed = hook.partition(":")
    return ScaledTestClock(float(start), float(speed or "1"))
