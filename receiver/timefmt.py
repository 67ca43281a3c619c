"""Timestamps on the wire: RFC 3339 UTC with milliseconds, shared by the daemon and the tool.

The one definition lives in the pure core (``receiver.core.clock``), which writes such a time
in a rejection's detail; this module is where the shell and the operator's tool take it from.
"""

from __future__ import annotations

from receiver.core.clock import rfc3339

__all__ = ["rfc3339"]
