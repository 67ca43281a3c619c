"""``receiver-admin`` for retained documents: trust (the keyring) and schedules.

A trust document is signed by root keys (several ``--key``: the threshold); a schedule by an
operator key. Both are published retained, so a receiver that connects later still gets them.
Because a retained document replaces the one before it for every board that connects later,
nothing is published that a receiver would refuse: the document is checked first
(:mod:`receiver.central.validate`), then compared with the retained one, whose version it must
exceed. ``--dry-run`` prints that comparison (entries added, removed, retimed, changed) and
sends nothing. A schedule published for a group no device's state lists (a mistyped group,
most often) is followed by a warning naming the closest groups, as a command is; the preview
gives that warning too (before anything is published, where it is easiest to act on).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import queue
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from receiver.central import fleet, programme
from receiver.central.broker import EXIT_FAILED, BrokerError, BrokerOptions, Connection
from receiver.central.inputs import (
    InputError,
    days,
    days_ahead,
    identifier,
    load_keys,
    refuse_if_invalid,
    refuse_if_too_large,
    scope,
    scopes_or_every,
)
from receiver.central.reports import Registry, ReportVerifier, open_report, registry_for
from receiver.central.signing import (
    key_entry,
    schedule_payload,
    sign_schedule,
    sign_trust,
    trust_payload,
)
from receiver.core import admission, reasons
from receiver.core.clock import Instant
from receiver.core.commands import ID_PATTERN
from receiver.core.envelope import parse_envelope
from receiver.core.reasons import Rejection
from receiver.core.strict_json import loads_strict
from receiver.core.trust import Keyring
from receiver.core.trustdoc import TrustDocument, parse_trust
from receiver.terminal import one_line

Publisher = Callable[..., bool]


class GroupWarner(Protocol):
    """Warns of the ``grp:`` audiences no device's state lists (admin's, shared with the
    commands); ``preview``: nothing was sent (``--dry-run``)."""

    def __call__(
        self, args: argparse.Namespace, registry: Registry | None, *, preview: bool = False
    ) -> None: ...


#: What to say of each group no device's state lists, read from the broker (admin's, as ``fleet
#: --group`` says it): the arguments, the groups, the registry judging the states.
GroupChecker = Callable[[argparse.Namespace, list[str], Registry | None], list[str]]
DAY_S = 86400.0
RETAINED_WAIT_S = 0.5  # the broker sends a retained message right after the SUBACK
ROLES = ("operator", "emergency", "root")
KEYRING_REASONS = frozenset(
    {reasons.UNKNOWN_KEY, reasons.BAD_SIGNATURE, reasons.UNSIGNED, reasons.NOT_AUTHORIZED}
)


def _load_json(path: str, what: str) -> Any:
    try:
        # Strictly: a key given twice would otherwise keep its last value without a word.
        return loads_strict(Path(path).read_bytes())
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from exc
    except ValueError as exc:
        cause = exc.__cause__
        if isinstance(cause, json.JSONDecodeError):  # where to look, as an editor counts
            where = f"{path}:{cause.lineno}:{cause.colno}"
            raise InputError(f"{where}: the {what} is not JSON: {cause.msg}") from exc
        raise InputError(f"{path}: the {what} is not accepted JSON: {exc}") from exc


def _thresholds(text: str | None) -> dict[str, int] | None:
    if not text:
        return None
    result: dict[str, int] = {}
    for part in text.split(","):
        role, _, value = part.partition("=")
        if role not in ("operator", "emergency", "root") or not value.isdigit():
            raise InputError(
                f"--thresholds: {part!r} is not role=number (operator, emergency, root)"
            )
        result[role] = int(value)
    return result


def retained_payload(args: argparse.Namespace, topic: str) -> dict[str, Any] | None:
    """The payload of the document retained on ``topic`` now, or None if there is none."""
    arrivals: queue.Queue[bytes] = queue.Queue()
    with Connection(
        BrokerOptions.from_args(args),
        subscriptions=(topic,),
        on_message=lambda msg: arrivals.put(bytes(msg.payload)) if msg.retain else None,
    ):
        try:
            raw = arrivals.get(timeout=RETAINED_WAIT_S)
        except queue.Empty:
            return None
    if not raw:
        return None
    try:
        decoded = json.loads(parse_envelope(raw).body)
    except (Rejection, ValueError):
        return {}  # something unreadable is retained there: anything valid is better
    return decoded if isinstance(decoded, dict) else {}


def retained_trust(args: argparse.Namespace) -> TrustDocument | None:
    """The fleet's keyring: the trust document retained on ``<prefix>/trust``, or None when
    none is (or what is there is no trust document a receiver would read)."""
    return _as_trust(retained_payload(args, f"{args.prefix}/trust"))


def _as_trust(retained: dict[str, Any] | None) -> TrustDocument | None:
    """A retained payload as the trust document a receiver would read, or None."""
    try:
        return parse_trust(retained) if retained else None
    except Rejection:
        return None


def refuse_if_other_env(
    args: argparse.Namespace, document: TrustDocument | None, *, keyring: bool = False
) -> None:
    """An ``--env`` other than the one the fleet's keyring is for (``prd`` for ``prod``) is
    refused by every board (wrong_env); for a keyring (``keyring``), one for another env would
    also replace the retained one. Without a retained keyring there is nothing to judge by."""
    if document is None or document.env == args.env:
        return
    topic = f"{args.prefix}/trust"
    where = f"the fleet's keyring (trust version {document.version}, retained on {topic})"
    if keyring:
        harm = (
            f"this keyring for env {args.env} would replace it, and every board would refuse "
            "it (wrong_env)"
        )
    else:
        harm = f"every board would refuse env {args.env} (wrong_env)"
    raise InputError(
        f"--env {args.env}: {where} is for env {document.env}; {harm}; nothing was sent. "
        f"Give --env {document.env}"
    )


def refuse_if_unauthorized(
    args: argparse.Namespace, topic: str, envelope: bytes, payload: dict[str, Any]
) -> None:
    """Run the receivers' own admission on ``envelope`` with the fleet's keyring (the retained
    trust document): signed by keys the boards do not know, or without the role, or for another
    env, it would be refused by every board, and it is not sent. Without a retained keyring the
    boards use their configured keys, which only they know: nothing to check here."""
    refuse_if_keyring_refuses(args, retained_trust(args), topic, envelope, payload)


def refuse_if_keyring_refuses(
    args: argparse.Namespace,
    document: TrustDocument | None,
    topic: str,
    envelope: bytes,
    payload: dict[str, Any],
) -> None:
    """:func:`refuse_if_unauthorized` with the retained keyring already read (``document``)."""
    if document is None:
        return
    refuse_if_other_env(args, document)
    rejection = _admission_refusal(document.keyring, topic, envelope, payload)
    if rejection is not None:
        raise InputError(
            f"the fleet's keyring (trust version {document.version}, retained on "
            f"{args.prefix}/trust) refuses these signatures: {rejection.detail} "
            f"({rejection.reason}); nothing was sent"
        )


def _admission_refusal(
    keyring: Keyring,
    topic: str,
    envelope: bytes,
    payload: dict[str, Any],
    scope: str | None = None,
) -> Rejection | None:
    """The receivers' admission of ``envelope`` under ``keyring``: its refusal for a reason
    of keys and roles, or None. ``scope``: judged as a receiver of that id or group would judge
    it (for a document that names no audience of its own: a keyring, say)."""
    audience = next(iter(payload.get("aud", [])), "grp:")
    kind, _, ident = str(audience).partition(":")
    groups: tuple[str, ...] = (ident,) if kind == "grp" else ()
    if kind == "dev":
        # One board's groups are in its config, which only it knows: judge it as a board in
        # every group a key is scoped to, so that only what no board could take is refused.
        groups = tuple(sorted({s for key in keyring.keys for s in key.scopes} - {"*"}))
    if scope is not None:
        kind, ident, groups = "scope", scope, (scope,)
    context = admission.Context(
        device_id=ident if kind in ("dev", "scope") else "",
        env=str(payload.get("env", "")),
        groups=groups,
        keyring=keyring,
        floors={},
        time_floor=0.0,
        reset_floor=None,
        trust_digest="",
        max_skew_s=300.0,
        max_command_age_s=3600.0,
    )
    try:
        retained = not topic.endswith("/cmd")  # documents are retained, commands never
        admission.admit(context, topic, envelope, retained, Instant(0.0, time.time(), True))
    except Rejection as rejection:
        if rejection.reason in KEYRING_REASONS:
            return rejection
    return None


def refuse_if_not_self_signed(topic: str, envelope: bytes, payload: dict[str, Any]) -> None:
    """A receiver takes a keyring only if enough of the new keyring's own root keys signed it
    (as TUF requires for a rotation), whatever its current keyring: check that here, with no
    broker needed. A keyring with a root threshold its root keys cannot meet, or with no root
    key, would also leave the fleet with no way to rotate again."""
    document = parse_trust(payload)
    before = dataclasses.replace(document.keyring, version=document.version - 1)
    roots = [key for key in document.keyring.keys if "root" in key.roles]
    # Root keys scoped to a province count only on its receivers: the keyring is signed if the
    # receivers of at least one scope its root keys hold would take it.
    scopes = sorted({scope for key in roots for scope in key.scopes} - {"*"})
    if all(
        _admission_refusal(before, topic, envelope, payload, scope) is not None
        for scope in [None, *scopes]
    ):
        held = (
            f"; they are scoped to {', '.join(scopes)}, and a receiver counts only those that "
            "cover it"
            if scopes
            else ""
        )
        raise InputError(
            f"a receiver refuses this keyring: not signed by enough of its own root keys (it "
            f"lists {len(roots)} root key(s), threshold {document.keyring.threshold('root')}; "
            f"signed by {', '.join(sorted(_signer_ids(envelope)))}{held}); nothing was sent. "
            "Sign it with that many of its root keys (--key, repeated), or set --thresholds root=N"
        )


def _signer_ids(envelope: bytes) -> set[str]:
    return {keyid for keyid, _sig in parse_envelope(envelope).signatures}


def key_entry_command(args: argparse.Namespace) -> int:
    """Print the keyring entry of a key, for a trust document's keyring file."""
    key = load_keys([args.key])[0]
    scopes = scopes_or_every(args.scopes, key.id)
    print(json.dumps(key_entry(key, args.roles, scopes), indent=2))
    return 0


