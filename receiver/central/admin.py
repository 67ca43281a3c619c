"""``receiver-admin``: the central side's tool — keys, commands, programmes, the fleet, reports.

Operators drive the receivers with it; the tests use it too, so it is exercised the way an
operator runs it. What it signs is first checked by the receivers' own rules: a command or
document a receiver would refuse never leaves. Broker failures are one line each.
``schedule show`` and ``report --db`` are spelled with a space; docs/operations.md section 9.

Exit statuses: 0 done; 1 done, but what was asked did not happen (``watch`` saw nothing, or not
the event ``--until`` asked for, in its ``--timeout``; ``fleet --group`` or ``schedule show
--group`` named a group no device's state lists); 2 bad input (usage, a document or command a
receiver would refuse, an unreadable key or file); 3 the broker (unreachable, TLS, login
refused, ACL, no answer in time, not acknowledged); 130 stopped by Ctrl-C before it was done
(``watch`` with ``--until`` or ``--count``, a plain ``fleet`` still collecting: stopping plain
``watch`` or ``fleet --watch`` is their normal end, 0); 141 what reads stdout went away
(``| head -1``), as a shell reports a tool SIGPIPE ended; 143 ``collect`` stopped by SIGTERM before
it had connected: after its one line it ends by SIGTERM itself, which systemd counts a clean
stop and a shell shows as 143 (once it collects, SIGTERM and Ctrl-C end it in order, 0). Option
names are taken only whole (``--broker`` is not ``--broker-timeout``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import yaml

from receiver import __version__
from receiver.central import collector, fleet, report
from receiver.central import documents as admin_documents
from receiver.central.bridges import BRIDGE_STATE_FILTER, BridgeMap, with_bridges
from receiver.central.broker import (
    EXIT_BROKER,
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_OK,
    BrokerError,
    BrokerOptions,
    Connection,
)
from receiver.central.cluster import add_node_option, further_nodes
from receiver.central.inputs import (
    InputError,
    client_id,
    command_ttl,
    device_or_every,
    host,
    identifier,
    key_id,
    load_keys,
    port,
    positive_int,
    positive_number,
    refuse_if_invalid,
    refuse_if_too_large,
    scope,
    scopes_or_every,
    seconds,
    topic_prefix,
    why,
)
from receiver.central.received import DeviceMessage, device_topics, parse_device_message
from receiver.central.reports import (
    Registry,
    ReportVerifier,
    message_text,
    registry_for,
    verifier_for,
)
from receiver.central.signing import SigningKey, command_payload, sign_command
from receiver.cli_parser import Formatter, Parser
from receiver.core import reasons, vocabulary
from receiver.core.commands import parse_time
from receiver.i18n import tolerant_output
from receiver.terminal import EXIT_PIPE_CLOSED, discard_stdout

DEFAULT_PREFIX = "loa/v1"
EXIT_INTERRUPTED = 130  # Ctrl-C before what was asked happened, as a shell reports it
EXIT_TERMINATED = 143  # SIGTERM before collect began (timeout, systemd), as a shell shows it
FLEET_COLUMNS = fleet.COLUMNS
SNAPSHOT_QUIET_S = 0.5
DAY_S = 86400
#: A ``--start-at`` may be this far behind the clock (a command typed for "now") ...
START_AT_SLACK_S = 60
#: ... and at most this far ahead.
START_AT_HORIZON_S = 7 * DAY_S

#: ``receiver-admin --help``: what the operator reads (the docstring above is for developers).
HELP = """\
The central side's tool: keys, commands, programmes, the fleet, reports. What it signs is first
checked by the receivers' own rules: a command or document a receiver would refuse never
leaves. Broker failures are one line each. "schedule show" and "report --db" are spelled with a
space (docs/operations.md, section 9).

