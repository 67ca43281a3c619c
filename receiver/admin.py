"""``receiver-admin``: the central side's tool — make keys, sign commands, publish, watch.

Operators and the demo use it to drive receivers; the tests use it too, so it is exercised the
way an operator would run it. It never needs the receiver's config.

``receiver-admin fleet`` shows every device under a prefix as a table, one row per device, from
the retained state messages (``{prefix}/dev/+/state``): the broker hands them over at once on
subscribe, so a short collection window (``--timeout``, 2 s) is enough for a snapshot;
``--watch`` keeps the subscription and redraws every second until Ctrl-C. "Last seen" is the
age of the state's ``ts`` by this machine's clock (marked ``?`` when the device says its own
clock is not synchronised); an offline state has no ``ts``, so it shows when this tool saw the
device go offline, or ``-`` for an offline state that was already retained.
"""

from __future__ import annotations

import argparse
import hashlib
import queue
import sys
import time
import unicodedata
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from receiver import __version__, admin_documents
from receiver.central.bridges import BRIDGE_STATE_FILTER, BridgeMap
from receiver.central.reports import device_mark, open_report, report_text, verifier_for
from receiver.signing import SigningKey, command_payload, sign_command

DEFAULT_PREFIX = "loa/v1"


def _keygen(args: argparse.Namespace) -> int:
    key = SigningKey.generate(args.id)
    out = Path(args.out)
    try:
        key.save(out)
    except FileExistsError:
        print(f"{out} exists already; not overwriting a key", file=sys.stderr)
        return 1
    print(f"private key written to {out} (keep it secret; key id in {out}.id)")
    print("add this to the receivers' config under trust.keys:")
    roles = ", ".join(args.roles)
    scopes = ", ".join(f'"{s}"' for s in args.scopes)
    print(
        f"  - id: {args.id}\n    ed25519: {key.public_b64}\n"
        f"    roles: [{roles}]\n    scopes: [{scopes}]"
    )
    return 0


def _file_entry(args: argparse.Namespace) -> dict[str, Any]:
    if args.file:
        data = Path(args.file).read_bytes()
        sha256, size = hashlib.sha256(data).hexdigest(), len(data)
    elif args.sha256 and args.size:
        sha256, size = args.sha256, args.size
    else:
        raise SystemExit("play needs --file (to pin its hash and size) or --sha256 and --size")
    entry: dict[str, Any] = {"url": args.url, "sha256": sha256, "size": size}
    if args.title:
        entry["title"] = args.title
    return entry


