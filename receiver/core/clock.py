"""Time as the core sees it: one value per step, never read from the clock inside the core."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Instant:
    """A moment, in both clocks.

    ``mono`` (seconds, monotonic) drives every timer; ``utc`` (seconds since the epoch) is the
    wall clock, which the core believes only where ``utc_trusted`` says it is synchronised.
    """

    mono: float
    utc: float
    utc_trusted: bool
