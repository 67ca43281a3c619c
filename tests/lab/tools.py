"""What the lab takes from the machine: installed programs and free ports.

A missing program fails the test or benchmark (:class:`MissingToolError`, saying which Debian
package to install) rather than skipping it: a CI run must not count an untested part as a pass.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path


class MissingToolError(RuntimeError):
    """A program the tests and benchmarks need is not installed: the test fails (never skips)
    and the message says which package to install."""


def need(program: str, *, package: str, also: Sequence[str] = (), why: str = "") -> str:
    """The path of ``program`` (on ``PATH``, else the first executable of ``also``), or a
    :class:`MissingToolError` naming the Debian ``package`` that brings it."""
    found = shutil.which(program)
    if found is None:
        found = next((path for path in also if os.access(path, os.X_OK)), None)
    if found is None:
        because = f": {why}" if why else ""
        raise MissingToolError(
            f"{program} is not installed{because} (Debian/Raspberry Pi OS: "
            f"`apt-get install {package}`; scripts/bootstrap.sh installs it)"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the kernel's choice, released at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def pick_port(host: str = "127.0.0.1") -> int:
    """A free TCP port below the ephemeral range, for a server that restarts on the same port:
    no outgoing connection (a client reconnecting, say) can be given it while the server is
    down."""
    low, _high = _ephemeral_range()
    candidates = range(20000, low) if low > 21000 else range(10000, 20000)
    rng = random.Random()  # noqa: S311 - a port number, not a secret
    for _ in range(200):
        port = rng.choice(candidates)
        if _port_is_free(host, port):
            return port
    return free_port(host)  # last resort
