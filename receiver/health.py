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

``sys_root`` and ``proc_root`` exist for tests, which point them at fake trees.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Final

__all__ = ["read_health"]

CPU_ZONE_TYPE: Final = "cpu-thermal"
_ZONE_NUMBER = re.compile(r"thermal_zone(\d+)$")
_MAX_READ: Final = 64 * 1024  # these files are tiny; never read a runaway one whole


def read_health(
    state_dir: Path,
    cache_dir: Path,
    sys_root: Path = Path("/sys"),
    proc_root: Path = Path("/proc"),
) -> dict[str, Any]:
    """A small dict of plain JSON values (see the module docs); never raises."""
    return {
        "cpu_temp_c": _cpu_temp_c(sys_root),
        "disk_free_bytes": {"state": _disk_free(state_dir), "cache": _disk_free(cache_dir)},
        "load_1m": _load_1m(proc_root),
        "mem_available_bytes": _mem_available(proc_root),
    }


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
