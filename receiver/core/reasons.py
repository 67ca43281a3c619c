"""The stable reason codes of PROTOCOL.md, and the exception that carries one inside the core."""

from __future__ import annotations

from typing import Final

TOO_LARGE: Final = "too_large"
MALFORMED: Final = "malformed"
BAD_TYPE: Final = "bad_type"
UNSIGNED: Final = "unsigned"
BAD_SIGNATURE: Final = "bad_signature"
UNKNOWN_KEY: Final = "unknown_key"
NOT_AUTHORIZED: Final = "not_authorized"
WRONG_ENV: Final = "wrong_env"
NOT_FOR_ME: Final = "not_for_me"
REPLAYED: Final = "replayed"
EXPIRED: Final = "expired"
NOT_YET_VALID: Final = "not_yet_valid"
CLOCK_UNTRUSTED: Final = "clock_untrusted"
STALE_VERSION: Final = "stale_version"
BAD_BODY: Final = "bad_body"
HASH_MISMATCH: Final = "hash_mismatch"
DOWNLOAD_FAILED: Final = "download_failed"
POLICY: Final = "policy"
PLAYBACK_FAILED: Final = "playback_failed"
STREAM_FAILED: Final = "stream_failed"
MISSED: Final = "missed"
QUIET_HOURS: Final = "quiet_hours"
INTERRUPTED: Final = "interrupted"

ALL_REASONS: Final = frozenset(
    {
        TOO_LARGE,
        MALFORMED,
        BAD_TYPE,
        UNSIGNED,
        BAD_SIGNATURE,
        UNKNOWN_KEY,
        NOT_AUTHORIZED,
        WRONG_ENV,
        NOT_FOR_ME,
        REPLAYED,
        EXPIRED,
        NOT_YET_VALID,
        CLOCK_UNTRUSTED,
        STALE_VERSION,
        BAD_BODY,
        HASH_MISMATCH,
        DOWNLOAD_FAILED,
        POLICY,
        PLAYBACK_FAILED,
        STREAM_FAILED,
        MISSED,
        QUIET_HOURS,
        INTERRUPTED,
    }
)


class Rejection(Exception):  # noqa: N818 - a rejection is an outcome, not a program error
    """A message is refused for ``reason`` (one of the codes above); ``detail`` says why."""

    def __init__(self, reason: str, detail: str = "", ref: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.ref = ref
