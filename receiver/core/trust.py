"""The keyring: which public keys may sign what, for whom, until when.

A key has roles (operator, emergency, root), scopes (device ids, group ids, or ``*``) and an
optional expiry. Signatures are counted once per distinct public key, never per key id or per
signature entry, and a role's threshold must be met by keys that hold the role, cover this
device and have not expired.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import field
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from receiver.core.record import record

ED25519_PUBLIC_KEY_BYTES = 32
ED25519_SIGNATURE_BYTES = 64

DEFAULT_THRESHOLDS: Mapping[str, int] = {"operator": 1, "emergency": 1, "root": 2}


@record
class Key:
    """One trusted public key and what it may do."""

    id: str
    public: bytes
    roles: frozenset[str]
    scopes: frozenset[str]
    not_after: float | None = None  # seconds since the epoch
    verifier: Ed25519PublicKey = field(compare=False, repr=False, default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if len(self.public) != ED25519_PUBLIC_KEY_BYTES:
            raise ValueError(f"key {self.id!r}: an Ed25519 public key is 32 bytes")
        if self.verifier is None:
            object.__setattr__(self, "verifier", Ed25519PublicKey.from_public_bytes(self.public))

    def verifies(self, message: bytes, signature: bytes) -> bool:
        if len(signature) != ED25519_SIGNATURE_BYTES:
            return False
        try:
            self.verifier.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def covers(self, device_id: str, groups: Iterable[str]) -> bool:
        return "*" in self.scopes or device_id in self.scopes or bool(self.scopes & set(groups))

    def valid_at(self, utc: float) -> bool:
        return self.not_after is None or utc <= self.not_after


@record
class Keyring:
    """The current set of trusted keys, looked up by key id (a hint only)."""

    keys: tuple[Key, ...]
    thresholds: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    version: int = 0

    def by_id(self, key_id: str) -> Key | None:
        for key in self.keys:
            if key.id == key_id:
                return key
        return None

    def threshold(self, role: str) -> int:
        # A role the mapping leaves out keeps its documented default (root 2), never 1.
        return max(1, self.thresholds.get(role, DEFAULT_THRESHOLDS.get(role, 1)))


def key_from_config(
    key_id: str,
    public: bytes,
    roles: Iterable[str],
    scopes: Iterable[str],
    not_after: datetime | None,
) -> Key:
    return Key(
        id=key_id,
        public=public,
        roles=frozenset(roles),
        scopes=frozenset(scopes),
        not_after=not_after.timestamp() if not_after is not None else None,
    )