def note_printed_unchecked(unchecked: str, how: str = "give --host to check and send") -> None:
    """Say, after printing a signed message for publishing by hand (no ``--host``), what the
    run would have checked against the broker and did not: silence would read as checked."""
    print(
        f"receiver-admin: note: no --host: printed, not sent; {unchecked} ({how})", file=sys.stderr
    )


def trust_command(args: argparse.Namespace, publish: Publisher) -> int:
    keys = _load_json(args.keys, "keyring")
    if not isinstance(keys, list):
        raise InputError(f"{args.keys}: the keyring is a JSON list of key entries")
    payload = trust_payload(
        args.version,
        keys,
        env=args.env,
        thresholds=_thresholds(args.thresholds),
        doc_id=args.id,
        ttl_s=args.ttl_days * DAY_S,
    )
    refuse_if_invalid("trust", payload)
    topic = f"{args.prefix}/trust"
    if args.host:
        current = retained_payload(args, topic)
        version = current.get("version") if current else None
        if isinstance(version, int) and version >= args.version:
            raise InputError(
                f"{topic} holds trust version {version}; a receiver refuses version "
                f"{args.version} (stale_version): give --version {version + 1} or above"
            )
        refuse_if_other_env(args, _as_trust(current), keyring=True)
    signers = load_keys(args.key)
    envelope = sign_trust(payload, signers)
    refuse_if_too_large("trust document", envelope)
    refuse_if_not_self_signed(topic, envelope, payload)
    if not args.host:
        sys.stdout.write(envelope.decode("utf-8") + "\n")
        return 0
    refuse_if_unauthorized(args, topic, envelope, payload)
    publish(args, topic, envelope, retain=True, expiry_s=None)
    print(
        f"sent trust version {args.version} ({len(keys)} keys, {len(signers)} signatures) "
        f"to {topic}, retained"
    )
    return 0