Exit status: 0 done; 1 done, but what was asked did not happen ("watch" saw nothing, or not the
event --until asked for, in its --timeout; "fleet --group" or "schedule show --group" named a
group no device's state lists); 2 bad input (usage, a document or command a receiver would
refuse, an unreadable key or file); 3 the broker (unreachable, TLS, login refused, ACL, no
answer in time, not acknowledged); 130 stopped by Ctrl-C before it was done; 141 what reads
stdout went away ("| head -1"); 143 "collect" stopped by SIGTERM before it had connected.
Option names are taken only whole (--broker is not --broker-timeout)."""


def _keygen(args: argparse.Namespace) -> int:
    key = SigningKey.generate(args.id)
    out = Path(args.out)
    if out.is_dir():
        raise InputError(f"--out {out}: a directory; give the key file's name, e.g. {out}/op.pem")
    try:
        key.save(out)
    except FileExistsError:
        print(f"receiver-admin: {out} exists already; not overwriting a key", file=sys.stderr)
        return EXIT_INPUT
    except FileNotFoundError as exc:
        raise InputError(f"--out {out}: the directory {out.parent} does not exist") from exc
    except OSError as exc:
        reason = f"cannot write the key ({why(exc)}); nothing was written"
        raise InputError(f"--out {out}: {reason}") from exc
    print(f"private key written to {out} (keep it secret; key id in {out}.id)")
    print("add this to the receivers' config under trust.keys:")
    roles = ", ".join(args.roles)
    scopes = ", ".join(f'"{s}"' for s in scopes_or_every(args.scopes, args.id))
    print(
        f"  - id: {_yaml_text(args.id)}\n    ed25519: {key.public_b64}\n"
        f"    roles: [{roles}]\n    scopes: [{scopes}]"
    )
    return EXIT_OK


def _yaml_text(text: str) -> str:
    """``text`` as YAML reads it back: plain if it is, else quoted (``&op``, ``'x``, ``true``)."""
    try:
        plain = yaml.safe_load(f"id: {text}") == {"id": text}
    except yaml.YAMLError:
        plain = False
    return text if plain else json.dumps(text)


def _file_entry(args: argparse.Namespace) -> dict[str, Any]:
    if args.file:
        try:
            data = Path(args.file).read_bytes()
        except OSError as exc:
            raise InputError(f"--file {args.file}: cannot read it ({exc.strerror or exc})") from exc
        sha256, size = hashlib.sha256(data).hexdigest(), len(data)
        if args.sha256 and args.sha256.lower() != sha256:
            raise InputError(
                f"--sha256 {args.sha256} does not match --file {args.file} (its sha256 is "
                f"{sha256}): give the file the boards will download, or leave out --sha256"
            )
        if args.size is not None and args.size != size:
            raise InputError(
                f"--size {args.size} does not match --file {args.file} ({size} bytes): give "
                "the file the boards will download, or leave out --size"
            )
    elif args.sha256 and args.size is not None:
        sha256, size = args.sha256, args.size
    else:
        raise InputError("play needs --file (to pin its hash and size) or --sha256 and --size")
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


def _topics_for(args: argparse.Namespace) -> list[str]:
    """Where the command goes: ``--topic``, or each audience's command topic (a device that is
    in two of them takes the second copy as the duplicate it is)."""
    topics: list[str] = []
    for audience in args.aud:
        kind, _, ident = audience.partition(":")
        topic = f"{args.prefix}/{'dev' if kind == 'dev' else 'grp'}/{ident}/cmd"
        if topic not in topics:
            topics.append(topic)
    if args.topic:
        # Only a command topic one of the audiences listens on, under --prefix: any other
        # board refuses it, and no board listens outside its prefix.
        if args.topic not in topics:
            raise InputError(
                f"--topic {args.topic}: not the command topic of {' or '.join(args.aud)} under "
                f"--prefix {args.prefix} ({' or '.join(topics)}); the boards would not get it "
                "(leave --topic out: each audience's topic is used)"
            )
        return [str(args.topic)]
    return topics


def _refuse_an_unlikely_start(start_at: str, now: float) -> None:
    """A ``--start-at`` in the past (the boards play it at once) or more than
    :data:`START_AT_HORIZON_S` ahead (it would wait on every board for weeks) is a slip of the
    date or the zone far more often than what was meant: refused, nothing sent."""
    starts = parse_time(start_at, "start_at", reasons.BAD_BODY)
    local = datetime.fromtimestamp(starts).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    if starts < now - START_AT_SLACK_S:
        raise InputError(
            f"--start-at {start_at}: that is {local}, in the past; the boards would play it at "
            "once. Check the date and the zone offset, or leave --start-at out to play now"
        )
    if starts > now + START_AT_HORIZON_S:
        raise InputError(
            f"--start-at {start_at}: that is {local}, more than "
            f"{START_AT_HORIZON_S // DAY_S} days ahead; check the year and the date "
            "(a recurring programme is a schedule)"
        )


def _sign_and_send(args: argparse.Namespace) -> int:
    kind = "play" if args.command == "stream" else args.command
    # A registry that cannot be read is refused before anything is signed or sent, as fleet does.
    registry = registry_for(args.registry)
    if args.ttl <= 0:
        raise InputError(f"--ttl {args.ttl:g}: a command needs a positive lifetime (seconds)")
    payload = command_payload(
        kind,
        _body(args),
        env=args.env,
        aud=args.aud,
        message_id=args.id,
        seq=args.seq,
        ttl_s=args.ttl,
    )
    refuse_if_invalid("command", payload)
    if args.command in ("play", "stream") and args.start_at:
        _refuse_an_unlikely_start(args.start_at, time.time())
    for audience in args.aud if args.topic is None else ():
        if audience.partition(":")[0] not in ("dev", "grp"):
            raise InputError(f"--aud {audience}: not dev:<id> or grp:<id>")
    topics = _topics_for(args)
    envelope = sign_command(payload, load_keys(args.key))
    refuse_if_too_large(str(payload["type"]), envelope)
    if not args.host:
        sys.stdout.write(envelope.decode("utf-8") + "\n")
        admin_documents.note_printed_unchecked(_unchecked_without_a_broker(args))
        return EXIT_OK
    # Checked against the fleet's keyring (when one is retained) like the documents: a key the
    # boards do not know, or without the role or the scope, is refused by every one of them.
    admin_documents.refuse_if_unauthorized(args, topics[0], envelope, payload)
    if args.topic is None:
        _warn_of_unknown_devices(args, registry)
    for topic in topics:
        # The broker drops the command once it expires, so a device that was offline never
        # gets a stale backlog (the device refuses expired commands anyway).
        publish(args, topic, envelope, retain=False, expiry_s=int(args.ttl))
        print(f"sent {payload['type']} {payload['id']} (seq {payload['seq']}) to {topic}")
    if args.topic is None:
        _warn_of_unknown_groups(args, registry)  # once sent: a refused publish says enough
    return EXIT_OK


def _unchecked_without_a_broker(args: argparse.Namespace) -> str:
    """What a command's run checks against the broker, said when there is no broker."""
    if args.topic is not None:
        return "the key was not checked against the fleet's keyring"
    kinds = {audience.partition(":")[0] for audience in args.aud}
    named = {
        frozenset({"dev"}): "the devices",
        frozenset({"grp"}): "the groups",
    }.get(frozenset(kinds), "the devices and groups")
    return (
        f"{named} were not checked against the devices' states, nor the key against the "
        "fleet's keyring"
    )


def _warn_of_unknown_devices(args: argparse.Namespace, registry: Registry | None) -> None:
    """A ``dev:`` audience whose device never left a state on this broker is most often a
    mistyped id: say so (the command still goes: a board being installed has no state yet).
    With a ``registry``, a state its device did not sign counts as none: anyone the ACL lets
    write the topic could have left it under the mistyped id."""
    options = BrokerOptions.from_args(args)
    for audience in args.aud:
        kind, _, device = audience.partition(":")
        if kind != "dev":
            continue
        state_topic = device_topics(args.prefix, device)[0]
        state = admin_documents.retained_payload_raw(options, state_topic)
        unverified = (
            state is not None
            and registry is not None
            and not ReportVerifier(registry).check(state_topic, state).trusted
        )
        if state is None:
            who = f"user {args.username!r}" if args.username else "an anonymous client"
            print(
                f"receiver-admin: warning: no device {device} has left a state on "
                f"{options.where} ({state_topic}): is the id right? (or the broker's ACL hides "
                f"it from {who}); sending anyway, a board that never connected will not get it",
                file=sys.stderr,
            )
        elif unverified:
            print(
                f"receiver-admin: warning: no device {device} has left a verified state on "
                f"{options.where} ({state_topic}): is the id right? {fleet.set_aside(1)}; "
                "sending anyway, a board that never connected will not get it",
                file=sys.stderr,
            )


def _warn_of_unknown_groups(
    args: argparse.Namespace, registry: Registry | None, *, preview: bool = False
) -> None:
    """A ``grp:`` audience that no device's retained state lists is most often a mistyped
    group: say so, with the closest names seen (the command or schedule still went: called
    once it was sent; or, in a ``preview``, nothing went). With a ``registry`` only the states
    their devices signed are judged by."""
    groups = [a.partition(":")[2] for a in args.aud if a.startswith("grp:")]
    if not groups:
        return
    options = BrokerOptions.from_args(args)
    verifier = None if registry is None else ReportVerifier(registry)
    try:
        rows = _retained_states(options, args.prefix, verifier)
    except BrokerError as exc:  # only a check, but one not made is said: silence means right
        print(
            f"receiver-admin: warning: the groups were not checked against the devices' "
            f"states ({exc})",
            file=sys.stderr,
        )
        return
    who = f"user {args.username!r}" if args.username else "an anonymous client"
    for warning in fleet.unknown_group_warnings(
        groups,
        rows.values(),
        where=options.where,
        states=device_topics(args.prefix)[0],
        who=who,
        verified=registry is not None,
        outcome="nothing sent (--dry-run)" if preview else "sent all the same",
    ):
        print(f"receiver-admin: warning: {warning}", file=sys.stderr)


def _unlisted_groups(
    args: argparse.Namespace, groups: list[str], registry: Registry | None
) -> list[str]:
    """What ``fleet --group`` says of each of ``groups`` no device's retained state lists (a
    mistyped group, usually), for ``schedule show``. With a ``registry`` only the states their
    device signed judge: a forged one could list the group or offer a decoy."""
    verifier = None if registry is None else ReportVerifier(registry)
    rows = _retained_states(BrokerOptions.from_args(args), args.prefix, verifier)
    verified = registry is not None
    lines = (
        fleet.judged_unlisted_group(group, rows.values(), verified=verified)
        for group in dict.fromkeys(groups)
    )
    return [line for line in lines if line is not None]


def publish(
    args: argparse.Namespace, topic: str, payload: bytes, *, retain: bool, expiry_s: int | None
) -> bool:
    """Publish at QoS 1 and wait for the broker's acknowledgement (BrokerError if none).

    A retained document goes to every ``--node`` too; a node that fails is named with the
    brokers that already hold it, so the operator knows where to publish it again.
    """
    first = BrokerOptions.from_args(args)
    nodes = further_nodes(args) if retain else []  # a typo in --node: nothing is published
    with Connection(first) as connection:
        connection.publish(topic, payload, retain=retain, expiry_s=expiry_s)
    done = [first.where]
    for node in nodes:
        try:
            with Connection(node) as connection:  # a cluster that keeps retained per node
                connection.publish(topic, payload, retain=retain, expiry_s=expiry_s)
        except BrokerError as exc:
            raise BrokerError(
                f"{exc}; {topic} is retained on {', '.join(done)} but not on {node.where}: "
                "publish it there again (a higher version) once the node is back"
            ) from exc
        done.append(node.where)
    return True


def _watch_shortfall(args: argparse.Namespace, seen: int) -> str:
    """What ``watch --until`` or ``--count`` waited for and did not see before ``--timeout``."""
    source = "any device" if args.device == "+" else args.device
    within = f"from {source} within {args.timeout:g} s"
    if args.until:
        plural = "" if seen == 1 else "s"
        return f"no {' or '.join(args.until)} event {within} ({seen} event{plural} seen)"
    return f"{seen} of the {args.count} events asked for {within}"


def _watch(args: argparse.Namespace) -> int:
    """Print a device's state and events as they arrive (one line each), across reconnects."""
    messages: queue.Queue[DeviceMessage] = queue.Queue()

    verifier = verifier_for(args.registry)

    def arrived(msg: Any) -> None:
        parsed = parse_device_message(msg.topic, bytes(msg.payload), verifier)
        if parsed is not None:
            messages.put(parsed)

    state_topic, events_topic = device_topics(args.prefix, args.device)
    connection = Connection(
        BrokerOptions.from_args(args),
        client_id=args.client_id or "",
        persistent=bool(args.client_id),
        subscriptions=(events_topic, state_topic),
        on_message=arrived,
    )
    deadline = time.monotonic() + args.timeout if args.timeout else None
    seen = 0
    last_n: dict[str, int] = {}
    was_connected = True
    heard = False
    try:
        while deadline is None or time.monotonic() < deadline:
            connected = connection.connected
            if connection.taken_over:  # it does not reconnect: "reconnecting" would be untrue
                raise InputError(
                    f"watch: another client took session {args.client_id!r} on "
                    f"{connection.options.where} (a second watch with the same --client-id?); "
                    "each watch needs its own --client-id"
                )
            # A broker that does not say so (Mosquitto before 2.0.15) only closes the session
            # each time the other takes it. A flaky network looks alike: warn, once, go on.
            # Without --client-id its id is random: it shares no session.
            if args.client_id and (short_lived := connection.kept_closing()):
                print(
                    f"receiver-admin: warning: watch: the broker at {connection.options.where} "
                    f"keeps closing session {args.client_id!r} right after it connects "
                    f"({short_lived} times): is a second watch running with the same "
                    "--client-id? each watch needs its own",
                    file=sys.stderr,
                    flush=True,
                )
            if connected != was_connected:
                was_connected = connected
                note = "reconnected" if was_connected else "connection lost; reconnecting"
                print(f"# {note} ({connection.options.where})", file=sys.stderr, flush=True)
            try:
                message = messages.get(timeout=0.2)
            except queue.Empty:
                continue
            heard = True
            if message.channel == "events":
                n = message.n
                if n is not None and n <= last_n.get(message.device, 0) and not args.registry:
                    continue  # delivered again after a reconnect: printed already
                if n is not None:
                    last_n[message.device] = n
            print(f"{message.channel:6} {message_text(message)}", flush=True)
            if message.channel == "events":
                seen += 1
                kind = (message.body or {}).get("kind")
                if kind in args.until or (args.count and seen >= args.count):
                    return EXIT_OK
        if not heard:
            # Mosquitto grants a subscription its ACL will not deliver on: say what to check.
            who = f"user {args.username!r}" if args.username else "an anonymous client"
            print(
                f"receiver-admin: nothing from {state_topic} or {events_topic} within "
                f"{args.timeout:g} s: is the device id right, and may {who} read them "
                "(the broker's ACL)?",
                file=sys.stderr,
            )
            return EXIT_FAILED
        if args.until or args.count:
            # A script reads the status; the person reading its log needs the cause too.
            print(f"receiver-admin: {_watch_shortfall(args, seen)}", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    except KeyboardInterrupt:
        # Stopped by hand: done, unless it was waiting for something it has not seen.
        return EXIT_INTERRUPTED if (args.until or args.count) else EXIT_OK
    finally:
        connection.close()


def _fleet_filters(args: argparse.Namespace) -> fleet.Filters:
    return fleet.Filters(
        group=args.group,
        offline=args.offline,
        failing=args.failing,
        trust_below=args.trust_below,
        missing_cache=args.missing_cache,
        pending_outbox=args.pending_outbox,
    )


def _fleet(args: argparse.Namespace) -> int:
    """A table of the devices' retained states: once, or redrawn every second (--watch)."""
    arrivals: queue.Queue[Arrival] = queue.Queue()
    topic_filter = device_topics(args.prefix)[0]

    verifier = verifier_for(args.registry)
    bridges = BridgeMap.load(Path(args.bridges)) if args.bridges else None

    def arrived(msg: Any) -> None:
        if bridges is not None and bridges.note(msg.topic, bytes(msg.payload)):
            return
        parsed = parse_device_message(msg.topic, bytes(msg.payload), verifier)
        if parsed is not None:
            arrivals.put((parsed, bool(msg.retain), time.time()))

    connection = Connection(
        BrokerOptions.from_args(args),
        subscriptions=(topic_filter,) if bridges is None else (topic_filter, BRIDGE_STATE_FILTER),
        on_message=arrived,
    )
    rows: dict[str, fleet.DeviceRow] = {}
    filters = _fleet_filters(args)

    def draw(clear: bool, unlisted: str | None) -> None:
        _print_fleet(
            sys.stdout,
            rows=with_bridges(rows, bridges),
            where=topic_filter,
            clear=clear,
            args=args,
            filters=filters,
        )
        # What in the bridges file marks nothing here: on the screen while watching (it
        # is redrawn), once on stderr for a snapshot (stdout stays the table).
        for doubt in bridges.doubts(rows) if bridges is not None else ():
            if args.watch:
                sys.stdout.write(f"warning: --bridges {args.bridges}: {doubt}\n")
            else:
                print(
                    f"receiver-admin: warning: --bridges {args.bridges}: {doubt}", file=sys.stderr
                )
        if unlisted is not None and args.watch:
            sys.stdout.write(f"--group: {unlisted}\n")
            sys.stdout.flush()

    def unlisted_group() -> str | None:
        if args.group is None:
            return None
        # With the registry, only the states their device signed judge a mistyped group: a
        # forged one could list it (an empty group passes for a real one) or offer a decoy.
        verified = args.registry is not None
        return fleet.judged_unlisted_group(args.group, rows.values(), verified=verified)

    try:
        if not args.watch:
            # The broker sends every retained state right after the SUBACK: once they stop
            # coming for a moment, the snapshot is complete.
            _collect_states(
                arrivals, rows, time.monotonic() + args.timeout, quiet_s=SNAPSHOT_QUIET_S
            )
            unlisted = unlisted_group()
            draw(False, unlisted)
            if unlisted is not None:
                # An empty table looks like a group whose boards all went: say which it is.
                print(f"receiver-admin: --group: {unlisted}", file=sys.stderr)
                return EXIT_FAILED
            return EXIT_OK
        clear = sys.stdout.isatty()
        while True:
            _collect_states(arrivals, rows, time.monotonic() + 1.0)
            draw(clear, unlisted_group())
    except KeyboardInterrupt:
        # Stopping --watch is its normal end; a snapshot stopped while it still collected was
        # not done (its empty output is not a fleet without devices).
        return EXIT_OK if args.watch else EXIT_INTERRUPTED
    finally:
        connection.close()


Arrival = tuple[DeviceMessage, bool, float]  # a device's state, retained or not, received when


def _collect_states(
    arrivals: queue.Queue[Arrival],
    rows: dict[str, fleet.DeviceRow],
    until: float,
    *,
    quiet_s: float | None = None,
    first_s: float | None = None,
) -> None:
    """Take the states that arrive into ``rows`` until ``until`` (monotonic), or, with
    ``quiet_s``, until none came for that long (the retained ones all come at once, right after
    the SUBACK), or, with ``first_s``, when none came at all within it."""
    heard = False
    while (remaining := until - time.monotonic()) > 0:
        gap = quiet_s if heard else first_s
        wait = remaining if gap is None else min(remaining, gap)
        try:
            message, retained, received = arrivals.get(timeout=wait)
        except queue.Empty:
            return
        heard = True
        if message.raw:
            rows[message.device] = fleet.DeviceRow(
                message.device, message.body, received, retained, message.verdict
            )
        else:
            rows.pop(message.device, None)  # the retained state was cleared


def _retained_states(
    options: BrokerOptions, prefix: str, verifier: ReportVerifier | None = None
) -> dict[str, fleet.DeviceRow]:
    """Every device's retained state, as ``fleet`` reads them (bounded by the broker timeout),
    each with its verdict when a ``verifier`` judges them."""
    arrivals: queue.Queue[Arrival] = queue.Queue()

    def arrived(msg: Any) -> None:
        parsed = parse_device_message(msg.topic, bytes(msg.payload), verifier)
        if parsed is not None and msg.retain:
            arrivals.put((parsed, True, time.time()))

    rows: dict[str, fleet.DeviceRow] = {}
    with Connection(options, subscriptions=(device_topics(prefix)[0],), on_message=arrived):
        until = time.monotonic() + options.timeout_s
        _collect_states(
            arrivals, rows, until, quiet_s=SNAPSHOT_QUIET_S, first_s=admin_documents.RETAINED_WAIT_S
        )
    return rows


def _print_fleet(
    out: TextIO,
    *,
    rows: dict[str, fleet.DeviceRow],
    where: str,
    clear: bool,
    args: argparse.Namespace,
    filters: fleet.Filters,
) -> None:
    now = time.time()
    stamp = datetime.fromtimestamp(now).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    if clear:
        out.write("\x1b[H\x1b[2J")
    out.write(f"{where} at {stamp}\n")
    if rows:
        table = fleet.format_fleet(rows, now, filters=filters, sort=args.sort, limit=args.limit)
    else:
        who = f"user {args.username!r}" if args.username else "an anonymous client"
        table = (
            f"no device has a retained state here (if some should: is the prefix right, and "
            f"may {who} read {where}? the broker's ACL filters silently)"
        )
    out.write(table + "\n")
    out.flush()


def _broker_options(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--host",
        required=required,
        type=host,
        help="broker host" if required else "broker host (omit to print only)",
    )
    parser.add_argument("--port", type=port, default=1883)
    parser.add_argument("--prefix", type=topic_prefix, default=DEFAULT_PREFIX, help="topic prefix")
    parser.add_argument("--cafile", help="CA certificate: turns TLS on")
    parser.add_argument("--certfile", help="client certificate for mutual TLS")
    parser.add_argument("--keyfile", help="client private key for mutual TLS")
    parser.add_argument("--username")
    parser.add_argument("--password-file")
    add_node_option(parser)
    parser.add_argument(
        "--broker-timeout",
        type=positive_number,
        default=10.0,
        help="seconds to wait for the broker's answers (default 10)",
    )


def _add_command_parsers(sub: Any) -> None:
    """One subcommand per command type; all share the signing and broker options."""
    for name, text in (
        ("play", "play pinned files"),
        ("stream", "relay a live stream"),
        ("stop", "stop playback"),
        ("volume", "set the volume"),
        ("report", "ask for the state now (with --db: proof of play, see 'proof')"),
        ("relay", "switch the amplifier by hand (on needs --duration)"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--key", required=True, action="append", help="private key (repeatable)")
        cmd.add_argument("--env", required=True, help="deployment environment, e.g. prod")
        cmd.add_argument("--aud", required=True, action="append", help="dev:<id> or grp:<id>")
        cmd.add_argument("--id", help="message id (default: cmd-<seq>)")
        cmd.add_argument("--seq", type=int, help="sequence number (default: UTC milliseconds)")
        cmd.add_argument(
            "--ttl",
            type=command_ttl,
            default=300.0,
            help="seconds until it expires (at most 30 days)",
        )
        cmd.add_argument("--topic", help="publish here instead of each audience's topic")
        cmd.add_argument(
            "--registry",
            help="enrolled device keys: warn of a grp:/dev: audience by the states they signed",
        )
        _broker_options(cmd, required=False)
        if name in ("play", "stream"):
            cmd.add_argument("--url", required=True)
            cmd.add_argument(
                "--priority", default="normal", help=f"one of {', '.join(vocabulary.PRIORITIES)}"
            )
            cmd.add_argument("--volume", type=int, help="percent, 0 to 100")
            cmd.add_argument("--repeat", type=int)
            cmd.add_argument("--max-duration", type=int, default=3600)
            cmd.add_argument(
                "--start-at", help="RFC 3339 instant to start at, at most 7 days ahead"
            )
        if name == "play":
            cmd.add_argument("--file", help="local copy of the file, to pin its hash and size")
            cmd.add_argument("--sha256")
            cmd.add_argument("--size", type=int)
            cmd.add_argument("--title")
        if name == "stop":
            cmd.add_argument("--target", default="all")
        if name == "volume":
            cmd.add_argument("--level", type=int, required=True, help="percent, 0 to 100")
        if name == "relay":
            cmd.add_argument("--state", choices=["on", "off", "auto"], required=True)
            cmd.add_argument("--duration", type=int, help="seconds before it reverts to auto")
        cmd.set_defaults(func=_sign_and_send)


class _WholeOptionNames(Parser):
    """A parser that takes option names only whole: an operator's ``--broker`` (for ``--host``)
    is refused, not taken as ``--broker-timeout``. Subparsers are made of the same class, so
    every subcommand, those other modules add included, is the same."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)


def build_parser(*, report_db: bool = False) -> argparse.ArgumentParser:
    """``report_db``: the words were ``report --db``, run as ``proof``, and its usage says
    ``report --db DB``, what the operator typed."""
    parser = _WholeOptionNames(
        prog="receiver-admin",
        description=HELP,
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"loa-receiver {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    keygen = sub.add_parser("keygen", help="make an Ed25519 key pair")
    keygen.add_argument(
        "--id", required=True, type=key_id, help="the key id receivers will know it by"
    )
    keygen.add_argument("--out", required=True, help="where to write the private key (PEM)")
    keygen.add_argument("--roles", nargs="+", default=["operator"], choices=admin_documents.ROLES)
    keygen.add_argument(
        "--scopes",
        nargs="+",
        type=scope,
        help="group or device ids the key may act on, or '*' (the default: every device)",
    )
    keygen.set_defaults(func=_keygen)

    _add_command_parsers(sub)

    watch = sub.add_parser("watch", help="print a device's state and events")
    watch.add_argument(
        "--device", required=True, type=device_or_every, help="a device id, or + for every device"
    )
    watch.add_argument("--timeout", type=seconds, default=0.0, help="seconds (0: until Ctrl-C)")
    watch.add_argument("--count", type=positive_int, default=0, help="stop after this many events")
    watch.add_argument(
        "--until",
        nargs="+",  # at least one kind: without, it would wait for nothing (or for ever)
        default=[],
        choices=vocabulary.EVENT_KINDS,
        metavar="KIND",
        help=f"stop after an event of a kind: {', '.join(vocabulary.EVENT_KINDS)}",
    )
    watch.add_argument(
        "--client-id",
        type=client_id,
        help="keep a session under this id: events sent while watch is away come when it is back",
    )
    watch.add_argument("--registry", help="enrolled device keys: mark reports by their signature")
    _broker_options(watch, required=True)
    watch.set_defaults(func=_watch)

    fleet_cmd = sub.add_parser("fleet", help="a table of every device's state")
    fleet_cmd.add_argument(
        "--timeout",
        type=positive_number,
        default=5.0,
        help="at most this many seconds to collect states (default 5; done sooner once they stop)",
    )
    fleet_cmd.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")
    fleet_cmd.add_argument("--group", type=identifier, help="only devices in this group")
    fleet_cmd.add_argument("--offline", action="store_true", help="only devices not reachable")
    fleet_cmd.add_argument("--failing", action="store_true", help="only devices with a fault")
    fleet_cmd.add_argument(
        "--trust-below", type=int, metavar="VERSION", help="only keyrings older than VERSION"
    )
    fleet_cmd.add_argument(
        "--missing-cache", action="store_true", help="only devices missing media"
    )
    fleet_cmd.add_argument(
        "--pending-outbox", action="store_true", help="only devices with events not yet sent"
    )
    fleet_cmd.add_argument("--sort", choices=fleet.SORT_KEYS, default="device")
    fleet_cmd.add_argument("--limit", type=positive_int, help="show at most this many rows")
    fleet_cmd.add_argument(
        "--registry", help="enrolled device keys: mark devices whose state they did not sign"
    )
    fleet_cmd.add_argument(
        "--bridges",
        help="bridge name and device patterns per line: mark devices behind a bridge that is down",
    )
    _broker_options(fleet_cmd, required=True)
    fleet_cmd.set_defaults(func=_fleet)

    admin_documents.add_parsers(
        sub, _broker_options, publish, _warn_of_unknown_groups, _unlisted_groups
    )
    collector.add_parser(sub, _broker_options)
    report.add_parser(sub, typed_as_report=report_db)
    return parser


def main(argv: list[str] | None = None) -> int:
    tolerant_output()
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a reader gone shows here, not at the interpreter's exit
    except BrokenPipeError:
        # ``receiver-admin ... | head -1``: what was wanted was read; end as such tools end.
        discard_stdout()
        return EXIT_PIPE_CLOSED


def _run(argv: list[str] | None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:2] == ["schedule", "show"]:
        words[:2] = ["schedule-show"]
    report_db = words[:1] == ["report"] and any(w == "--db" or w.startswith("--db=") for w in words)
    if report_db:
        words[0] = "proof"  # the proof-of-play report; without --db, the report command
    args = build_parser(report_db=report_db).parse_args(words)
    try:
        result: int = args.func(args)
    except BrokenPipeError:
        raise  # not a file of the operator's: main() ends quietly
    except BrokerError as exc:
        print(f"receiver-admin: {exc}", file=sys.stderr)
        return EXIT_BROKER
    except InputError as exc:
        print(f"receiver-admin: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except (OSError, ValueError) as exc:  # a file that is missing or unreadable, mostly
        print(f"receiver-admin: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except collector.TerminatedError as exc:
        # No ^C on a terminal shows it: the journal or the script's log says why it ended.
        print(f"receiver-admin: {exc}", file=sys.stderr)
        # The command line's run ends by the signal; main() called with its words (a program
        # or a test running the tool in its own process) gets the status, not its death.
        return _end_by_sigterm() if argv is None else EXIT_TERMINATED
    return result


def _end_by_sigterm() -> int:
    """Ends the process by the SIGTERM that stopped it, once it has cleaned up and said why.

    systemd counts only an end by SIGTERM a clean stop (an exit status of 143 is a failure, and
    ``systemctl stop`` would leave the unit failed); a shell shows 143 all the same. Returns
    EXIT_TERMINATED only if the signal did not end it.
    """
    for stream in (sys.stdout, sys.stderr):  # what is buffered: nothing flushes after the signal
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    os.kill(os.getpid(), signal.SIGTERM)
    return EXIT_TERMINATED


if __name__ == "__main__":
    sys.exit(main())
