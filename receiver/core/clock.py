"""Time as the core sees it: one value per step, never read from the clock inside the core."""

from __future__ import annotations

from datetime import UTC, datetime

from receiver.core.record import record


@record
class Instant:
    """A moment, in both clocks.

    ``mono`` (seconds, monotonic) drives every timer; ``utc`` (seconds since the epoch) is the
    wall clock, which the core believes only where ``utc_trusted`` says it is synchronised.
    """

    mono: float
    utc: float
    utc_trusted: bool


def rfc3339(utc: float) -> str:
    """``utc`` as the protocol writes times: RFC 3339 in UTC, to the millisecond."""
    return datetime.fromtimestamp(utc, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
