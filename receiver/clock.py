"""The shell's clock: one ``Instant`` per loop turn, and whether the wall clock is synchronised.

"Synchronised" is the kernel's own verdict (``adjtimex``: not TIME_ERROR), which NTP daemons —
systemd-timesyncd, chrony, ntpd — maintain. A Pi without a battery-backed clock boots with a
wrong time and this says so until NTP has answered.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from typing import Final

from receiver.core.clock import Instant

TIME_ERROR: Final = 5  # adjtimex: the clock is not synchronised


def kernel_clock_synchronised() -> bool:
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        timex = ctypes.create_string_buffer(512)  # struct timex, modes = 0: read only
        state = int(libc.adjtimex(timex))
    except (OSError, AttributeError):
        return False
    return state not in (-1, TIME_ERROR)


class SystemClock:
    def __init__(self, trust: str = "auto") -> None:
        self.trust = trust  # auto | always | never
        self._synced_cache: tuple[float, bool] = (-1e9, False)

    def synchronised(self) -> bool:
        if self.trust != "auto":
            return self.trust == "always"
        checked_at, synced = self._synced_cache
        mono = time.monotonic()
        if mono - checked_at > 10.0:  # a syscall per loop turn would be waste
            synced = kernel_clock_synchronised()
            self._synced_cache = (mono, synced)
        return synced

    def now(self) -> Instant:
        return Instant(time.monotonic(), time.time(), self.synchronised())
