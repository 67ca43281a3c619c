"""The flood limit on rejection reports: the part of the state that counts refused messages.

Every ``rejected`` event is written to disk and sent, so a flood must not wear out the SD card
or crowd out the reports that matter: up to ``per_window`` rejections a window are reported one
by one, and beyond that they are counted by reason and summed up in one ``fault`` when the
window ends. Pure, like the rest of the core: ``(part, input, now) -> (part, effects)``.
"""

from __future__ import annotations

from dataclasses import replace

from receiver.core.clock import Instant
from receiver.core.effects import Emit
from receiver.core.reasons import Reason, Rejection
from receiver.core.record import record


@record
class RejectionWindow:
    """Rejections reported since ``start_mono``: ``reported`` one by one, and beyond the limit
    ``suppressed`` (a count per reason, sorted), summed up when the window closes."""

    start_mono: float = 0.0
    reported: int = 0
    suppressed: tuple[tuple[Reason, int], ...] = ()

    def deadline(self, window_s: float) -> float | None:
        """When the window must close to sum up what it holds; None if nothing waits."""
        return self.start_mono + window_s if self.suppressed else None


def report(
    window: RejectionWindow, rejection: Rejection, now: Instant, *, per_window: int, window_s: float
) -> tuple[RejectionWindow, tuple[Emit, ...]]:
    """One refused message: reported on its own while the window has room, else counted."""
    window, closed = close(window, now, window_s=window_s)
    if window.reported < per_window:
        event = Emit(
            "rejected", ref=rejection.ref, reason=rejection.reason, detail=rejection.detail
        )
        return replace(window, reported=window.reported + 1), (*closed, event)
    tally = dict(window.suppressed)
    tally[rejection.reason] = tally.get(rejection.reason, 0) + 1
    return replace(window, suppressed=tuple(sorted(tally.items()))), closed


def close(
    window: RejectionWindow, now: Instant, *, window_s: float
) -> tuple[RejectionWindow, tuple[Emit, ...]]:
    """Once ``window_s`` has passed: a new window, and the summary of the old one if it held
    any rejection not reported on its own."""
    if now.mono - window.start_mono < window_s:
        return window, ()
    summary: tuple[Emit, ...] = ()
    if window.suppressed:
        total = sum(n for _, n in window.suppressed)
        by_reason = ", ".join(f"{reason} {n}" for reason, n in window.suppressed)
        summary = (
            Emit(
                "fault",
                detail=f"{total} more messages rejected within {window_s:g} s, "
                f"not reported one by one: {by_reason}",
            ),
        )
    return RejectionWindow(now.mono), summary