def _schedule_source(args: argparse.Namespace) -> dict[str, Any]:
    path = str(args.file)
    if path.lower().endswith((".yaml", ".yml")):  # GOOD.YAML as much as good.yaml
        return programme.compile_source(Path(path))
    try:
        doc = _load_json(path, "schedule")
    except InputError as exc:
        # A programme written in YAML under another name (.txt, none): say what it is, not only
        # that it is not JSON.
        if isinstance(exc.__cause__, ValueError) and programme.reads_as_yaml(Path(path)):
            raise InputError(
                f"{path}: the schedule is not JSON; it reads as YAML: name it .yaml"
            ) from exc
        raise
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise InputError(f"{path}: a schedule file is an object with an 'entries' list")
    return doc


def schedule_command(
    args: argparse.Namespace, publish: Publisher, warn_of_unknown_groups: GroupWarner
) -> int:
    # A registry that cannot be read is refused before anything is signed or published, as the
    # commands do.
    registry = registry_for(args.registry)
    doc = _schedule_source(args)
    # An option given is taken as given: --version 0 is refused, never the file's version used.
    schedule_id = args.id if args.id is not None else doc.get("id")
    version = args.version if args.version is not None else doc.get("version")
    if not isinstance(schedule_id, str):
        raise InputError(f"{args.file}: no schedule id: write id: in the file, or give --id")
    if not isinstance(version, int) or isinstance(version, bool):
        found = "no version" if version is None else f"version {version!r} is not a whole number"
        raise InputError(f"{args.file}: {found}: write version: in the file, or give --version")
    payload = schedule_payload(
        schedule_id,
        version,
        doc["entries"],
        env=args.env,
        aud=args.aud,
        tz=doc.get("tz", "Asia/Ho_Chi_Minh"),
        ttl_s=args.ttl_days * DAY_S,
    )
    refuse_if_invalid("schedule", payload)
    for warning in programme.warnings(payload):
        print(f"receiver-admin: warning: {warning}", file=sys.stderr)
    groups = [a.partition(":")[2] for a in args.aud if a.startswith("grp:")]
    if args.host and not groups:
        raise InputError("schedules are published per group: give --aud grp:<id>")
    for warning in _devices_in_a_programme(args.aud, groups):
        print(f"receiver-admin: warning: {warning}", file=sys.stderr)
    topics = [f"{args.prefix}/grp/{group}/schedule" for group in groups]
    retained = {topic: retained_payload(args, topic) for topic in topics} if args.host else {}
    keyring = retained_trust(args) if args.host else None
    if args.dry_run:
        for topic in topics or ["(no group given)"]:
            print(f"{topic}:")
            for line in programme.diff(retained.get(topic), payload, compared=bool(args.host)):
                print(f"  {one_line(line, 300)}")  # the retained one is not verified here
        # The preview is where a mistyped group is caught most easily: warned of as the real
        # run warns once it has published, or said to be unchecked when no broker was given.
        if groups and args.host:
            warn_of_unknown_groups(args, registry, preview=True)
        elif groups:
            print(
                "receiver-admin: note: no --host: not compared with the retained programme, "
                "nor the groups checked against the devices' states (give --host to check both)",
                file=sys.stderr,
            )
        if args.host:
            # What the real run would refuse, the preview refuses too (exit 2, after its
            # listing): a preview that exits 0 reads as "this will go".
            _checked_schedule(args, payload, retained, keyring)
        return 0
    envelope = _checked_schedule(args, payload, retained, keyring)
    if not args.host:
        sys.stdout.write(envelope.decode("utf-8") + "\n")
        if groups:
            note_printed_unchecked(
                "the groups were not checked against the devices' states, nor the version "
                "against the retained programme, nor the key against the fleet's keyring"
            )
        else:  # published by hand on a group topic, if at all: --host would refuse it
            note_printed_unchecked(
                "the key was not checked against the fleet's keyring, and with no grp: "
                "audience there is no group's programme to compare it with",
                "give --host and a grp: audience to check and send",
            )
        return 0
    for topic in topics:
        publish(args, topic, envelope, retain=True, expiry_s=None)
        print(f"sent schedule {schedule_id} version {version} to {topic}, retained")
    # Once published (a refused one says enough): a group no board is in gets it nowhere.
    warn_of_unknown_groups(args, registry)
    return 0


