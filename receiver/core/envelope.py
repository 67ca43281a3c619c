"""DSSE v1 envelopes: strict parsing, the pre-authentication encoding, signature checking.

Order matters for a flood: the size cap, the JSON shape, the payload type and the key ids are
all checked before any Ed25519 work. The bytes later parsed as the payload are exactly the bytes
whose signature was checked.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Final

from receiver.core import reasons
from receiver.core.reasons import Rejection
from receiver.core.record import record
from receiver.core.strict_json import StrictJsonError, loads_strict
from receiver.core.trust import ED25519_SIGNATURE_BYTES, Key, Keyring

MAX_MESSAGE_BYTES: Final = 16 * 1024
MAX_SIGNATURES: Final = 8
MAX_KEYID_CHARS: Final = 64

COMMAND_TYPE: Final = "application/vnd.loa.command.v1+json"
SCHEDULE_TYPE: Final = "application/vnd.loa.schedule.v1+json"
TRUST_TYPE: Final = "application/vnd.loa.trust.v1+json"
PAYLOAD_TYPES: Final = frozenset({COMMAND_TYPE, SCHEDULE_TYPE, TRUST_TYPE})


@record
class Envelope:
    payload_type: str
    body: bytes
    signatures: tuple[tuple[str, bytes], ...]  # (keyid hint, raw signature)


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is actually signed."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(body), body)


def b64decode_canonical(text: str) -> bytes:
    """Standard alphabet with padding, in its one canonical spelling.

    Unused low bits in the last character must be zero: otherwise two different envelopes
    would carry the same bytes, and a changed message could pass as the signed one.
    """
    encoded = text.encode("ascii")
    raw = base64.b64decode(encoded, validate=True)
    if base64.b64encode(raw) != encoded:
        raise ValueError("non-canonical base64")
    return raw


def parse_envelope(raw: bytes) -> Envelope:
    """Parse untrusted bytes into an envelope, or raise a Rejection (no crypto is done here)."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise Rejection(reasons.TOO_LARGE, f"{len(raw)} bytes, the cap is {MAX_MESSAGE_BYTES}")
    try:
        doc = loads_strict(raw)
    except StrictJsonError as exc:
        raise Rejection(reasons.MALFORMED, str(exc)) from exc
    if not isinstance(doc, dict):
        raise Rejection(reasons.MALFORMED, "envelope is not a JSON object")
    extra = set(doc) - {"payloadType", "payload", "signatures"}
    if extra:
        raise Rejection(reasons.MALFORMED, f"unknown envelope field {sorted(extra)[0][:40]!r}")
    payload_type = doc.get("payloadType")
    if not isinstance(payload_type, str):
        raise Rejection(reasons.MALFORMED, "payloadType missing or not a string")
    if payload_type not in PAYLOAD_TYPES:
        raise Rejection(reasons.BAD_TYPE, "unknown payloadType")
    payload = doc.get("payload")
    if not isinstance(payload, str):
        raise Rejection(reasons.MALFORMED, "payload missing or not a string")
    try:
        body = b64decode_canonical(payload)
    except (binascii.Error, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise Rejection(reasons.MALFORMED, "payload is not canonical base64") from exc
    signatures = doc.get("signatures")
    if signatures is None or signatures == []:
        raise Rejection(reasons.UNSIGNED, "no signatures")
    if not isinstance(signatures, list):
        raise Rejection(reasons.MALFORMED, "signatures is not a list")
    if len(signatures) > MAX_SIGNATURES:
        raise Rejection(reasons.MALFORMED, f"more than {MAX_SIGNATURES} signatures")
    parsed: list[tuple[str, bytes]] = []
    for entry in signatures:
        if not isinstance(entry, dict) or set(entry) - {"keyid", "sig"}:
            raise Rejection(reasons.MALFORMED, "a signature entry is not {keyid, sig}")
        keyid, sig = entry.get("keyid"), entry.get("sig")
        if not isinstance(keyid, str) or not 0 < len(keyid) <= MAX_KEYID_CHARS:
            raise Rejection(reasons.MALFORMED, "a signature has no valid keyid")
        if not keyid.isprintable():
            raise Rejection(reasons.MALFORMED, "a keyid has control characters")
        if not isinstance(sig, str):
            raise Rejection(reasons.MALFORMED, "a signature has no sig")
        try:
            sig_bytes = b64decode_canonical(sig)
        except (binascii.Error, ValueError) as exc:
            raise Rejection(reasons.MALFORMED, "a sig is not base64") from exc
        if len(sig_bytes) != ED25519_SIGNATURE_BYTES:
            raise Rejection(reasons.BAD_SIGNATURE, "an Ed25519 signature is 64 bytes")
        parsed.append((keyid, sig_bytes))
    return Envelope(payload_type, body, tuple(parsed))


def verified_signers(
    envelope: Envelope, keyring: Keyring, may_count: Callable[[Key], bool] | None = None
) -> tuple[Key, ...]:
    """The distinct keys of the keyring whose signature over the envelope is valid.

    The keyid only picks which key to try; a key is tried once, with the first entry that names
    it, however many entries name it, so a forgery costs at most one Ed25519 verification per
    distinct key it names. With ``may_count``, a key whose signature could not count here (the
    wrong role, another scope, expired) is not verified at all. Raises UNKNOWN_KEY when no keyid
    is known and NOT_AUTHORIZED when no known key named may count (both before any Ed25519
    work), and BAD_SIGNATURE when no signature of a key tried verifies.
    """
    named: dict[bytes, tuple[Key, bytes]] = {}
    for keyid, sig in envelope.signatures:
        key = keyring.by_id(keyid)
        if key is not None and key.public not in named:
            named[key.public] = (key, sig)
    if not named:
        raise Rejection(reasons.UNKNOWN_KEY, "no signature by a key this device knows")
    if may_count is not None:
        named = {public: pair for public, pair in named.items() if may_count(pair[0])}
        if not named:
            raise Rejection(
                reasons.NOT_AUTHORIZED, "no key named may sign this message for this device"
            )
    message = pae(envelope.payload_type, envelope.body)
    valid = tuple(key for key, sig in named.values() if key.verifies(message, sig))
    if not valid:
        raise Rejection(reasons.BAD_SIGNATURE, "no signature verifies")
    return valid


def authorized_signers(
    signers: tuple[Key, ...],
    role: str,
    device_id: str,
    groups: tuple[str, ...],
    trusted_utc: float,
) -> tuple[Key, ...]:
    """The signers that hold ``role``, cover this device and have not expired."""
    return tuple(
        key
        for key in signers
        if role in key.roles and key.covers(device_id, groups) and key.valid_at(trusted_utc)
    )
