"""Whether a message may act: signature, role, scope, environment, audience, freshness, replay.

The checks run cheapest first (size, JSON shape, type, key id before any Ed25519 work) and stop
at the first failure with a stable reason code. Nothing here acts; ``machine`` does that once a
message is admitted. Policy limits (allowlists, priorities) are the machine's, checked after.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Final

from receiver.core import commands, reasons
from receiver.core.clock import Instant, rfc3339
from receiver.core.envelope import (
    COMMAND_TYPE,
    SCHEDULE_TYPE,
    TRUST_TYPE,
    Envelope,
    authorized_signers,
    parse_envelope,
    verified_signers,
)
from receiver.core.reasons import Rejection
from receiver.core.record import record
from receiver.core.schedule import Schedule, parse_schedule
from receiver.core.strict_json import StrictJsonError, loads_strict
from receiver.core.trust import Key, Keyring
from receiver.core.trustdoc import TrustDocument, parse_trust

STOP_ALL_STREAM: Final = "stop:all"
STOP_ID_STREAM: Final = "stop-id:"  # + the id a stop named: a later play with it is refused
MAX_STOP_IDS: Final = 256  # ids named by stops that are remembered: the newest (protocol §7.4)
# Which payload type each kind of topic carries; the topic grants nothing beyond routing.
TYPE_FOR_TOPIC: Final = {"cmd": COMMAND_TYPE, "trust": TRUST_TYPE, "schedule": SCHEDULE_TYPE}


@record
class Context:
    """What admission needs to know about the device and its durable floors."""

    device_id: str
    env: str
    groups: tuple[str, ...]
    keyring: Keyring
    floors: Mapping[str, tuple[int, str]]
    time_floor: float
    reset_floor: float | None
    trust_digest: str
    max_skew_s: float
    max_command_age_s: float
    staged_versions: Mapping[str, tuple[int, str]] = field(default_factory=dict)

    def trusted_utc(self, now: Instant) -> float:
        """The newest time the device can vouch for: never less than its saved floor."""
        return max(self.time_floor, now.utc) if now.utc_trusted else self.time_floor


@record
class AdmittedCommand:
    command: commands.Command
    signers: tuple[Key, ...]  # the keys that authorised it: one replay stream each
    digest: str
    duplicate: bool
    body: bytes = b""  # the verified payload, kept with the intent (write-ahead)


@record
class AdmittedTrust:
    document: TrustDocument
    body: bytes
    digest: str
    duplicate: bool


@record
class AdmittedSchedule:
    schedule: Schedule
    body: bytes
    digest: str
    duplicate: bool
    envelope: bytes = b""  # the whole signed message, stored so a rotation can re-check it


def command_stream(key: Key) -> str:
    return "cmd:" + key.public.hex()


def admit(
    ctx: Context, topic: str, payload: bytes, retained: bool, now: Instant
) -> AdmittedCommand | AdmittedTrust | AdmittedSchedule:
    """Admit a message or raise Rejection."""
    kind = topic.rsplit("/", 1)[-1]
    if kind == "cmd" and retained:
        raise Rejection(reasons.POLICY, "a retained command is never acted on")
    envelope = parse_envelope(payload)
    expected = TYPE_FOR_TOPIC.get(kind)
    if envelope.payload_type != expected:
        raise Rejection(reasons.BAD_TYPE, f"{envelope.payload_type} is not taken on a {kind} topic")
    if expected == TRUST_TYPE:
        return _admit_trust(ctx, envelope, now)
    if expected == SCHEDULE_TYPE:
        return _admit_schedule(ctx, envelope, payload, now)
    return _admit_command(ctx, envelope, now)


def _holding(ctx: Context, signers: tuple[Key, ...], role: str, now: Instant) -> tuple[Key, ...]:
    return authorized_signers(signers, role, ctx.device_id, ctx.groups, ctx.trusted_utc(now))


def _decode(envelope: Envelope) -> object:
    try:
        return loads_strict(envelope.body)
    except StrictJsonError as exc:
        raise Rejection(reasons.MALFORMED, f"payload: {exc}") from exc


def _may_count(ctx: Context, roles: frozenset[str], now: Instant) -> Callable[[Key], bool]:
    """Whether a key's signature could count here: one of ``roles``, this device, not expired.
    The others are not verified at all (a forgery naming them costs no Ed25519 work)."""
    trusted = ctx.trusted_utc(now)

    def may_count(key: Key) -> bool:
        return (
            bool(key.roles & roles)
            and key.covers(ctx.device_id, ctx.groups)
            and key.valid_at(trusted)
        )

    return may_count


COMMAND_ROLES: Final = frozenset({"operator", "emergency"})
ROOT_ROLE: Final = frozenset({"root"})


def _admit_command(ctx: Context, envelope: Envelope, now: Instant) -> AdmittedCommand:
    signers = verified_signers(envelope, ctx.keyring, _may_count(ctx, COMMAND_ROLES, now))
    operators = _holding(ctx, signers, "operator", now)
    emergency = _holding(ctx, signers, "emergency", now)
    keyring = ctx.keyring
    if len(operators) < keyring.threshold("operator") and len(emergency) < keyring.threshold(
        "emergency"
    ):
        raise Rejection(reasons.NOT_AUTHORIZED, "no key authorised for commands on this device")
    doc = _decode(envelope)
    header = commands.parse_header(doc)
    ref = header.id
    if header.env != ctx.env:
        raise Rejection(reasons.WRONG_ENV, "for another environment", ref)
    if not commands.addressed_to(header, ctx.device_id, ctx.groups):
        raise Rejection(reasons.NOT_FOR_ME, "not addressed to this device or its groups", ref)
    _check_fresh(ctx, header, now)
    try:
        command = commands.parse_command(doc, header)
    except Rejection as rejection:
        raise Rejection(rejection.reason, rejection.detail, ref) from rejection
    _check_authorised(command, operators, emergency, keyring)
    # Every verified signer that may sign commands here is counted, not only those that
    # authorised it: otherwise the same envelope with the authorising signatures cut out would
    # be new to the stream of a key left in it (a stop signed by both roles, acted twice).
    counted = tuple({key.public: key for key in (*operators, *emergency)}.values())
    digest = hashlib.sha256(envelope.body).hexdigest()
    floors = [ctx.floors.get(command_stream(key)) for key in counted]
    if all(floor is not None and floor == (header.seq, digest) for floor in floors):
        return AdmittedCommand(command, counted, digest, duplicate=True, body=envelope.body)
    if any(floor is not None and floor[0] >= header.seq for floor in floors):
        raise Rejection(reasons.REPLAYED, "seq is not above the last accepted", ref)
    if isinstance(command.body, commands.Play):
        _check_not_stopped(ctx, header)
    return AdmittedCommand(command, counted, digest, duplicate=False, body=envelope.body)


def _check_fresh(ctx: Context, header: commands.Header, now: Instant) -> None:
    ref = header.id
    trusted = ctx.trusted_utc(now)
    if ctx.reset_floor is None:
        raise Rejection(
            reasons.CLOCK_UNTRUSTED, "new or reset store: waiting for a synchronised clock", ref
        )
    if header.iat < ctx.reset_floor:
        # No allowance for a lagging operator clock here: any allowance would let a command
        # captured that long before the reset play again. A lagging clock is refused only
        # until it passes this instant, which the detail names (docs/security.md).
        raise Rejection(
            reasons.REPLAYED,
            f"issued before this device's store was reset; it takes commands issued from "
            f"{rfc3339(ctx.reset_floor)} on (sign it again)",
            ref,
        )
    if header.exp <= trusted:
        raise Rejection(reasons.EXPIRED, "past its exp", ref)
    if header.iat < trusted - ctx.max_command_age_s:
        raise Rejection(reasons.EXPIRED, "older than the local maximum command age", ref)
    if now.utc_trusted and header.iat > now.utc + ctx.max_skew_s:
        raise Rejection(reasons.NOT_YET_VALID, "issued in the future", ref)


def _check_not_stopped(ctx: Context, header: commands.Header) -> None:
    """A later stop beats an older play that arrives after it (docs/security.md)."""
    stop_all = ctx.floors.get(STOP_ALL_STREAM)
    if stop_all is not None and header.iat * 1000 < stop_all[0]:
        raise Rejection(reasons.REPLAYED, "issued before a later stop of everything", header.id)
    if STOP_ID_STREAM + header.id in ctx.floors:
        raise Rejection(reasons.REPLAYED, "a stop for this id was accepted already", header.id)


def _check_authorised(
    command: commands.Command,
    operators: tuple[Key, ...],
    emergency: tuple[Key, ...],
    keyring: Keyring,
) -> None:
    """Raise NOT_AUTHORIZED unless the keys of one role authorise this command.

    Emergency plays need the emergency role. An emergency key may also sign ``stop``, so the
    one who sent a warning by mistake can end it; everything else is the operator's.
    """
    body = command.body
    ref = command.header.id
    if isinstance(body, commands.Play) and body.priority == "emergency":
        if len(emergency) >= keyring.threshold("emergency"):
            return
        raise Rejection(reasons.NOT_AUTHORIZED, "an emergency play needs the emergency role", ref)
    if len(operators) >= keyring.threshold("operator"):
        return
    if isinstance(body, commands.Stop) and len(emergency) >= keyring.threshold("emergency"):
        return
    raise Rejection(reasons.NOT_AUTHORIZED, f"{command.header.type} needs the operator role", ref)


def _admit_trust(ctx: Context, envelope: Envelope, now: Instant) -> AdmittedTrust:
    current = ctx.keyring
    signers = verified_signers(envelope, current, _may_count(ctx, ROOT_ROLE, now))
    if len(_holding(ctx, signers, "root", now)) < current.threshold("root"):
        raise Rejection(reasons.NOT_AUTHORIZED, "not signed by enough current root keys")
    document = parse_trust(_decode(envelope))
    ref = document.id
    digest = hashlib.sha256(envelope.body).hexdigest()
    if document.env != ctx.env:
        raise Rejection(reasons.WRONG_ENV, "for another environment", ref)
    if document.version == current.version and digest == ctx.trust_digest:
        return AdmittedTrust(document, envelope.body, digest, duplicate=True)
    if document.version <= current.version:
        raise Rejection(
            reasons.STALE_VERSION, f"version {document.version} is not above {current.version}", ref
        )
    if document.exp <= ctx.trusted_utc(now):
        raise Rejection(reasons.EXPIRED, "past its exp", ref)
    new_keyring = document.keyring
    try:
        new_signers = verified_signers(envelope, new_keyring, _may_count(ctx, ROOT_ROLE, now))
    except Rejection:
        new_signers = ()
    if len(_holding(ctx, new_signers, "root", now)) < new_keyring.threshold("root"):
        raise Rejection(reasons.NOT_AUTHORIZED, "not signed by enough of its own root keys", ref)
    return AdmittedTrust(document, envelope.body, digest, duplicate=False)


def _admit_schedule(ctx: Context, envelope: Envelope, raw: bytes, now: Instant) -> AdmittedSchedule:
    """Schedules: operator role (and the emergency role for emergency entries), their own
    version stream, and no maximum age: a retained schedule may be weeks old and still good."""
    signers = verified_signers(envelope, ctx.keyring, _may_count(ctx, COMMAND_ROLES, now))
    keyring = ctx.keyring
    if len(_holding(ctx, signers, "operator", now)) < keyring.threshold("operator"):
        raise Rejection(reasons.NOT_AUTHORIZED, "schedules need the operator role")
    schedule = parse_schedule(_decode(envelope))
    ref = schedule.id
    if any(entry.priority == "emergency" for entry in schedule.entries) and len(
        _holding(ctx, signers, "emergency", now)
    ) < keyring.threshold("emergency"):
        raise Rejection(reasons.NOT_AUTHORIZED, "emergency entries need the emergency role", ref)
    if schedule.env != ctx.env:
        raise Rejection(reasons.WRONG_ENV, "for another environment", ref)
    if not any(
        a == f"dev:{ctx.device_id}" or a in {f"grp:{g}" for g in ctx.groups} for a in schedule.aud
    ):
        raise Rejection(reasons.NOT_FOR_ME, "not addressed to this device or its groups", ref)
    digest = hashlib.sha256(envelope.body).hexdigest()
    floor = ctx.floors.get(f"schedule:{schedule.id}")
    if floor == (schedule.version, digest) or ctx.staged_versions.get(schedule.id) == (
        schedule.version,
        digest,
    ):
        return AdmittedSchedule(schedule, envelope.body, digest, duplicate=True, envelope=raw)
    newest = max((floor[0] if floor else 0), ctx.staged_versions.get(schedule.id, (0, ""))[0])
    if schedule.version <= newest:
        raise Rejection(
            reasons.STALE_VERSION, f"version {schedule.version} is not above {newest}", ref
        )
    if schedule.exp <= ctx.trusted_utc(now):
        raise Rejection(reasons.EXPIRED, "past its exp", ref)
    if now.utc_trusted and schedule.iat > now.utc + ctx.max_skew_s:
        raise Rejection(reasons.NOT_YET_VALID, "issued in the future", ref)
    return AdmittedSchedule(schedule, envelope.body, digest, duplicate=False, envelope=raw)


def stored_schedule(stored: bytes) -> tuple[Schedule, Envelope | None]:
    """A schedule as the store keeps it: its whole signed envelope (so a later keyring can
    judge its signers again), or, as receivers before it stored it, its bare payload (then
    ``None`` for the envelope). Raises Rejection or StrictJsonError if it cannot be read."""
    doc = loads_strict(stored)
    if isinstance(doc, dict) and "payloadType" in doc:
        envelope = parse_envelope(stored)
        if envelope.payload_type != SCHEDULE_TYPE:
            raise Rejection(reasons.BAD_TYPE, "not a schedule")
        return parse_schedule(loads_strict(envelope.body)), envelope
    return parse_schedule(doc), None


def schedule_still_authorised(
    envelope: Envelope,
    schedule: Schedule,
    keyring: Keyring,
    device_id: str,
    groups: tuple[str, ...],
) -> bool:
    """Whether ``keyring`` still lets the keys that signed a schedule in force authorise it:
    the operator threshold, and the emergency one for emergency entries (as on acceptance).

    A key's ``not_after`` is not looked at: a programme signed while its key was valid stays
    when the key ages out (as the schedule outlives its own ``exp``); what withdraws it is a
    keyring that no longer gives its signers the role for this device, after a rotation.
    """

    def may_count(key: Key) -> bool:
        return bool(key.roles & COMMAND_ROLES) and key.covers(device_id, groups)

    try:
        signers = verified_signers(envelope, keyring, may_count)
    except Rejection:
        return False
    operators = [key for key in signers if "operator" in key.roles]
    if len(operators) < keyring.threshold("operator"):
        return False
    if any(entry.priority == "emergency" for entry in schedule.entries):
        emergency = [key for key in signers if "emergency" in key.roles]
        return len(emergency) >= keyring.threshold("emergency")
    return True
