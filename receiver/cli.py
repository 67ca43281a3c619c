"""``receiver``: the device-side command line (run the daemon, check a config, force the relay off,
show the device's status).

Exit status 78 (EX_CONFIG) means the configuration is wrong; the systemd unit lists it in
``RestartPreventExitStatus`` so a bad file is reported once instead of restarted forever.
``receiver status`` reads only local files (the daemon's last state, and the board's health
now), so it works with the network down; it exits 1 when there is no state to show.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog

from receiver import __version__, logs
from receiver.config import ConfigError, load_config
from receiver.config_model import Config

EX_CONFIG = 78


def _load(path: str) -> Config | None:
    try:
        return load_config(Path(path))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        print(f"{path}: configuration has errors, see above", file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EX_CONFIG
    print(
        f"{args.config}: OK — device {config.device_id} in {config.env}, "
        f"groups {', '.join(config.groups) or '(none)'}, {len(config.trust.keys)} trusted keys, "
        f"broker {config.broker.host}:{config.broker.port}"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EX_CONFIG
    from receiver.runtime import run_forever  # imports libVLC: only when running

    logs.configure(config.logging.level, config.logging.format)
    log = structlog.get_logger("receiver").bind(device=config.device_id)
    try:
        run_forever(config)
    except Exception as exc:
        log.critical("daemon_failed", error=str(exc), error_type=type(exc).__name__)
        return 1
    return 0


def cmd_relay_off(args: argparse.Namespace) -> int:
    """For systemd's ExecStopPost: whatever happened to the daemon, the amplifier goes off."""
    config = _load(args.config)
    if config is None:
        return EX_CONFIG
    from receiver.gpio import force_off

    force_off(config.gpio)
    print("amplifier relay forced off")
    return 0


def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def cmd_status(args: argparse.Namespace) -> int:
    """The daemon's last state from its status file, and the board's health now."""
    config = _load(args.config)
    if config is None:
        return EX_CONFIG
    from receiver.health import read_health
    from receiver.status import StatusError, format_health, format_status, read_status, status_path

    state_dir = config.storage.state_dir
    path = status_path(state_dir)
    try:
        status = read_status(state_dir)
        written = path.stat().st_mtime if status is not None else None
    except (StatusError, OSError) as exc:
        print(f"{exc} (try sudo if it is a permission problem)", file=sys.stderr)
        return 1
    if status is None:
        print(
            f"no status yet: {path} does not exist "
            f"(the daemon writes it each time it publishes the device's state; has it run?)"
        )
        return 1
    print(
        format_status(
            status,
            time.time(),
            now_mono=time.monotonic(),
            written_utc=written,
            tz=_zone(config.policy.timezone),
        )
    )
    board = format_health(read_health(state_dir, config.storage.cache_dir))
    print(f"{'board now':<11}{board}")
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    """Print this device's registry entry (making its key on first use); see device_key."""
    config = _load(args.config)
    if config is None:
        return EX_CONFIG
    from receiver.device_key import DeviceKeyError, enrollment_line, load_or_create_device_key

    try:
        key, _made = load_or_create_device_key(config.storage.state_dir, config.device_id)
    except DeviceKeyError as exc:
        print(f"receiver enroll: {exc}", file=sys.stderr)
        return 1
    print(enrollment_line(key))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="receiver", description=__doc__)
    parser.add_argument("--version", action="version", version=f"loa-receiver {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", "-c", required=True, help="the YAML config file")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("config", help="the YAML config file")
    check.set_defaults(func=cmd_check_config)
    relay = sub.add_parser("relay-off", help="force the amplifier relay off (stop helper)")
    relay.add_argument("--config", "-c", required=True, help="the YAML config file")
    relay.set_defaults(func=cmd_relay_off)
    status = sub.add_parser("status", help="show the device's last state (works offline)")
    status.add_argument("--config", "-c", required=True, help="the YAML config file")
    status.set_defaults(func=cmd_status)
    enroll = sub.add_parser("enroll", help="print the device's key entry for central's registry")
    enroll.add_argument("--config", "-c", required=True, help="the YAML config file")
    enroll.set_defaults(func=cmd_enroll)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
