"""``receiver``: the device-side command line (run the daemon, check a config, force the relay off,
show the device's status).

Exit status 78 (EX_CONFIG) means the daemon cannot start and a restart would not change that:
the config file is wrong, still holds the example's placeholders (broker, key), names a file
the daemon cannot read or a TLS file it cannot load, asks for a pin factory whose module is not
installed, or for pins gpiozero refuses (one pin twice, a pull the pin cannot have). The systemd
unit lists 78 in ``RestartPreventExitStatus`` so this is reported once instead of restarted
for ever.

``receiver relay-off`` (the unit's ``ExecStopPost``) switches the amplifier off whenever the
file's ``gpio`` section can be read, even if another part is wrong, and otherwise with the
settings the daemon last started with; it prints one line saying what it did.
``receiver status`` reads only local files (the daemon's last state, and the board's health
now), so it works with the network down; it exits 1 when there is no state to show. Like
``relay-off`` it needs only part of the file (``storage``, and ``policy.timezone``): with a
mistake elsewhere it says that the config has errors, then shows the state.

``check-config`` also warns, with exit 0, of what the daemon starts with but will fail on later:
expired trusted keys (central can still send new ones), a role whose threshold its valid keys no
longer reach, and a ``player.fallback_file`` it cannot read.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from receiver import __version__, logs  # first: logs sets up what structlog may import
from receiver.config_model import Config, GpioConfig
from receiver.errors import ConfigError
from receiver.i18n import forget_catalog, os_reason, tolerant_output
from receiver.i18n import gettext_ as _

if TYPE_CHECKING:
    import argparse

    from receiver.instance_lock import AlreadyRunningError

EX_CONFIG = 78
# Another daemon runs with the same state directory: worth trying again once it has stopped (the
# unit restarts the service then; a technician's own run gets one line saying what to do).
EX_TEMPFAIL = 75
#: Where scripts/install.sh puts the config; ``status`` reads it when no --config is given.
INSTALLED_CONFIG = "/etc/loa-receiver/receiver.yaml"
#: What parsing the command line loads that the running daemon never uses again.
ARGUMENT_MODULES = frozenset({"argparse", "gettext", "receiver.cli_parser"})
#: ``receiver --help``: what the technician reads (the docstring above is for developers).
HELP = """\
The receiver's command line on the board: run the daemon, check a config file, switch the
amplifier relay off, show the board's last state, print its key entry for central.

