"""The repository's bridged Mosquitto configs (config/brokers/), made fit for a loopback test:
for the bridge tests and bench/fleet alike (no pytest here)."""

from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[2] / "config" / "brokers"
BRIDGE = "province-25.district-a"
#: Written by tests/lab/broker.py for the loopback test, or only a deployment can fill in.
_DEPLOYMENT_KEYS = (
    "listener", "certfile", "keyfile", "cafile", "require_certificate", "allow_anonymous",
    "password_file", "acl_file", "persistence", "persistence_location", "autosave_interval",
    "set_tcp_nodelay", "remote_username", "remote_password", "bridge_cafile", "address",
)  # fmt: skip


def settings(name: str) -> list[str]:
    lines = (CONFIGS / name).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def loopback(name: str, district_port: int | None = None) -> list[str]:
    """The repository's file, less what tests/lab/broker.py sets, the bridge aimed at loopback."""
    lines = [line for line in settings(name) if line.split()[0] not in _DEPLOYMENT_KEYS]
    if district_port is not None:
        at = lines.index("connection district-a") + 1
        lines.insert(at, f"address 127.0.0.1:{district_port}")
    return lines
