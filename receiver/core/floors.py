"""The trust and replay floors: the part of the state that says which keys are trusted and what
may no longer be accepted.

It holds the keyring in force (and its document's digest), each replay stream's last accepted
``(seq, digest)`` (a key's commands, a schedule's versions, the stops), the trusted-time floor
and the reset floor of a fresh store. :mod:`admission` judges a message against it
(:func:`context`); the functions here move it once a message is accepted, each
``(part, input, now) -> (part, effects)``, and the effects store it before what it allows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

from receiver.core import admission, commands
from receiver.core.clock import Instant
from receiver.core.effects import PersistFloors, PersistResetFloor, PersistSchedule, PersistTrust
from receiver.core.intents import Intent
from receiver.core.record import record
from receiver.core.settings import Settings
from receiver.core.trust import Keyring


@record
class Floors:
    keyring: Keyring
    streams: Mapping[str, tuple[int, str]]  # replay stream -> last accepted (seq, digest)
    time_floor: float  # the newest trusted UTC the device has seen
    # None until the first synchronised clock after the store was empty (a new or reset
    # device): commands issued before that instant are refused (docs/security.md).
    reset_floor: float | None = None
    trust_digest: str = ""


def context(
    part: Floors, settings: Settings, staged_versions: Mapping[str, tuple[int, str]]
) -> admission.Context:
    """What admission judges a message against."""
    return admission.Context(
        device_id=settings.device_id,
        env=settings.env,
        groups=settings.groups,
        keyring=part.keyring,
        floors=part.streams,
        time_floor=part.time_floor,
        reset_floor=part.reset_floor,
        trust_digest=part.trust_digest,
        max_skew_s=settings.max_skew_s,
        max_command_age_s=settings.max_command_age_s,
        staged_versions=staged_versions,
    )


def fix_reset_floor(part: Floors, now: Instant) -> tuple[Floors, tuple[PersistResetFloor, ...]]:
    """The first trusted instant of a fresh store: from then on, older commands are stale.

    Cut to the millisecond, the precision of ``iat`` on the wire, so a command signed in the
    same millisecond is not refused for a fraction the operator could not have written.
    """
    if part.reset_floor is not None or not now.utc_trusted:
        return part, ()
    floor = math.floor(now.utc * 1000) / 1000
    return replace(part, reset_floor=floor), (PersistResetFloor(floor),)


CLOCK_FOLLOW_S = 1.0  # how far the synchronised clock may run ahead of the floor in memory


def follow_clock(part: Floors, now: Instant) -> Floors:
    """A synchronised clock raises the trusted-time floor of the running core (the shell stores
    it about hourly): a clock then set back, a spoofed NTP server that the kernel still calls
    synchronised, is judged against the newest good time, not against the floor the core
    started with or the last accepted command's."""
    if not now.utc_trusted or now.utc < part.time_floor + CLOCK_FOLLOW_S:
        return part
    return replace(part, time_floor=now.utc)


def accept_command(
    part: Floors,
    admitted: admission.AdmittedCommand,
    intent: Intent,
    now: Instant,
    *,
    max_skew_s: float,
) -> tuple[Floors, tuple[PersistFloors, ...]]:
    """A command accepted: its signers' streams, a stop's floor and the time floor move, and
    are stored with the intent to carry it out (write-ahead), before it acts."""
    header = admitted.command.header
    changed = {
        admission.command_stream(key): (header.seq, admitted.digest) for key in admitted.signers
    }
    body = admitted.command.body
    time_floor = _raised_floor(part, header.iat, now, max_skew_s)
    if isinstance(body, commands.Stop):
        # Its instant, bounded as the time floor is: without a synchronised clock one stop
        # dated years ahead would otherwise bar every later play for good.
        changed.update(_stop_floor(part, header, body, min(header.iat, time_floor)))
    streams = {**part.streams, **changed}
    if isinstance(body, commands.Stop) and body.target != "all":
        streams = _newest_stop_ids(streams)
    part = replace(part, streams=streams, time_floor=time_floor)
    return part, (PersistFloors(changed, time_floor, intent),)


def accept_trust(
    part: Floors, admitted: admission.AdmittedTrust
) -> tuple[Floors, tuple[PersistTrust, ...]]:
    """A new trust document: stored, then its keyring is the one in force."""
    document = admitted.document
    stored = PersistTrust(document.version, admitted.body, admitted.digest)
    return replace(part, keyring=document.keyring, trust_digest=admitted.digest), (stored,)


def schedule_stored(part: Floors, stored: PersistSchedule) -> Floors:
    """A schedule version went into force (its ``PersistSchedule`` stores its floor too)."""
    stream = f"schedule:{stored.schedule_id}"
    return replace(part, streams={**part.streams, stream: (stored.version, stored.digest)})


def _raised_floor(part: Floors, iat: float, now: Instant, max_skew_s: float) -> float:
    """The trusted-time floor after a verified message issued at ``iat``.

    With a synchronised clock ``iat`` was already checked against it. Without one, a single
    message may move the floor at most ``max_skew_s`` ahead, so one command with a wrong
    far-future ``iat`` cannot make every later command look expired.
    """
    if now.utc_trusted:
        return max(part.time_floor, min(iat, now.utc + max_skew_s), now.utc)
    if part.time_floor > 0:
        iat = min(iat, part.time_floor + max_skew_s)
    return max(part.time_floor, iat)


def _newest_stop_ids(streams: dict[str, tuple[int, str]]) -> dict[str, tuple[int, str]]:
    """``streams`` with the ids named by stops cut to the newest :data:`MAX_STOP_IDS` (by the
    stop's instant, then by the id), the ones the store keeps: memory stays bounded while the
    daemon runs, and a restart forgets nothing the running daemon still remembered."""
    named = [stream for stream in streams if stream.startswith(admission.STOP_ID_STREAM)]
    excess = len(named) - admission.MAX_STOP_IDS
    if excess <= 0:
        return streams
    oldest = set(sorted(named, key=lambda stream: (streams[stream][0], stream))[:excess])
    return {stream: floor for stream, floor in streams.items() if stream not in oldest}


def _stop_floor(
    part: Floors, header: commands.Header, body: commands.Stop, issued: float
) -> dict[str, tuple[int, str]]:
    """A stop of everything raises the floor below which older plays are refused; a stop that
    names an id remembers it, so that play is refused if it arrives later (durably, like the
    floors: the store keeps the newest few hundred)."""
    issued_ms = int(issued * 1000)
    if body.target != "all":
        return {admission.STOP_ID_STREAM + body.target: (issued_ms, header.id)}
    current = part.streams.get(admission.STOP_ALL_STREAM)
    if current is not None and current[0] >= issued_ms:
        return {}
    return {admission.STOP_ALL_STREAM: (issued_ms, header.id)}
