"""``receiver-admin`` for retained documents: trust (the keyring) and schedules.

A trust document is signed by root keys (several ``--key``: the threshold); a schedule by an
operator key. Both are published retained, so a receiver that connects later still gets them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from receiver.central.signing import (
    SigningKey,
    key_entry,
    schedule_payload,
    sign_schedule,
    sign_trust,
    trust_payload,
)

Publisher = Callable[..., bool]
DAY_S = 86400.0


def _load_json(path: str, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{path}: cannot read the {what}: {exc}") from exc


def _thresholds(text: str | None) -> dict[str, int] | None:
    if not text:
        return None
    result: dict[str, int] = {}
    for part in text.split(","):
        role, _, value = part.partition("=")
        if role not in ("operator", "emergency", "root") or not value.isdigit():
            raise SystemExit(
                f"--thresholds: {part!r} is not role=number (operator, emergency, root)"
            )
        result[role] = int(value)
    return result


def key_entry_command(args: argparse.Namespace) -> int:
    """Print the keyring entry of a key, for a trust document's keyring file."""
    key = SigningKey.load(Path(args.key))
    print(json.dumps(key_entry(key, args.roles, args.scopes), indent=2))
    return 0


def trust_command(args: argparse.Namespace, publish: Publisher) -> int:
    keys = _load_json(args.keys, "keyring")
    if not isinstance(keys, list):
        raise SystemExit(f"{args.keys}: the keyring is a JSON list of key entries")
    payload = trust_payload(
        args.version,
        keys,
        env=args.env,
        thresholds=_thresholds(args.thresholds),
        doc_id=args.id,
        ttl_s=args.ttl_days * DAY_S,
    )
    signers = [SigningKey.load(Path(path)) for path in args.key]
    envelope = sign_trust(payload, signers)
    if not args.host:
        sys.stdout.write(envelope.decode("utf-8") + "\n")
        return 0
    topic = f"{args.prefix}/trust"
    if not publish(args, topic, envelope, retain=True, expiry_s=None):
        return 1
    print(
        f"sent trust version {args.version} ({len(keys)} keys, {len(signers)} signatures) "
        f"to {topic}, retained"
    )
    return 0


def schedule_command(args: argparse.Namespace, publish: Publisher) -> int:
    doc = _load_json(args.file, "schedule")
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise SystemExit(f"{args.file}: a schedule file is an object with an 'entries' list")
    schedule_id = args.id or doc.get("id")
    version = args.version or doc.get("version")
    if not isinstance(schedule_id, str) or not isinstance(version, int):
        raise SystemExit("a schedule needs an id and an integer version (in the file or flags)")
    payload = schedule_payload(
        schedule_id,
        version,
        doc["entries"],
        env=args.env,
        aud=args.aud,
        tz=doc.get("tz", "Asia/Ho_Chi_Minh"),
        ttl_s=args.ttl_days * DAY_S,
    )
    envelope = sign_schedule(payload, [SigningKey.load(Path(path)) for path in args.key])
    if not args.host:
        sys.stdout.write(envelope.decode("utf-8") + "\n")
        return 0
    groups = [a.partition(":")[2] for a in args.aud if a.startswith("grp:")]
    if not groups:
        raise SystemExit("schedules are published per group: give --aud grp:<id>")
    for group in groups:
        topic = f"{args.prefix}/grp/{group}/schedule"
        if not publish(args, topic, envelope, retain=True, expiry_s=None):
            return 1
        print(f"sent schedule {schedule_id} version {version} to {topic}, retained")
    return 0


def add_parsers(
    sub: Any, broker_options: Callable[[argparse.ArgumentParser, bool], None], publish: Publisher
) -> None:
    entry = sub.add_parser("key-entry", help="print a key's entry for a trust keyring file")
    entry.add_argument("--key", required=True, help="the private key file (its id file beside)")
    entry.add_argument("--roles", nargs="+", required=True)
    entry.add_argument("--scopes", nargs="+", default=["*"])
    entry.set_defaults(func=key_entry_command)

    trust = sub.add_parser("trust", help="sign and publish a trust document (a new keyring)")
    trust.add_argument("--version", type=int, required=True, help="above the fleet's current")
    trust.add_argument("--keys", required=True, help="JSON list of key entries (see key-entry)")
    trust.add_argument("--env", required=True)
    trust.add_argument("--key", action="append", required=True, help="a root key (repeatable)")
    trust.add_argument("--thresholds", help="e.g. operator=1,emergency=1,root=2")
    trust.add_argument("--id", help="document id (default trust-v<version>)")
    trust.add_argument("--ttl-days", type=float, default=30.0, help="days it may be taken up")
    broker_options(trust, False)
    trust.set_defaults(func=lambda a: trust_command(a, publish))

    schedule = sub.add_parser("schedule", help="sign and publish a schedule (retained)")
    schedule.add_argument("--file", required=True, help="JSON: {id, version, tz, entries}")
    schedule.add_argument("--env", required=True)
    schedule.add_argument("--aud", action="append", required=True, help="grp:<id> (repeatable)")
    schedule.add_argument("--key", action="append", required=True, help="an operator key")
    schedule.add_argument("--id", help="schedule id (overrides the file's)")
    schedule.add_argument("--version", type=int, help="version (overrides the file's)")
    schedule.add_argument("--ttl-days", type=float, default=30.0, help="days it may be taken up")
    broker_options(schedule, False)
    schedule.set_defaults(func=lambda a: schedule_command(a, publish))