def _checked_schedule(
    args: argparse.Namespace,
    payload: dict[str, Any],
    retained: dict[str, dict[str, Any] | None],
    keyring: TrustDocument | None,
) -> bytes:
    """The schedule signed, once what is retained would not make the receivers refuse it: a
    version not above the one a group holds, an env other than the fleet's keyring's, keys the
    keyring refuses. ``retained``: each group topic's programme now (none without a broker)."""
    schedule_id, version = payload["id"], payload["version"]
    for topic, current in retained.items():
        held = current.get("version") if current else None
        same_stream = current and current.get("id") == schedule_id
        if same_stream and isinstance(held, int) and held >= version:
            raise InputError(
                f"{topic} holds {schedule_id} version {held}; a receiver refuses version "
                f"{version} (stale_version): give --version {held + 1} or above"
            )
    refuse_if_other_env(args, keyring)  # before anything is signed
    envelope = sign_schedule(payload, load_keys(args.key))
    refuse_if_too_large("schedule", envelope)
    for topic in retained:
        refuse_if_keyring_refuses(args, keyring, topic, envelope, payload)
    return envelope


def _devices_in_a_programme(audiences: list[str], groups: list[str]) -> list[str]:
    """What to say of ``dev:`` audiences in a programme: it is published on its groups' topics
    only, which are all a board listens on for programmes, so a device gets it only as a member
    of one of those groups, whose audience already names it."""
    devices = [
        device
        for audience in dict.fromkeys(audiences)
        if (device := audience.partition(":")[2]) and audience.startswith("dev:")
    ]
    if not groups:
        return [
            f"--aud dev:{device}: a board gets programmes on its groups' topics only, and no "
            "--aud grp:<id> is given: no board would get this one; publish it to a group "
            f"{device} is in (or one it alone is in)"
            for device in devices
        ]
    where = " or ".join(groups)
    return [
        f"--aud dev:{device}: a board gets programmes on its groups' topics only: {device} gets "
        f"this one only if it is in group {where} (then the group names it already); to give "
        "it a programme of its own, publish one to a group it alone is in"
        for device in devices
    ]