def _body(args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "play":
        body: dict[str, Any] = {
            "priority": args.priority,
            "source": {"files": [_file_entry(args)]},
            "max_duration_s": args.max_duration,
        }
    elif args.command == "stream":
        body = {
            "priority": args.priority,
            "source": {"stream": {"url": args.url}},
            "max_duration_s": args.max_duration,
        }
    elif args.command == "stop":
        return {"target": args.target}
    elif args.command == "volume":
        return {"level": args.level}
    elif args.command == "relay":
        relay: dict[str, Any] = {"name": "amp", "state": args.state}
        if args.duration is not None:
            relay["duration_s"] = args.duration
        return relay
    else:
        return {}
    if args.volume is not None:
        body["volume"] = args.volume
    if args.repeat is not None:
        body["repeat"] = args.repeat
    if args.start_at:
        body["start_at"] = args.start_at
    return body


def _topic_for(args: argparse.Namespace) -> str:
    if args.topic:
        return str(args.topic)
    kind, _, ident = args.aud[0].partition(":")
    return f"{args.prefix}/{'dev' if kind == 'dev' else 'grp'}/{ident}/cmd"


def _connect(args: argparse.Namespace, client_id: str = "") -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if args.cafile:
        client.tls_set(ca_certs=args.cafile, certfile=args.certfile, keyfile=args.keyfile)
    if args.username:
        password = Path(args.password_file).read_text().strip() if args.password_file else None
        client.username_pw_set(args.username, password)
    client.connect(args.host, args.port)
    return client


def _sign_and_send(args: argparse.Namespace) -> int:
    keys = [SigningKey.load(Path(path)) for path in args.key]
    kind = "play" if args.command == "stream" else args.command
    payload = command_payload(
        kind,
        _body(args),
        env=args.env,
        aud=args.aud,
        message_id=args.id,
        seq=args.seq,
        ttl_s=args.ttl,
    )
    envelope = sign_command(payload, keys)
    if not args.host:
        sys.stdout.write(envelope.decode("utf-8") + "\n")
        return 0
    topic = _topic_for(args)
    # The broker drops the command once it expires, so a device that was offline never gets a
    # stale backlog (the device refuses expired commands anyway).
    if not publish(args, topic, envelope, retain=False, expiry_s=int(args.ttl)):
        return 1
    print(f"sent {payload['type']} {payload['id']} (seq {payload['seq']}) to {topic}")
    return 0


def publish(
    args: argparse.Namespace, topic: str, payload: bytes, *, retain: bool, expiry_s: int | None
) -> bool:
    """Publish at QoS 1 and wait for the broker's acknowledgement; False (said) if none."""
    client = _connect(args)
    client.loop_start()
    try:
        properties = None
        if expiry_s is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.MessageExpiryInterval = max(1, expiry_s)
        info = client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        info.wait_for_publish(timeout=10)
        if not info.is_published():
            print(f"not acknowledged by {args.host}:{args.port}", file=sys.stderr)
            return False
    finally:
        client.disconnect()
        client.loop_stop()
    return True


def _watch(args: argparse.Namespace) -> int:
    """Print a device's state and events as they arrive (JSON lines)."""
    messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
    verifier = verifier_for(args.registry)
    client = _connect(args)

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        messages.put((msg.topic, bytes(msg.payload)))

    client.on_message = on_message
    base = f"{args.prefix}/dev/{args.device}"
    client.subscribe([(f"{base}/events", 1), (f"{base}/state", 1)])
    client.loop_start()
    deadline = time.monotonic() + args.timeout if args.timeout else None
    seen = 0
    try:
        while deadline is None or time.monotonic() < deadline:
            try:
                topic, payload = messages.get(timeout=0.2)
            except queue.Empty:
                continue
            report = verifier.check(topic, payload)
            print(f"{topic.rsplit('/', 1)[-1]:6} {report_text(report, payload)}", flush=True)
            if topic.endswith("/events"):
                kind = (report.body or {}).get("kind")
                seen += 1
                if kind in args.until or (args.count and seen >= args.count):
                    break
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    return 0


@dataclass(frozen=True)
class DeviceRow:
    """What the fleet table knows of one device: its last state and when that arrived."""

    device: str
    state: dict[str, Any] | None  # None: the payload was not a JSON object
    received_utc: float
    retained: bool
    verdict: str = ""  # of the device's signature (protocol §14); "" when not checked
    bridge_down: str | None = None  # the bridge the device sits behind, when it is down


FLEET_COLUMNS = ("DEVICE", "ONLINE", "STATE", "VOL", "RELAY", "SCHEDULES", "TRUST", "LAST SEEN")
_TITLE_CHARS = 32
_SCHEDULE_CHARS = 40


def _parse_state(payload: bytes) -> dict[str, Any] | None:
    return open_report(payload)  # signed (v1.1) or plain JSON


def _short(text: str, limit: int) -> str:
    text = " ".join(unicodedata.normalize("NFC", text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _age(seconds: float) -> str:
    if seconds < -5:
        return "future"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _ts_utc(value: Any) -> float | None:
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return None if moment.tzinfo is None else moment.timestamp()


def fleet_row(row: DeviceRow, now_utc: float) -> tuple[str, ...]:
    """The table cells for one device (see FLEET_COLUMNS)."""
    state = row.state
    device = row.device + device_mark(row.verdict)
    if row.bridge_down is not None:
        device += f" [BRIDGE {row.bridge_down} DOWN]"
    if state is None:
        return (device, "?", "(not a state message)", "", "", "", "", "")
    online = state.get("online")
    if online is not True:
        seen = "-" if row.retained else _age(now_utc - row.received_utc)
        return (device, "no" if online is False else "?", "-", "-", "-", "-", "-", seen)
    playing = state.get("playing")
    what = str(state.get("state", "?"))
    if what == "playing" and isinstance(playing, dict):
        what = "playing: " + _short(str(playing.get("title", "?")), _TITLE_CHARS)
    relays = state.get("relays")
    relay = str(relays.get("amp", "?")) if isinstance(relays, dict) else "?"
    if state.get("relay_override") is not None:
        relay += " (manual)"
    schedules = state.get("schedules")
    if isinstance(schedules, dict):
        compact = ",".join(f"{sid}:{version}" for sid, version in sorted(schedules.items()))
        schedule_text = _short(compact, _SCHEDULE_CHARS) or "-"
    else:
        schedule_text = "?"
    made = _ts_utc(state.get("ts"))
    seen = "?" if made is None else _age(now_utc - made)
    if made is not None and state.get("clock_synced") is False:
        seen += "?"
    return (
        device,
        "yes",
        what,
        str(state.get("volume", "?")),
        relay,
        schedule_text,
        str(state.get("trust_version", "?")),
        seen,
    )


def format_fleet(rows: dict[str, DeviceRow], now_utc: float) -> str:
    """The whole table, devices in id order, and a summary line."""
    cells = [FLEET_COLUMNS] + [fleet_row(rows[name], now_utc) for name in sorted(rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(FLEET_COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in cells
    ]
    if any(len(line[7]) > 1 and line[7].endswith("?") for line in cells[1:]):
        lines.append("(an age ending in ? comes from a device whose clock is not synchronised)")
    online = sum(1 for line in cells[1:] if line[1] == "yes")
    playing = sum(1 for line in cells[1:] if line[2].startswith("playing"))
    lines.append(
        f"{len(rows)} device{'' if len(rows) == 1 else 's'}: {online} online, "
        f"{len(rows) - online} offline or unknown, {playing} playing"
    )
    return "\n".join(lines)


def _fleet(args: argparse.Namespace) -> int:
    """A table of the devices' retained states: once, or redrawn every second (--watch)."""
    arrivals: queue.Queue[tuple[str, bytes, bool, float]] = queue.Queue()
    topic_filter = f"{args.prefix}/dev/+/state"
    verifier = verifier_for(args.registry)
    bridges = BridgeMap.load(Path(args.bridges)) if args.bridges else None

    def on_connect(
        client: mqtt.Client,
        _u: object,
        _flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _p: Properties | None,
    ) -> None:
        if not reason_code.is_failure:  # (again) after every reconnect in --watch
            client.subscribe(topic_filter, qos=1)
            if bridges is not None:
                client.subscribe(BRIDGE_STATE_FILTER, qos=1)

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        arrivals.put((msg.topic, bytes(msg.payload), bool(msg.retain), time.time()))

    try:
        client = _connect(args)
    except OSError as exc:
        print(f"cannot connect to {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    client.on_connect = on_connect
    client.on_message = on_message
    client.loop_start()
    rows: dict[str, DeviceRow] = {}

    def collect(until: float) -> None:
        while (remaining := until - time.monotonic()) > 0:
            try:
                topic, payload, retained, received = arrivals.get(timeout=remaining)
            except queue.Empty:
                return
            if bridges is not None and bridges.note(topic, payload):
                continue
            device = topic.rsplit("/", 2)[-2]
            if payload:
                report = verifier.check(topic, payload)
                rows[device] = DeviceRow(device, report.body, received, retained, report.verdict)
            else:
                rows.pop(device, None)  # the retained state was cleared

    try:
        if not args.watch:
            collect(time.monotonic() + args.timeout)
            _print_fleet(sys.stdout, _with_bridges(rows, bridges), topic_filter, clear=False)
            return 0
        clear = sys.stdout.isatty()
        while True:
            collect(time.monotonic() + 1.0)
            _print_fleet(sys.stdout, _with_bridges(rows, bridges), topic_filter, clear=clear)
    except KeyboardInterrupt:
        return 0
    finally:
        client.disconnect()
        client.loop_stop()


def _with_bridges(rows: dict[str, DeviceRow], bridges: BridgeMap | None) -> dict[str, DeviceRow]:
    if bridges is None:
        return rows
    return {name: replace(row, bridge_down=bridges.down_for(name)) for name, row in rows.items()}


def _print_fleet(out: TextIO, rows: dict[str, DeviceRow], where: str, clear: bool) -> None:
    now = time.time()
    stamp = datetime.fromtimestamp(now).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    if clear:
        out.write("\x1b[H\x1b[2J")
    out.write(f"{where} at {stamp}\n")
    out.write((format_fleet(rows, now) if rows else "no device has a retained state here") + "\n")
    out.flush()


def _broker_options(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--host", required=required, help="broker host (omit to print only)")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="topic prefix")
    parser.add_argument("--cafile", help="CA certificate: turns TLS on")
    parser.add_argument("--certfile", help="client certificate for mutual TLS")
    parser.add_argument("--keyfile", help="client private key for mutual TLS")
    parser.add_argument("--username")
    parser.add_argument("--password-file")


def _add_command_parsers(sub: Any) -> None:
    """One subcommand per command type; all share the signing and broker options."""
    for name, text in (
        ("play", "play pinned files"),
        ("stream", "relay a live stream"),
        ("stop", "stop playback"),
        ("volume", "set the volume"),
        ("report", "ask for the state now"),
        ("relay", "switch the amplifier by hand (on needs --duration)"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--key", required=True, action="append", help="private key (repeatable)")
        cmd.add_argument("--env", required=True, help="deployment environment, e.g. prod")
        cmd.add_argument("--aud", required=True, action="append", help="dev:<id> or grp:<id>")
        cmd.add_argument("--id", help="message id (default: cmd-<seq>)")
        cmd.add_argument("--seq", type=int, help="sequence number (default: UTC milliseconds)")
        cmd.add_argument("--ttl", type=float, default=300.0, help="seconds until it expires")
        cmd.add_argument("--topic", help="publish here instead of the first audience's topic")
        _broker_options(cmd, required=False)
        if name in ("play", "stream"):
            cmd.add_argument("--url", required=True)
            cmd.add_argument("--priority", default="normal")
            cmd.add_argument("--volume", type=int)
            cmd.add_argument("--repeat", type=int)
            cmd.add_argument("--max-duration", type=int, default=3600)
            cmd.add_argument("--start-at", help="RFC 3339 instant to start at")
        if name == "play":
            cmd.add_argument("--file", help="local copy of the file, to pin its hash and size")
            cmd.add_argument("--sha256")
            cmd.add_argument("--size", type=int)
            cmd.add_argument("--title")
        if name == "stop":
            cmd.add_argument("--target", default="all")
        if name == "volume":
            cmd.add_argument("--level", type=int, required=True)
        if name == "relay":
            cmd.add_argument("--state", choices=["on", "off", "auto"], required=True)
            cmd.add_argument("--duration", type=int, help="seconds before it reverts to auto")
        cmd.set_defaults(func=_sign_and_send)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="receiver-admin", description=__doc__)
    parser.add_argument("--version", action="version", version=f"loa-receiver {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    keygen = sub.add_parser("keygen", help="make an Ed25519 key pair")
    keygen.add_argument("--id", required=True, help="the key id receivers will know it by")
    keygen.add_argument("--out", required=True, help="where to write the private key (PEM)")
    keygen.add_argument("--roles", nargs="+", default=["operator"])
    keygen.add_argument("--scopes", nargs="+", default=["*"])
    keygen.set_defaults(func=_keygen)

    _add_command_parsers(sub)

    watch = sub.add_parser("watch", help="print a device's state and events")
    watch.add_argument("--device", required=True)
    watch.add_argument("--timeout", type=float, default=0.0, help="seconds (0: until Ctrl-C)")
    watch.add_argument("--count", type=int, default=0, help="stop after this many events")
    watch.add_argument("--until", nargs="*", default=[], help="stop after an event of a kind")
    watch.add_argument("--registry", help="enrolled device keys: mark reports by their signature")
    _broker_options(watch, required=True)
    watch.set_defaults(func=_watch)

    fleet = sub.add_parser("fleet", help="a table of every device's state")
    fleet.add_argument(
        "--timeout", type=float, default=2.0, help="seconds to collect states (default 2)"
    )
    fleet.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")
    fleet.add_argument(
        "--registry",
        help="enrolled device keys: mark devices whose state they did not sign",
    )
    fleet.add_argument(
        "--bridges",
        help="bridge name and device patterns per line: mark devices behind a bridge that is down",
    )
    _broker_options(fleet, required=True)
    fleet.set_defaults(func=_fleet)
    admin_documents.add_parsers(sub, _broker_options, publish)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except (OSError, ValueError) as exc:  # a key file that is missing or not a key, mostly
        print(f"receiver-admin: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
