"""read_health on this machine and on fake /sys and /proc trees."""

from __future__ import annotations

import os
from pathlib import Path

from receiver.health import read_health


def fake_sys(root: Path, zones: dict[int, tuple[str, str]]) -> Path:
    """A /sys with thermal zones: number -> (type, temp file content)."""
    thermal = root / "sys" / "class" / "thermal"
    thermal.mkdir(parents=True)
    (thermal / "cooling_device0").mkdir()  # also in the real directory; not a zone
    for number, (kind, temp) in zones.items():
        zone = thermal / f"thermal_zone{number}"
        zone.mkdir()
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(temp + "\n")
    return root / "sys"


def fake_proc(root: Path, loadavg: str | None, meminfo: str | None) -> Path:
    proc = root / "proc"
    proc.mkdir()
    if loadavg is not None:
        (proc / "loadavg").write_text(loadavg)
    if meminfo is not None:
        (proc / "meminfo").write_text(meminfo)
    return proc


def test_values_on_this_machine_are_sane(tmp_path: Path) -> None:
    health = read_health(tmp_path / "state", tmp_path / "cache")  # neither exists yet
    assert set(health) == {"cpu_temp_c", "disk_free_bytes", "load_1m", "mem_available_bytes"}
    temp = health["cpu_temp_c"]
    assert temp is None or (isinstance(temp, float) and -40.0 < temp < 150.0)
    free = health["disk_free_bytes"]
    assert set(free) == {"state", "cache"}
    for value in free.values():
        assert isinstance(value, int)
        assert value >= 0
    statvfs = os.statvfs(tmp_path)
    assert abs(free["state"] - statvfs.f_bavail * statvfs.f_frsize) < 64 * 1024 * 1024
    load = health["load_1m"]
    assert isinstance(load, float)
    assert load >= 0.0
    assert abs(load - os.getloadavg()[0]) < 5.0
    mem = health["mem_available_bytes"]
    assert isinstance(mem, int)
    assert 0 < mem <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_the_cpu_thermal_zone_is_chosen_and_read_in_degrees(tmp_path: Path) -> None:
    sys_root = fake_sys(
        tmp_path,
        {0: ("gpu-thermal", "61000"), 1: ("cpu-thermal", "48312"), 2: ("pmic", "39000")},
    )
    proc = fake_proc(
        tmp_path,
        "0.42 0.30 0.25 1/123 4567\n",
        "MemTotal:         443504 kB\nMemFree:           20000 kB\n"
        "MemAvailable:     201234 kB\nBuffers:            1000 kB\n",
    )
    health = read_health(tmp_path, tmp_path, sys_root=sys_root, proc_root=proc)
    assert health["cpu_temp_c"] == 48.3
    assert health["load_1m"] == 0.42
    assert health["mem_available_bytes"] == 201234 * 1024


def test_without_a_cpu_thermal_zone_the_first_zone_in_numeric_order_is_used(
    tmp_path: Path,
) -> None:
    sys_root = fake_sys(
        tmp_path, {10: ("acpitz", "70000"), 2: ("x86_pkg_temp", "55500"), 3: ("bad", "junk")}
    )
    health = read_health(tmp_path, tmp_path, sys_root=sys_root, proc_root=tmp_path / "none")
    assert health["cpu_temp_c"] == 55.5


def test_missing_or_broken_files_give_none_never_an_exception(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "garbage\n", "MemTotal: 1 kB\n")
    health = read_health(
        tmp_path / "a" / "b",
        tmp_path / "c",
        sys_root=tmp_path / "no-sys",
        proc_root=proc,
    )
    assert health["cpu_temp_c"] is None
    assert health["load_1m"] is None
    assert health["mem_available_bytes"] is None
    assert isinstance(health["disk_free_bytes"]["state"], int)  # measured at tmp_path

    unreadable = fake_sys(tmp_path / "x", {0: ("cpu-thermal", "")})
    nothing = read_health(tmp_path, tmp_path, sys_root=unreadable, proc_root=tmp_path / "no-proc")
    assert nothing["cpu_temp_c"] is None
    assert nothing["load_1m"] is None
    assert nothing["mem_available_bytes"] is None