def show_command(args: argparse.Namespace, unlisted_groups: GroupChecker) -> int:
    """``schedule show``: what a group (or a device) holds now and its next occurrences.

    A ``--group`` no device's state lists (a mistyped one, usually) shows "no schedule is
    retained" like a real group without one: said after, with the closest names, exit 1, as
    ``fleet --group`` does. The groups a device's state names need no such check."""
    registry = registry_for(args.registry)  # refused before anything is read, as fleet does
    options = BrokerOptions.from_args(args)
    if args.device:
        state_topic = f"{args.prefix}/dev/{args.device}/state"
        state = retained_payload_raw(options, state_topic)
        if state is None:
            who = f"user {args.username!r}" if args.username else "an anonymous client"
            unknown = (
                f"no device {args.device} has left a state on {options.where} ({state_topic}): "
                f"is the id right? (or the broker's ACL hides it from {who})"
            )
            if not args.group:
                raise InputError(f"{unknown}; give --group <id> to see a group's programme")
            print(f"receiver-admin: warning: {unknown}", file=sys.stderr)
        unverified = (
            state is not None
            and registry is not None
            and not ReportVerifier(registry).check(state_topic, state).trusted
        )
        if unverified:
            print(
                f"receiver-admin: warning: the state of device {args.device} is not signed by "
                f"its enrolled key: what it holds and its groups are not used "
                f"({fleet.set_aside(1)})",
                file=sys.stderr,
            )
            state = None
        state_doc = open_report(state) if state else None  # signed (v1.1) or plain JSON
        # Unknown (None) when its state was set aside: what it holds is compared with nothing.
        held: dict[str, Any] | None = None if unverified else {}
        if isinstance(state_doc, dict):
            claimed = state_doc.get("schedules", {})
            held = claimed if isinstance(claimed, dict) else {}
        groups = args.group or []
        if not groups and isinstance(state_doc, dict):
            # Ids only: a state is whatever a client the broker lets write it left there, and a
            # group becomes a topic level ("+" would subscribe to every group's programme).
            listed = state_doc.get("groups", [])
            listed = listed if isinstance(listed, list) else []
            groups = [g for g in listed if isinstance(g, str) and ID_PATTERN.fullmatch(g)]
        holds = ", ".join(
            one_line(f"{sid} v{version}", 80) for sid, version in sorted((held or {}).items())
        )
        if unverified:
            print(f"device {args.device} holds: unknown (its state is not verified)")
        else:
            print(f"device {args.device} holds: {holds or 'no schedule'}")
    else:
        groups, held = args.group or [], None
    if not groups:
        raise InputError("give --group <id> (or --device <id> whose state names its groups)")
    now = time.time()
    for group in groups:
        topic = f"{args.prefix}/grp/{group}/schedule"
        current = retained_payload(args, topic)
        print(f"group {group} ({topic}):")
        for line in programme.describe(current, now, days=args.days, device_holds=held):
            print(f"  {one_line(line, 300)}")  # the device's state is anyone's the ACL lets
    if not args.group:
        return 0
    try:
        unlisted = unlisted_groups(args, args.group, registry)
    except BrokerError as exc:  # only a check: what the groups hold is shown
        print(
            f"receiver-admin: warning: --group was not checked against the devices' states ({exc})",
            file=sys.stderr,
        )
        return 0
    for line in unlisted:
        print(f"receiver-admin: --group: {line}", file=sys.stderr)
    return EXIT_FAILED if unlisted else 0


