"""Trust documents: a new keyring, signed by root keys, with a version that only goes up.

A document is accepted only when the root threshold of the device's current keyring signed it
and the root threshold of the new keyring signed it too (as TUF requires for a root rotation),
so no single stolen key can replace the keyring and no document can lock the fleet out.
"""

from __future__ import annotations

import binascii
from typing import Any, Final

from receiver.core import reasons
from receiver.core.commands import ID_PATTERN, MESSAGE_ID_PATTERN, parse_time
from receiver.core.envelope import b64decode_canonical
from receiver.core.reasons import Rejection
from receiver.core.record import record
from receiver.core.trust import DEFAULT_THRESHOLDS, ED25519_PUBLIC_KEY_BYTES, Key, Keyring

ROLES: Final = frozenset({"operator", "emergency", "root"})
MAX_KEYS: Final = 64
FIELDS: Final = frozenset({"id", "version", "iat", "exp", "env", "keys", "thresholds"})
KEY_FIELDS: Final = frozenset({"id", "ed25519", "roles", "scopes", "not_after"})
MAX_VERSION: Final = 2**63 - 1


@record
class TrustDocument:
    id: str
    version: int
    iat: float
    exp: float
    env: str
    keyring: Keyring


def _fail(detail: str) -> Rejection:
    return Rejection(reasons.BAD_BODY, detail)


def parse_trust(doc: Any) -> TrustDocument:
    """Validate a decoded trust payload; header faults are ``malformed``, keys ``bad_body``."""
    if not isinstance(doc, dict):
        raise Rejection(reasons.MALFORMED, "trust payload is not an object")
    extra = set(doc) - FIELDS
    if extra:
        raise Rejection(reasons.MALFORMED, f"unknown field {sorted(extra)[0][:40]!r}")
    doc_id = doc.get("id")
    if not isinstance(doc_id, str) or not MESSAGE_ID_PATTERN.fullmatch(doc_id):
        raise Rejection(reasons.MALFORMED, "id missing or invalid")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise Rejection(reasons.MALFORMED, "version must be a positive integer")
    iat = parse_time(doc.get("iat"), "iat", reasons.MALFORMED)
    exp = parse_time(doc.get("exp"), "exp", reasons.MALFORMED)
    if exp <= iat:
        raise Rejection(reasons.MALFORMED, "exp is not after iat")
    env = doc.get("env")
    if not isinstance(env, str) or not ID_PATTERN.fullmatch(env):
        raise Rejection(reasons.MALFORMED, "env missing or invalid")
    entries = doc.get("keys")
    if not isinstance(entries, list) or not 0 < len(entries) <= MAX_KEYS:
        raise _fail(f"keys must list 1 to {MAX_KEYS} keys")
    keys = tuple(_parse_key(entry) for entry in entries)
    if len({k.id for k in keys}) != len(keys) or len({k.public for k in keys}) != len(keys):
        raise _fail("two keys share an id or a public key")
    thresholds = dict(DEFAULT_THRESHOLDS)
    given = doc.get("thresholds", {})
    if not isinstance(given, dict) or set(given) - ROLES:
        raise _fail("thresholds has roles other than operator, emergency, root")
    for role, value in given.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_KEYS:
            raise _fail(f"threshold for {role} must be 1 to {MAX_KEYS}")
        thresholds[role] = value
    return TrustDocument(doc_id, version, iat, exp, env, Keyring(keys, thresholds, version))


def _parse_key(entry: Any) -> Key:
    if not isinstance(entry, dict) or set(entry) - KEY_FIELDS:
        raise _fail("a key is not {id, ed25519, roles, scopes, not_after?}")
    key_id = entry.get("id")
    if not isinstance(key_id, str) or not 0 < len(key_id) <= 64 or not key_id.isprintable():
        raise _fail("a key id must be 1 to 64 printable characters")
    encoded = entry.get("ed25519")
    try:
        if not isinstance(encoded, str):
            raise ValueError("not a string")
        public = b64decode_canonical(encoded)
    except (binascii.Error, ValueError) as exc:
        raise _fail(f"key {key_id[:40]!r}: ed25519 is not base64") from exc
    if len(public) != ED25519_PUBLIC_KEY_BYTES:
        raise _fail(f"key {key_id[:40]!r}: an Ed25519 public key is 32 bytes")
    roles = entry.get("roles")
    if (
        not isinstance(roles, list)
        or not roles
        or not all(isinstance(role, str) and role in ROLES for role in roles)
    ):
        raise _fail(f"key {key_id[:40]!r}: roles must be a non-empty subset of {sorted(ROLES)}")
    scopes = entry.get("scopes")
    if (
        not isinstance(scopes, list)
        or not scopes
        or not all(isinstance(s, str) and (s == "*" or ID_PATTERN.fullmatch(s)) for s in scopes)
    ):
        raise _fail(f"key {key_id[:40]!r}: scopes must list device or group ids, or '*'")
    not_after = None
    if "not_after" in entry:
        not_after = parse_time(entry["not_after"], "not_after", reasons.BAD_BODY)
    try:
        return Key(key_id, public, frozenset(roles), frozenset(scopes), not_after)
    except ValueError as exc:
        raise _fail(f"key {key_id[:40]!r}: not a usable Ed25519 key") from exc