Exit status 78: the daemon cannot start and a restart would not change that (the config file
is wrong, still holds the example's placeholders, or names a file that cannot be read); the
service is then not restarted. "receiver status" reads local files only, so it works with the
network down; it exits 1 when there is no state to show. "receiver relay-off" switches the
amplifier off even when only the config's gpio section can be read."""
#: The config's reading and checking rules (receiver/config.py): imported where used, not here,
#: so that the daemon can let go of them once its config is read (see cmd_run).
CONFIG_RULES = "receiver.config"


def _load(path: str, hint: str = "") -> Config | None:
    from receiver.config import load_config

    try:
        return load_config(Path(path))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        message = _("{path}: configuration has errors, see above").format(path=path)
        print(message + hint, file=sys.stderr)
        return None


def _start_problems(config: Config) -> list[str]:
    """What would make the daemon fail at start in a way no restart can fix."""
    from receiver.config import (
        placeholders,
        unreadable_files,
        unusable_directories,
        unusable_tls_files,
    )
    from receiver.gpio import missing_pin_factory, pin_problem

    # A TLS file is loaded only once it can be read: one message per file.
    tls_files = unreadable_files(config) or unusable_tls_files(config)
    problems = placeholders(config) + tls_files + unusable_directories(config)
    missing = missing_pin_factory(config.gpio.pin_factory)
    if missing is not None:
        problems.append(f"{config.source}: gpio.pin_factory: {missing}")
    refused = pin_problem(config.gpio)
    if refused is not None:
        problems.append(f"{config.source}: gpio: {refused}")
    return problems


def _vlc_args_problem(config: Config) -> list[str]:
    """``player.vlc_args`` that libVLC refuses (check-config only: it loads libVLC, which the
    daemon keeps out of its own process; there its player's process tells the same)."""
    from receiver.player import vlc_args_refused

    refused = vlc_args_refused(config.player)
    return [] if refused is None else [f"{config.source}: {refused}"]


def cmd_check_config(args: SimpleNamespace) -> int:
    from receiver.config import config_warnings, key_expired

    config = _load(args.config)
    if config is None:
        return EX_CONFIG
    now = datetime.now(UTC)
    warnings = _start_problems(config) + _vlc_args_problem(config)
    later = config_warnings(config, now)
    for warning in warnings + later:
        print(_("warning: {message}").format(message=warning), file=sys.stderr)
    expired = sum(1 for key in config.trust.keys if key_expired(key, now))
    summary = _(
        "device {device} in {env}, groups {groups}, {keys} trusted keys{expired}, "
        "broker {host}:{port}"
    ).format(
        device=config.device_id,
        env=config.env,
        groups=", ".join(config.groups) or _("(none)"),
        keys=len(config.trust.keys),
        expired=_(" ({expired} expired)").format(expired=expired) if expired else "",
        host=config.broker.host,
        port=config.broker.port,
    )
    if warnings:
        line = _(
            "{path}: valid ({summary}), but the daemon will refuse to start with it "
            "(warnings above)"
        )
        print(line.format(path=args.config, summary=summary))
        return EX_CONFIG  # what `receiver run` would exit with: a script must not go on
    if later:
        # The daemon starts with it (a new list of keys may come from central): exit 0, but
        # the technician is told what will fail.
        line = _(
            "{path}: OK, the daemon will start with it, but read the warnings above — {summary}"
        )
        print(line.format(path=args.config, summary=summary))
        return 0
    print(_("{path}: OK — {summary}").format(path=args.config, summary=summary))
    return 0


def cmd_run(args: SimpleNamespace) -> int:
    config = _load(args.config)
    if config is None:
        return EX_CONFIG
    problems = _start_problems(config)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        refusal = _("{path}: the daemon cannot start with this, see above")
        print(refusal.format(path=args.config), file=sys.stderr)
        return EX_CONFIG
    refused = _hold_state_dir(config, args.config)
    if refused is not None:
        return refused
    import structlog

    from receiver.device_key import DeviceKeyError
    from receiver.errors import TlsFilesError, VlcArgsRefusedError
    from receiver.gpio import PinFactoryMissingError, PinRefusedError, save_settings

    logs.configure(config.logging.level, config.logging.format)
    log = structlog.get_logger("receiver").bind(device=config.device_id)
    _log_config_warnings(config, log)
    _forget_config_rules(args.forget_config_rules)
    from receiver.runtime import run_forever  # imports libVLC: only when running

    try:
        save_settings(config.storage.state_dir, config.gpio)
    except OSError as exc:  # relay-off then relies on the config file alone
        log.warning("relay_settings_not_saved", error=str(exc))
    try:
        run_forever(config)
    except PinFactoryMissingError as exc:
        log.critical("daemon_cannot_start", error=str(exc))
        return EX_CONFIG
    except PinRefusedError as exc:  # a pin the config names, refused: the config's mistake
        log.critical("daemon_cannot_start", error=f"gpio: {exc}")
        refusal = _("{path}: the daemon cannot start with this, see above")
        print(refusal.format(path=args.config), file=sys.stderr)
        return EX_CONFIG
    except DeviceKeyError as exc:  # damaged, readable by others, locked: no restart mends it
        log.critical("daemon_cannot_start", error=str(exc))
        return EX_CONFIG
    except VlcArgsRefusedError as exc:  # the config's vlc_args: no restart mends it either
        print(f"{config.source}: {exc}", file=sys.stderr)
        log.critical("daemon_cannot_start", error=str(exc))
        return EX_CONFIG
    except TlsFilesError as exc:  # changed since the check above: told as check-config tells it
        from receiver.config import unreadable_files, unusable_tls_files

        problems = unreadable_files(config) or unusable_tls_files(config)
        if not problems:
            # They load again: caught while being replaced (a renewal). A restart takes the
            # new files; exit 78 would stop the service for good.
            log.critical("daemon_failed", error=str(exc), error_type=type(exc).__name__)
            return 1
        for problem in problems:
            print(problem, file=sys.stderr)
        log.critical("daemon_cannot_start", error=str(exc))
        refusal = _("{path}: the daemon cannot start with this, see above")
        print(refusal.format(path=args.config), file=sys.stderr)
        return EX_CONFIG
    except Exception as exc:
        log.critical("daemon_failed", error=str(exc), error_type=type(exc).__name__)
        return 1
    return 0


def _hold_state_dir(config: Config, config_path: str) -> int | None:
    """Take the state directory's lock for the daemon (None), or say why not and give the exit
    status. The device key is checked first: a start refused for it, or for the directory's
    owner, leaves the directory as it was (a hand-run as root left files there that the
    daemon's own user could not open)."""
    from receiver import instance_lock
    from receiver.device_key import DeviceKeyError, refuse_unusable_device_key

    try:
        refuse_unusable_device_key(config.storage.state_dir)
        owner = _owner_root_would_wrong(config)
        if owner is not None:
            refusal = _(
                "{config}: {path} belongs to {owner}, who runs the daemon: run it as that user "
                "(sudo systemctl start loa-receiver, or sudo -u {owner} receiver run --config "
                "...); run as root, it would leave files there that {owner} cannot open"
            )
            print(
                refusal.format(config=config_path, path=owner[1], owner=owner[0]), file=sys.stderr
            )
            return EX_CONFIG
        instance_lock.hold(config.storage.state_dir)  # held until this process ends
    except instance_lock.AlreadyRunningError as running:
        print(_already_running(running, config_path), file=sys.stderr)
        return EX_TEMPFAIL
    except DeviceKeyError as exc:  # damaged, readable by others, another user's directory
        print(f"{config_path}: {exc}", file=sys.stderr)
        return EX_CONFIG
    except OSError as exc:
        where = exc.filename or config.storage.state_dir
        print(f"{config_path}: {where}: {os_reason(exc)}", file=sys.stderr)
        return EX_CONFIG
    return None


def _owner_root_would_wrong(config: Config) -> tuple[str, Path] | None:
    """For a daemon run as root, the other user who owns its state or cache directory, and
    which: the files root made there (the database and its journal, the cache's files) would
    be root's alone, and the service, run as that user, could not open them."""
    import os
    import pwd

    if os.geteuid() != 0:
        return None
    for directory in (config.storage.state_dir, config.storage.cache_dir):
        try:
            owner = directory.stat().st_uid
        except OSError:
            continue  # made by this run, as root's: not another user's
        if owner != 0:
            try:
                return pwd.getpwuid(owner).pw_name, directory
            except KeyError:
                return str(owner), directory
    return None


def _forget_config_rules(wanted: bool) -> None:
    """The daemon runs for months with the config it has read: the rules that read and checked
    it (about 0.2 MiB) are forgotten before the runtime is imported, whose modules then reuse
    that memory. The rare path of :func:`cmd_run` that needs them again loads them again.
    So is the language's catalog, and gettext with it: the daemon has no message left to
    translate once the start-up's warnings are logged.
    (``wanted`` is false when something else had imported them: a test runner calling main().)"""
    if not wanted:
        return
    forget_catalog()
    sys.modules.pop(CONFIG_RULES, None)
    with contextlib.suppress(AttributeError):
        delattr(sys.modules["receiver"], "config")
    gc.collect()


def _log_config_warnings(config: Config, log: Any) -> None:
    from receiver.config import config_warnings

    for warning in config_warnings(config, datetime.now(UTC)):
        log.warning("config_warning", warning=warning)


def _already_running(running: AlreadyRunningError, config_path: str) -> str:
    """One line for a second ``receiver run`` on a state directory in use."""
    pid = _("unknown pid") if running.pid is None else f"pid {running.pid}"
    text = _(
        "receiver: a daemon is already running ({pid}) with the state directory {state_dir} "
        "of {path}; stop it first (systemctl stop loa-receiver), or give another config"
    )
    return text.format(pid=pid, state_dir=running.state_dir, path=config_path)


def cmd_relay_off(args: SimpleNamespace) -> int:
    """For systemd's ExecStopPost: whatever happened to the daemon, the amplifier goes off.

    One line on stdout (the journal) whatever happens; exit 0 only if the relay was driven off,
    or left to another daemon that holds the state directory (a hand-run one: this unit's own
    daemon has ended by now, and its lock with it).
    """
    from receiver import instance_lock
    from receiver.config import read_gpio_settings
    from receiver.gpio import GpioError, force_off, load_saved_settings

    settings = read_gpio_settings(Path(args.config), args.state_dir)
    running = instance_lock.holder(settings.state_dir)
    if running is not None:  # not this unit's daemon, which has ended: another one, alive
        pid = _("unknown pid") if not running else f"pid {running}"
        message = _(
            "relay-off: relay left alone: a daemon is running ({pid}) with the state directory "
            "{state_dir}, and drives it"
        )
        print(message.format(pid=pid, state_dir=settings.state_dir))
        return 0
    gpio: GpioConfig | None = settings.gpio
    origin = args.config
    if gpio is None:
        gpio = load_saved_settings(settings.state_dir)
        origin = _("the settings the daemon last started with ({state_dir})").format(
            state_dir=settings.state_dir
        )
    note = ""
    if settings.problems:
        more = len(settings.problems) - 1
        note = _("; the config has errors: {problem}").format(problem=settings.problems[0])
        if more:
            note += _(" (and {count} more)").format(count=more)
    if gpio is None:
        message = _(
            "relay-off: relay NOT switched: no usable gpio settings in {path} nor in {state_dir}"
        )
        print(message.format(path=args.config, state_dir=settings.state_dir) + note)
        return 1
    active = _("active high") if gpio.active_high else _("active low")
    what = _("relay {pin} ({factory}, {active})").format(
        pin=gpio.amp_pin, factory=gpio.pin_factory, active=active
    )
    try:
        force_off(gpio)
    except GpioError as exc:
        message = _("relay-off: {relay} NOT switched: {error}")
        print(message.format(relay=what, error=exc) + note)
        return 1
    message = _("relay-off: {relay} switched off, settings from {origin}")
    print(message.format(relay=what, origin=origin) + note)
    return 0


def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def cmd_status(args: SimpleNamespace) -> int:
    """The daemon's last state from its status file, its outbox, and the board's health now."""
    hint = ""
    if args.config == INSTALLED_CONFIG:
        hint = _(" (another file: receiver status --config FILE)")
    # Only the storage (and time zone) are needed: a mistake elsewhere must not hide the state.
    from receiver.config import read_status_settings

    settings = read_status_settings(Path(args.config))
    if settings.problems:
        print("\n".join(settings.problems), file=sys.stderr)
    if settings.storage is None:  # the file itself cannot be read: its path is what is wrong
        message = _("{path}: configuration has errors, see above").format(path=args.config)
        print(message + hint, file=sys.stderr)
        return EX_CONFIG
    storage = settings.storage
    if settings.problems:
        if settings.storage_from_file:
            message = _(
                "{path}: configuration has errors, see above (the daemon will not start with "
                "it); the state below is read from {state_dir}"
            )
        else:
            message = _(
                "{path}: configuration has errors, see above (the daemon will not start with "
                "it); its storage section cannot be used, so the state below is read from the "
                "default {state_dir}"
            )
        print(message.format(path=args.config, state_dir=storage.state_dir), file=sys.stderr)
    from receiver.health import read_health
    from receiver.status import (
        StatusError,
        format_health,
        format_outbox,
        format_status,
        read_outbox,
        read_status,
        status_path,
    )

    state_dir = storage.state_dir
    path = status_path(state_dir)
    try:
        status = read_status(state_dir)
        written = path.stat().st_mtime if status is not None else None
    except (StatusError, OSError) as exc:
        cause = exc if isinstance(exc, OSError) else exc.__cause__
        if isinstance(cause, PermissionError):
            message = _("{error} (try sudo if it is a permission problem)")
        elif isinstance(cause, OSError):
            message = "{error}"  # the reason is in the technician's words already
        else:  # damaged (an edit, a full card): sudo would not help, the next state mends it
            message = _(
                "{error} (the daemon writes it anew each time it publishes the device's "
                "state: is it running? systemctl status loa-receiver)"
            )
        print(message.format(error=exc), file=sys.stderr)
        return 1
    if status is None:
        message = _(
            "no status yet: {path} does not exist "
            "(the daemon writes it each time it publishes the device's state; has it run?)"
        )
        print(message.format(path=path))
        return 1
    try:
        outbox = format_outbox(read_outbox(state_dir))
    except StatusError as exc:
        outbox = str(exc)
    board = format_health(read_health(state_dir, storage.cache_dir))
    print(
        format_status(
            status,
            time.time(),
            now_mono=time.monotonic(),
            written_utc=written,
            tz=_zone(settings.timezone),
            extra=[("outbox", outbox), ("board now", board)],
        )
    )
    return 0


def cmd_enroll(args: SimpleNamespace) -> int:
    """Print this device's registry entry (making its key on first use); see device_key."""
    config = _load(args.config)
    if config is None:
        return EX_CONFIG
    from receiver.device_key import DeviceKeyError, enrollment_line, load_or_create_device_key

    try:
        key, _made = load_or_create_device_key(config.storage.state_dir, config.device_id)
    except DeviceKeyError as exc:
        print(_("receiver enroll: {error}").format(error=exc), file=sys.stderr)
        return 1
    except OSError as exc:  # the state directory cannot be made or read by this user
        where = exc.filename or config.storage.state_dir
        message = _("receiver enroll: {where}: {reason} (storage.state_dir in {path})")
        print(
            message.format(where=where, reason=os_reason(exc), path=args.config),
            file=sys.stderr,
        )
        if isinstance(exc, PermissionError):
            print(
                _("run it as the daemon's user: sudo -u loa-receiver receiver enroll ..."),
                file=sys.stderr,
            )
        return 1
    print(enrollment_line(key))
    return 0


def _parse(argv: list[str] | None) -> SimpleNamespace:
    """The command line's arguments (``func``: the command), as a plain namespace: nothing of
    argparse stays referenced once this returns (see :func:`main`)."""

    from receiver.cli_parser import Formatter, Parser, speaking_argparse

    # Usage, errors and the help's headings in the technician's language too; put back after,
    # so that nothing else in this process (a test runner, say) speaks through this catalog.
    with speaking_argparse(_):
        parser = Parser.saying(_("did you mean {name!r}?"))(
            prog="receiver", description=_(HELP), formatter_class=Formatter
        )
        parser.add_argument(
            "--version",
            action="version",
            version=f"loa-receiver {__version__}",
            help=_("show program's version number and exit"),  # argparse's own is never translated
        )
        sub = parser.add_subparsers(dest="command", required=True)
        run = sub.add_parser("run", help=_("run the daemon"))
        _config_argument(run)
        run.set_defaults(func=cmd_run)
        check = sub.add_parser("check-config", help=_("validate a config file and exit"))
        _config_argument(check)
        check.set_defaults(func=cmd_check_config)
        relay = sub.add_parser("relay-off", help=_("force the amplifier relay off (stop helper)"))
        _config_argument(relay)
        relay.add_argument(
            "--state-dir",
            type=Path,
            default=None,
            help=_(
                "where the daemon keeps its relay settings, used when the config's storage "
                "section cannot be read (default: /var/lib/loa-receiver)"
            ),
        )
        relay.set_defaults(func=cmd_relay_off)
        status = sub.add_parser("status", help=_("show the device's last state (works offline)"))
        _config_argument(status, default=INSTALLED_CONFIG)
        status.set_defaults(func=cmd_status)
        enroll = sub.add_parser(
            "enroll", help=_("print the device's key entry for central's registry")
        )
        _config_argument(enroll)
        enroll.set_defaults(func=cmd_enroll)
        args = parser.parse_args(argv)
        _resolve_config(sub.choices[args.command], args)
        return SimpleNamespace(**vars(args))


def _config_argument(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """The config file, as ``--config FILE``, ``-c FILE`` or plainly ``FILE``: every subcommand
    takes all three, so ``check-config -c FILE`` and ``run FILE`` do what was meant."""
    if default:
        described = _("the YAML config file (default: {path})").format(path=default)
    else:
        described = _("the YAML config file")
    parser.add_argument("config_file", nargs="?", metavar="FILE", help=described)
    parser.add_argument("--config", "-c", dest="config_option", metavar="FILE", help=_("the same"))
    parser.set_defaults(config_default=default)


def _resolve_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    given = {name for name in (args.config_file, args.config_option) if name is not None}
    if len(given) > 1:
        files = " & ".join(sorted(given))
        parser.error(_("two config files given ({files}): give one").format(files=files))
    config = next(iter(given), args.config_default)
    if config is None:
        example = f"receiver {args.command} --config {INSTALLED_CONFIG}"
        parser.error(_("which config file? e.g. {example}").format(example=example))
    args.config = config


def main(argv: list[str] | None = None) -> int:
    tolerant_output()
    imported_before = {name for name in (*ARGUMENT_MODULES, CONFIG_RULES) if name in sys.modules}
    args = _parse(argv)
    args.forget_config_rules = CONFIG_RULES not in imported_before
    if args.func is cmd_run:
        # The daemon runs for months: argparse, the gettext it imports (receiver.i18n loads it
        # again if a catalog is wanted) and the parser it built would stay resident for
        # nothing, about 0.35 MiB.
        # Forgotten now, before the runtime is imported, whose modules then reuse that memory;
        # anything that imports them later loads them again. (Not what something else had
        # imported before: a test runner calling main(), say.)
        for name in ARGUMENT_MODULES - imported_before:
            sys.modules.pop(name, None)
            package, _dot, attribute = name.rpartition(".")
            if package in sys.modules:  # receiver.cli_parser stays the receiver package's too
                with contextlib.suppress(AttributeError):
                    delattr(sys.modules[package], attribute)
        gc.collect()
    if args.func is cmd_run:  # the daemon's output is the journal's
        result: int = args.func(args)
        return result
    from receiver.terminal import EXIT_PIPE_CLOSED, discard_stdout

    try:
        try:
            result = args.func(args)
        finally:
            sys.stdout.flush()  # a reader gone shows here, not at the interpreter's exit
    except BrokenPipeError:
        discard_stdout()
        return EXIT_PIPE_CLOSED
    return result


if __name__ == "__main__":
    sys.exit(main())