def retained_payload_raw(options: BrokerOptions, topic: str) -> bytes | None:
    arrivals: queue.Queue[bytes] = queue.Queue()
    with Connection(
        options,
        subscriptions=(topic,),
        on_message=lambda msg: arrivals.put(bytes(msg.payload)) if msg.retain else None,
    ):
        try:
            return arrivals.get(timeout=RETAINED_WAIT_S) or None
        except queue.Empty:
            return None


def add_parsers(
    sub: Any,
    broker_options: Callable[[argparse.ArgumentParser, bool], None],
    publish: Publisher,
    warn_of_unknown_groups: GroupWarner,
    unlisted_groups: GroupChecker,
) -> None:
    entry = sub.add_parser("key-entry", help="print a key's entry for a trust keyring file")
    entry.add_argument("--key", required=True, help="the private key file (its id file beside)")
    entry.add_argument("--roles", nargs="+", required=True, choices=ROLES)
    entry.add_argument(
        "--scopes",
        nargs="+",
        type=scope,
        help="group or device ids the key may act on, or '*' (the default: every device)",
    )
    entry.set_defaults(func=key_entry_command)

    trust = sub.add_parser("trust", help="sign and publish a trust document (a new keyring)")
    trust.add_argument("--version", type=int, required=True, help="above the fleet's current")
    trust.add_argument("--keys", required=True, help="JSON list of key entries (see key-entry)")
    trust.add_argument("--env", required=True)
    trust.add_argument("--key", action="append", required=True, help="a root key (repeatable)")
    trust.add_argument("--thresholds", help="e.g. operator=1,emergency=1,root=2")
    trust.add_argument("--id", help="document id (default trust-v<version>)")
    trust.add_argument("--ttl-days", type=days, default=30.0, help="days it may be taken up")
    broker_options(trust, False)
    trust.set_defaults(func=lambda a: trust_command(a, publish))

    schedule = sub.add_parser(
        "schedule", help="sign and publish a schedule (retained); 'schedule show' reads one"
    )
    schedule.add_argument(
        "--file",
        required=True,
        help="a programme: YAML source (.yaml, .yml) or JSON {id, version, ...}",
    )
    schedule.add_argument("--env", required=True)
    schedule.add_argument("--aud", action="append", required=True, help="grp:<id> (repeatable)")
    schedule.add_argument("--key", action="append", required=True, help="an operator key")
    schedule.add_argument("--id", help="schedule id (overrides the file's)")
    schedule.add_argument("--version", type=int, help="version (overrides the file's)")
    schedule.add_argument("--ttl-days", type=days, default=30.0, help="days it may be taken up")
    schedule.add_argument(
        "--dry-run",
        action="store_true",
        help="show the change against the retained one; send nothing",
    )
    schedule.add_argument(
        "--registry",
        help="enrolled device keys: warn of a grp: audience by the states they signed",
    )
    broker_options(schedule, False)
    schedule.set_defaults(func=lambda a: schedule_command(a, publish, warn_of_unknown_groups))

    show = sub.add_parser(
        "schedule-show",
        prog="receiver-admin schedule show",
        help="the programme a group or device holds now, next plays in local time",
    )
    show.add_argument("--group", action="append", type=identifier, help="a group id (repeatable)")
    show.add_argument("--device", type=identifier, help="a device id: what its state says it holds")
    show.add_argument(
        "--days", type=days_ahead, default=7, help="how many days ahead (default 7, at most 366)"
    )
    show.add_argument(
        "--registry", help="enrolled device keys: judge a --group by the states they signed"
    )
    broker_options(show, True)
    show.set_defaults(func=lambda a: show_command(a, unlisted_groups))
