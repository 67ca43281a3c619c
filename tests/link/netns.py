"""Two network namespaces joined by an emulated 4G link, made and removed by the test.

``device`` is where the receiver runs; ``central`` is where the broker and the media servers run,
and where the test's own threads live while a :class:`LossyLink` is open (the test process's
main thread enters it with ``setns``; threads and processes it starts inherit it). The two are
joined by :mod:`tests.link.wan` (TUN devices ``wan0``, ``10.77.0.2`` on the device side and
``10.77.0.1`` on central's). No address exists outside the two namespaces; nothing else on the
machine sees this traffic.

Everything is undone by :meth:`LossyLink.close` (also after a failed test, from the fixture's
``finally``): the main thread goes back to its own namespace, the emulator ends (its devices with
it), the namespaces are deleted. A machine where namespaces or TUN devices cannot be made fails
the test with the reason; it never skips (CI runs as root and must be able to).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import IO, Any, Final

import pytest

from tests.link.wan import CLONE_NEWNET, DEVICE_NAME, setns

DEVICE_ADDR: Final = "10.77.0.2"
CENTRAL_ADDR: Final = "10.77.0.1"

#: A typical rural 4G link: one-way 50-300 ms (RTT 100-600 ms), 2 % loss each way, 1 Mbit/s.
RURAL_4G: Final[dict[str, Any]] = {
    "delay_ms": 175,
    "jitter_ms": 125,
    "loss": 0.02,
    "rate_bps": 1_000_000,
}
#: The link dies silently: every packet dropped, no RST (a NAT timeout, a dead cell).
SILENT: Final[dict[str, Any]] = {**RURAL_4G, "down": True}
#: The rural link, but it drops out for 3 s every 9 s.
FLAPPING: Final[dict[str, Any]] = {**RURAL_4G, "flap_up_s": 6.0, "flap_down_s": 3.0}


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


class LossyLink:
    """The namespaces, the emulated link between them, and the profile it currently has."""

    def __init__(self, workdir: Path, seed: int = 1) -> None:
        if shutil.which("ip") is None:
            pytest.fail("the link tier needs iproute2 (`apt-get install iproute2`)", pytrace=False)
        tag = uuid.uuid4().hex[:8]
        self.device_ns = f"loa-dev-{tag}"
        self.central_ns = f"loa-cen-{tag}"
        self.workdir = workdir
        self._made: list[str] = []
        self._home: int | None = None
        self._wan: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        problem: str | None = None
        try:
            self._setup(seed)
        except Exception as exc:
            problem = str(exc)
            self.close()
        if problem is not None:
            pytest.fail(
                f"cannot build the emulated 4G link (network namespaces and TUN devices; "
                f"the tier runs as root): {problem}",
                pytrace=False,
            )

    def _setup(self, seed: int) -> None:
        for name in (self.device_ns, self.central_ns):
            _ip("netns", "add", name)
            self._made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        self._stderr = (self.workdir / "wan.stderr").open("w")
        self._wan = subprocess.Popen(
            [sys.executable, "-m", "tests.link.wan", "--dev-ns", self.device_ns,
             "--central-ns", self.central_ns, "--seed", str(seed)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
        )  # fmt: skip
        ready = self._read()
        if ready != {"ready": True}:
            raise RuntimeError(f"the link emulator did not start: {ready}")
        for name, mine, peer in (
            (self.device_ns, DEVICE_ADDR, CENTRAL_ADDR),
            (self.central_ns, CENTRAL_ADDR, DEVICE_ADDR),
        ):
            _ip("-n", name, "addr", "add", f"{mine}/32", "peer", f"{peer}/32", "dev", DEVICE_NAME)
            _ip("-n", name, "link", "set", DEVICE_NAME, "up")
        # The test's main thread (and all it starts from now on) lives on central's side.
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        setns(f"/run/netns/{self.central_ns}")

    def _read(self) -> dict[str, Any]:
        assert self._wan is not None and self._wan.stdout is not None
        line = self._wan.stdout.readline()
        if not line:
            err = (self.workdir / "wan.stderr").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the link emulator ended: {err}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._wan is not None and self._wan.stdin is not None
        self._wan.stdin.write(json.dumps(request) + "\n")
        self._wan.stdin.flush()
        return self._read()

    def set_profile(self, profile: dict[str, Any]) -> None:
        """Apply ``profile`` (see :mod:`tests.link.wan`) to both directions, from now on."""
        self._ask({"profile": profile})

    def stats(self) -> dict[str, dict[str, int]]:
        """IP packets and bytes forwarded and dropped: ``{"up": {...}, "down": {...}}``."""
        return self._ask({"stats": True})

    def device_command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the device's namespace."""
        return ["ip", "netns", "exec", self.device_ns, *argv]

    def close(self) -> None:
        if self._home is not None:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(self._home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "cannot return to the test's own namespace")
            os.close(self._home)
            self._home = None
        if self._wan is not None:
            with contextlib.suppress(OSError):
                assert self._wan.stdin is not None
                self._wan.stdin.close()
            try:
                self._wan.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._wan.kill()
                self._wan.wait(timeout=5)
            if self._wan.stdout is not None:
                self._wan.stdout.close()
            self._wan = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        while self._made:
            _ip("netns", "del", self._made.pop())
