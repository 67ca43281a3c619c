"""Timestamps on the wire: RFC 3339 UTC with milliseconds, shared by the daemon and the tool.

The one definition lives in the pure core (``receiver.core.clock``), which writes such a time
in a rejection's detail; this module is where the shell and the operator's tool take it from,
and where both read back a report's time (``ts_utc``), leniently, as a display or an order needs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from receiver.core.clock import rfc3339

__all__ = ["rfc3339", "ts_utc"]


def ts_utc(value: Any) -> float | None:
    """A message's RFC 3339 ``ts`` as seconds since the epoch, or None if it is not one."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return None if moment.tzinfo is None else moment.timestamp()
