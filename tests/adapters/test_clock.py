"""The shell clock's question to the kernel (receiver.clock): asked without starting a process.

With ``clock.trust_system_clock: auto`` (the default) the daemon asks the kernel every 10 s
whether NTP has synchronised the clock; finding libc with ``ctypes.util.find_library`` ran
``/sbin/ldconfig -p`` each time: a process started every 10 s by an idle daemon.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from receiver.clock import SystemClock, kernel_clock_synchronised


def test_asking_the_kernel_starts_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[Any] = []
    real_init = subprocess.Popen.__init__

    def spy(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        started.append(args[0] if args else kwargs.get("args"))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", spy)
    answers = {kernel_clock_synchronised() for _ in range(3)}
    clock = SystemClock("auto")
    for turn in range(3):
        clock.synchronised(mono=1000.0 + 11.0 * turn, utc=1.7e9 + 11.0 * turn)
    assert started == []
    assert len(answers) == 1  # the same answer each time (the machine's clock did not change)


def test_the_answer_is_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """adjtimex's state through the loaded libc: TIME_ERROR (5) and -1 mean not synchronised."""
    import receiver.clock as clock_module

    class FakeLibc:
        def __init__(self, state: int) -> None:
            self.state = state

        def adjtimex(self, _buffer: object) -> int:
            return self.state

    for state, expected in ((0, True), (4, True), (5, False), (-1, False)):
        monkeypatch.setattr(clock_module, "_libc", lambda state=state: FakeLibc(state))
        assert kernel_clock_synchronised() is expected
