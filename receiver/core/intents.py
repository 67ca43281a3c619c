"""The write-ahead intent: a command accepted but not yet carried out to its end."""

from __future__ import annotations

from receiver.core.record import record


@record
class Intent:
    """A command accepted but not yet carried out to its end, stored with its replay floor.

    Written in the same transaction as the floor (write-ahead), so a crash between accepting a
    command and acting on it cannot leave the command spent and silent: after a restart it is
    carried out if ``window_end_utc`` has not passed, else reported ``failed``. ``stage`` is
    ``accepted`` until a play's sound is about to start, then ``started`` (a play cut off by a
    restart is reported, never sounded twice). The row goes when the command is done.
    """

    ref: str
    body: bytes  # the verified command payload (strict JSON), to act on after a restart
    window_end_utc: float  # after this instant there is no point in carrying it out
    stage: str = "accepted"  # accepted | started
