"""Health of the board, for the state message and ``receiver status``: temperature, disk, load.

:func:`read_health` reads only kernel files and ``statvfs``; it never raises: a value that
cannot be read (no thermal zone on a virtual machine, a directory on a vanished mount, a kernel
without ``MemAvailable``) is None, so a missing sensor can never stop the daemon.

- ``cpu_temp_c``: the thermal zone whose ``type`` is ``cpu-thermal`` (the Raspberry Pi's SoC
  sensor), else the first zone that reads (zones in numeric order: ``thermal_zone2`` before
  ``thermal_zone10``); the kernel gives millidegrees Celsius, reported with one decimal.
- ``disk_free_bytes``: ``{"state": ..., "cache": ...}``, the bytes an unprivileged process may
  still write on the file system of the state directory and of the media cache
  (``shutil.disk_usage().free``, i.e. ``f_bavail``: the root reserve is not counted). A directory
  that does not exist yet is measured at its nearest existing parent, where it will be created.
- ``load_1m``: the one-minute load average (``/proc/loadavg``).
- ``mem_available_bytes``: ``MemAvailable`` of ``/proc/meminfo`` (what can be used without
  swapping), in bytes.

- ``traffic`` (the state message only, from a :class:`TrafficMeter`): what the daemon's TCP
  connections cost the 4G link, bytes per hour sent and received, ``mqtt`` (the broker link)
  and ``media`` (every other connection: downloads, live relays), over the last hour or, in the
  first hour, since the daemon started (``window_s`` says over how long).

``sys_root`` and ``proc_root`` exist for tests, which point them at fake trees.

How the traffic is counted: every second, :class:`TrafficMeter` looks at the TCP sockets the
process holds (``/proc/self/fd``) and reads each one's ``TCP_INFO`` from the kernel: payload
bytes sent (retransmissions included) and received, and segments each way. The figures are an
IPv4 estimate of what the operator bills: payload (TLS included) plus 52 bytes of IP and TCP
headers (with timestamps) per segment, pure ACKs included. Counted the same way, whoever opened
the socket (paho, the fetcher, libVLC), with no hook in any of them; the MQTT socket is told
apart by its inode. What it cannot see: the last second of a connection before it closes (a
download shorter than a second may be missed whole), DNS, NTP, and processes other than this
one. Connections on loopback are left out: they never reach the link (paho wakes its own loop
through one). Measured against the IP bytes an emulated 4G link forwarded, by tests/link.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from receiver.core.record import record

__all__ = ["TrafficMeter", "read_health"]

CPU_ZONE_TYPE: Final = "cpu-thermal"
_ZONE_NUMBER = re.compile(r"thermal_zone(\d+)$")
_MAX_READ: Final = 64 * 1024  # these files are tiny; never read a runaway one whole


def read_health(
    state_dir: Path,
    cache_dir: Path,
    sys_root: Path = Path("/sys"),
    proc_root: Path = Path("/proc"),
    traffic: TrafficMeter | None = None,
) -> dict[str, Any]:
    """A small dict of plain JSON values (see the module docs); never raises."""
    health: dict[str, Any] = {
        "cpu_temp_c": _cpu_temp_c(sys_root),
        "disk_free_bytes": {"state": _disk_free(state_dir), "cache": _disk_free(cache_dir)},
        "load_1m": _load_1m(proc_root),
        "mem_available_bytes": _mem_available(proc_root),
    }
    if traffic is not None:
        health["traffic"] = traffic.per_hour()
    return health


#: IPv4 (20) + TCP (20) + the timestamps option (12): the header bytes of one segment.
SEGMENT_HEADER_BYTES: Final = 52
TRAFFIC_KINDS: Final = ("mqtt", "media")
_TCP_INFO: Final = getattr(socket, "TCP_INFO", 11)
# Offsets in Linux's struct tcp_info (include/uapi/linux/tcp.h): bytes_acked u64 @120,
# bytes_received u64 @128, segs_out u32 @136, segs_in u32 @140 (Linux 4.2); bytes_sent u64 @200
# (5.5: also counts retransmitted bytes, which the operator bills too).
_INFO_BASE: Final = struct.Struct("=QQII")
_INFO_BASE_AT: Final = 120
_INFO_SENT: Final = struct.Struct("=Q")
_INFO_SENT_AT: Final = 200
_HISTORY_EVERY_S: Final = 60.0


@dataclass
class _Seen:
    kind: str
    sent: int
    received: int


@record
class TcpCounters:
    """One TCP socket's counters, as the kernel keeps them since the connection began."""

    sent: int  # payload bytes sent (retransmissions included on Linux 5.5+)
    received: int  # payload bytes received
    segs_out: int
    segs_in: int

    @property
    def wire_sent(self) -> int:
        return self.sent + SEGMENT_HEADER_BYTES * self.segs_out

    @property
    def wire_received(self) -> int:
        return self.received + SEGMENT_HEADER_BYTES * self.segs_in


