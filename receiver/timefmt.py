"""Timestamps on the wire: RFC 3339 UTC with milliseconds, shared by the daemon and the tool."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(utc: float) -> str:
    """``utc`` (seconds since the epoch) as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    return datetime.fromtimestamp(utc, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
