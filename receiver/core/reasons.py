"""The stable reason codes of ``docs/protocol.md``, and the exception that carries one inside
the core.

Each code is written once, in :class:`Reason`; the module-level names (``reasons.MALFORMED``)
are its members, for the callers' brevity.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Reason(StrEnum):
    """A reason code; the value is what goes on the wire."""

    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    BAD_TYPE = "bad_type"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    NOT_AUTHORIZED = "not_authorized"
    WRONG_ENV = "wrong_env"
    NOT_FOR_ME = "not_for_me"
    REPLAYED = "replayed"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    CLOCK_UNTRUSTED = "clock_untrusted"
    STALE_VERSION = "stale_version"
    BAD_BODY = "bad_body"
    HASH_MISMATCH = "hash_mismatch"
    DOWNLOAD_FAILED = "download_failed"
    POLICY = "policy"
    PLAYBACK_FAILED = "playback_failed"
    STREAM_FAILED = "stream_failed"
    MISSED = "missed"
    QUIET_HOURS = "quiet_hours"
    INTERRUPTED = "interrupted"


TOO_LARGE: Final = Reason.TOO_LARGE
MALFORMED: Final = Reason.MALFORMED
BAD_TYPE: Final = Reason.BAD_TYPE
UNSIGNED: Final = Reason.UNSIGNED
BAD_SIGNATURE: Final = Reason.BAD_SIGNATURE
UNKNOWN_KEY: Final = Reason.UNKNOWN_KEY
NOT_AUTHORIZED: Final = Reason.NOT_AUTHORIZED
WRONG_ENV: Final = Reason.WRONG_ENV
NOT_FOR_ME: Final = Reason.NOT_FOR_ME
REPLAYED: Final = Reason.REPLAYED
EXPIRED: Final = Reason.EXPIRED
NOT_YET_VALID: Final = Reason.NOT_YET_VALID
CLOCK_UNTRUSTED: Final = Reason.CLOCK_UNTRUSTED
STALE_VERSION: Final = Reason.STALE_VERSION
BAD_BODY: Final = Reason.BAD_BODY
HASH_MISMATCH: Final = Reason.HASH_MISMATCH
DOWNLOAD_FAILED: Final = Reason.DOWNLOAD_FAILED
POLICY: Final = Reason.POLICY
PLAYBACK_FAILED: Final = Reason.PLAYBACK_FAILED
STREAM_FAILED: Final = Reason.STREAM_FAILED
MISSED: Final = Reason.MISSED
QUIET_HOURS: Final = Reason.QUIET_HOURS
INTERRUPTED: Final = Reason.INTERRUPTED

ALL_REASONS: Final = frozenset(Reason)


class Rejection(Exception):  # noqa: N818 - a rejection is an outcome, not a program error
    """A message is refused for ``reason``; ``detail`` says why."""

    def __init__(self, reason: Reason, detail: str = "", ref: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason
        self.detail = detail
        self.ref = ref