def tcp_counters(sock: socket.socket, *, loopback: bool = False) -> TcpCounters | None:
    """The kernel's counters of a TCP socket, or None (not TCP, not connected, on loopback, not
    Linux, too old a kernel)."""
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) != socket.IPPROTO_TCP:
            return None
        if not loopback and ipaddress.ip_address(sock.getpeername()[0]).is_loopback:
            return None  # never on the 4G link
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256)
    except (OSError, ValueError):
        return None
    if len(info) < _INFO_BASE_AT + _INFO_BASE.size:
        return None
    acked, received, segs_out, segs_in = _INFO_BASE.unpack_from(info, _INFO_BASE_AT)
    sent = acked
    if len(info) >= _INFO_SENT_AT + _INFO_SENT.size:
        sent = max(acked, _INFO_SENT.unpack_from(info, _INFO_SENT_AT)[0])
    return TcpCounters(int(sent), int(received), int(segs_out), int(segs_in))


#: Set to "1" in the media engine child's environment to count loopback connections (tests).
TRAFFIC_LOOPBACK_ENV: Final = "LOA_TRAFFIC_LOOPBACK"


class TrafficMeter:
    """Bytes per hour on the daemon's TCP connections, MQTT and media (see the module docs).

    :meth:`sample` may be called by hand (tests); :meth:`start` runs it every ``every_s`` in a
    thread of its own until :meth:`stop`. ``mqtt_inode`` returns the inode of the broker
    connection's socket (None while there is none); every other TCP socket counts as media.
    """

    def __init__(
        self,
        mqtt_inode: Callable[[], int | None],
        *,
        fd_dir: Path = Path("/proc/self/fd"),
        clock: Callable[[], float] = time.monotonic,
        window_s: float = 3600.0,
        loopback: bool = False,
        other_media: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self._mqtt_inode = mqtt_inode
        # Media bytes moved by sockets of another process (the media engine's child), as its
        # running totals (sent, received): they never go down, so only the growth is added.
        self._other_media = other_media
        self._other_seen = (0, 0)
        self._loopback = loopback  # count loopback connections too (tests)
        self._fd_dir = fd_dir
        self._clock = clock
        self._window_s = window_s
        self._lock = threading.Lock()
        self._seen: dict[int, _Seen] = {}
        self._totals = {kind: [0, 0] for kind in TRAFFIC_KINDS}  # kind -> [sent, received]
        started = clock()
        self._history: deque[tuple[float, dict[str, tuple[int, int]]]] = deque(
            [(started, self._snapshot())]
        )
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def _snapshot(self) -> dict[str, tuple[int, int]]:
        return {kind: (sent, received) for kind, (sent, received) in self._totals.items()}

    def sample(self) -> None:
        """Add what every TCP socket of the process moved since the last sample."""
        mqtt = self._mqtt_inode()
        current: dict[int, TcpCounters] = {}
        try:
            names = os.listdir(self._fd_dir)
        except OSError:
            return
        for name in names:
            found = self._read_fd(name)
            if found is not None:
                current[found[0]] = found[1]
        other = self._other_media() if self._other_media is not None else None
        with self._lock:
            if other is not None:
                media = self._totals["media"]
                media[0] += max(0, other[0] - self._other_seen[0])
                media[1] += max(0, other[1] - self._other_seen[1])
                self._other_seen = (
                    max(other[0], self._other_seen[0]),
                    max(other[1], self._other_seen[1]),
                )
            for inode, counters in current.items():
                seen = self._seen.get(inode)
                if seen is None:
                    kind = "mqtt" if inode == mqtt else "media"
                    seen = self._seen[inode] = _Seen(kind, 0, 0)
                elif inode == mqtt:
                    seen.kind = "mqtt"
                totals = self._totals[seen.kind]
                totals[0] += max(0, counters.wire_sent - seen.sent)
                totals[1] += max(0, counters.wire_received - seen.received)
                seen.sent, seen.received = counters.wire_sent, counters.wire_received
            for inode in set(self._seen) - set(current):
                del self._seen[inode]
            now = self._clock()
            if now - self._history[-1][0] >= _HISTORY_EVERY_S:
                self._history.append((now, self._snapshot()))
                while len(self._history) > 2 and now - self._history[1][0] >= self._window_s:
                    self._history.popleft()

    def _read_fd(self, name: str) -> tuple[int, TcpCounters] | None:
        try:
            target = os.readlink(self._fd_dir / name)
        except OSError:
            return None
        if not target.startswith("socket:["):
            return None
        try:
            inode = int(target[len("socket:[") : -1])
            copy = os.dup(int(name))
        except (OSError, ValueError):
            return None
        try:
            if os.fstat(copy).st_ino != inode:  # the number was closed and reused meanwhile
                os.close(copy)
                return None
            with socket.socket(fileno=copy) as sock:
                counters = tcp_counters(sock, loopback=self._loopback)
        except OSError:
            return None
        return None if counters is None else (inode, counters)

    def totals(self, kind: str) -> tuple[int, int]:
        """Bytes (sent, received) of one kind since the meter was made."""
        with self._lock:
            sent, received = self._totals[kind]
        return sent, received

    def per_hour(self) -> dict[str, Any]:
        """``{"window_s", "mqtt": {"sent", "received"}, "media": {...}}``, bytes per hour."""
        with self._lock:
            now = self._clock()
            since, base = self._history[0]
            if now - since > self._window_s and len(self._history) > 1:
                since, base = self._history[1]
            # Whole seconds, the same in the rate as in window_s: rate x window_s / 3600 gives
            # back the bytes (central may want them), also in the first seconds.
            window = max(int(now - since), 1)
            figures: dict[str, Any] = {"window_s": window}
            for kind, (sent, received) in self._totals.items():
                figures[kind] = {
                    "sent": round((sent - base[kind][0]) * 3600 / window),
                    "received": round((received - base[kind][1]) * 3600 / window),
                }
        return figures

    def start(self, every_s: float = 1.0) -> None:
        def run() -> None:
            while not self._stopping.wait(every_s):
                try:
                    self.sample()
                except Exception:  # a meter must never take the daemon down
                    import structlog  # here: the player's child process does without it

                    structlog.get_logger(component="health").exception("traffic_sample_failed")

        self._thread = threading.Thread(target=run, name="traffic-meter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _read_text(path: Path) -> str | None:
    try:
        with path.open("r", encoding="ascii", errors="replace") as handle:
            return handle.read(_MAX_READ)
    except (OSError, ValueError):
        return None


def _zone_order(path: Path) -> int:
    match = _ZONE_NUMBER.search(path.name)
    return int(match.group(1)) if match else 1 << 30


def _zone_temp_c(zone: Path) -> float | None:
    text = _read_text(zone / "temp")
    if text is None:
        return None
    try:
        millidegrees = int(text.strip())
    except ValueError:
        return None
    return round(millidegrees / 1000.0, 1)


def _cpu_temp_c(sys_root: Path) -> float | None:
    try:
        zones = sorted((sys_root / "class" / "thermal").glob("thermal_zone*"), key=_zone_order)
    except OSError:
        return None
    for zone in zones:
        kind = _read_text(zone / "type")
        if kind is not None and kind.strip() == CPU_ZONE_TYPE:
            temp = _zone_temp_c(zone)
            if temp is not None:
                return temp
    for zone in zones:
        temp = _zone_temp_c(zone)
        if temp is not None:
            return temp
    return None


def _disk_free(directory: Path) -> int | None:
    path = directory
    try:
        while not path.exists() and path.parent != path:
            path = path.parent
        return int(shutil.disk_usage(path).free)
    except (OSError, ValueError):
        return None


def _load_1m(proc_root: Path) -> float | None:
    text = _read_text(proc_root / "loadavg")
    if text is None:
        return None
    try:
        return float(text.split()[0])
    except (IndexError, ValueError):
        return None


def _mem_available(proc_root: Path) -> int | None:
    text = _read_text(proc_root / "meminfo")
    if text is None:
        return None
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "MemAvailable":
            fields = rest.split()
            try:
                value = int(fields[0])
            except (IndexError, ValueError):
                return None
            unit = fields[1].lower() if len(fields) > 1 else ""
            return value * 1024 if unit == "kb" else value
    return None
