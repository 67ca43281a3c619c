"""read_health on this machine and on fake /sys and /proc trees."""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from pathlib import Path
from typing import Any

from receiver.health import SEGMENT_HEADER_BYTES, TrafficMeter, read_health


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


def _measure_two_connections() -> tuple[dict[str, Any], dict[str, Any]]:
    """Two real loopback connections, one playing the broker link, one a download; what a
    meter that counts loopback and one that does not (the default) make of them."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    mqtt_client = socket.create_connection(("127.0.0.1", port))
    mqtt_server, _ = server.accept()
    media_client = socket.create_connection(("127.0.0.1", port))
    media_server, _ = server.accept()
    now = [1000.0]
    meter = TrafficMeter(
        lambda: os.fstat(mqtt_client.fileno()).st_ino, clock=lambda: now[0], loopback=True
    )
    by_default = TrafficMeter(lambda: None, clock=lambda: now[0])
    try:
        meter.sample()
        mqtt_client.sendall(b"p" * 3000)
        _receive(mqtt_server, 3000)
        media_server.sendall(b"m" * 200_000)
        _receive(media_client, 200_000)
        time.sleep(0.05)  # the last ACKs
        now[0] += 3600.0
        meter.sample()
        by_default.sample()
        return meter.per_hour(), by_default.per_hour()
    finally:
        for sock in (mqtt_client, mqtt_server, media_client, media_server, server):
            sock.close()


def test_the_traffic_meter_counts_tcp_bytes_each_way_and_tells_mqtt_from_media() -> None:
    # The meter counts every TCP socket of its process: measured in a fresh process of its
    # own, where no other test's connection (a broker's, a daemon's) is open and busy.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        figures, default_figures = pool.apply(_measure_two_connections)
    assert figures["window_s"] == 3600
    # By default loopback is left out: it never reaches the 4G link.
    assert default_figures["media"] == {"sent": 0, "received": 0}
    # Only the socket the link names is MQTT; all the others (here also the far ends of both
    # connections, which live in this process too) are media.
    mqtt, media = figures["mqtt"], figures["media"]
    headers = 20 * SEGMENT_HEADER_BYTES  # handshake, data segments, ACKs
    assert 3000 <= mqtt["sent"] < 3000 + headers
    assert 0 < mqtt["received"] < headers  # ACKs only
    assert 200_000 <= media["sent"] < 200_000 * 1.1
    assert 203_000 <= media["received"] < 203_000 * 1.1


def test_the_traffic_meter_forgets_closed_sockets_and_keeps_their_bytes() -> None:
    meter = TrafficMeter(lambda: None, loopback=True)
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    client.sendall(b"x" * 10_000)
    _receive(peer, 10_000)
    meter.sample()
    before = meter.per_hour()["media"]["sent"]
    for sock in (client, peer, server):
        sock.close()
    meter.sample()
    assert meter.per_hour()["media"]["sent"] >= before > 0
    assert "traffic" in read_health(Path("/"), Path("/"), traffic=meter)


def _receive(sock: socket.socket, count: int) -> None:
    got = 0
    while got < count:
        got += len(sock.recv(65536))


def test_traffic_per_hour_is_over_the_last_hour_once_there_is_one() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    now = [0.0]
    meter = TrafficMeter(lambda: None, clock=lambda: now[0], loopback=True)
    try:
        client.sendall(b"x" * 50_000)  # all of it in the first minute
        _receive(peer, 50_000)
        time.sleep(0.05)
        for minute in range(1, 121):  # two hours, a sample a minute, nothing more sent
            now[0] = minute * 60.0
            meter.sample()
    finally:
        for sock in (client, peer, server):
            sock.close()
    figures = meter.per_hour()
    assert figures["window_s"] == 3600
    assert figures["media"]["sent"] == 0  # the burst is more than an hour old
