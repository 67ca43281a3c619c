"""sd_notify: one datagram to ``$NOTIFY_SOCKET`` (READY, WATCHDOG, STATUS).

Written here rather than linked from libsystemd, as systemd recommends: the protocol is a single
datagram, and a leading ``@`` in the socket path means the Linux abstract namespace.
"""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``); False when not run under systemd or on error."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8", errors="replace"))
    except OSError:
        return False
    return True


def watchdog_interval_s() -> float | None:
    """Half of systemd's watchdog timeout, if one is set for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
