"""What the devices send back (state and events), parsed in one place for every reader.

``watch``, ``fleet``, ``collect`` and ``report`` all read device messages through
:func:`parse_device_message`, so a check that applies to every received message (such as a
device's signature over its report) is added here once.
"""

from __future__ import annotations

from typing import Any, Literal

from receiver.central.reports import ReportVerifier, open_report
from receiver.core.record import record

Channel = Literal["state", "events"]


@record
class DeviceMessage:
    """A device's state or event, as received: ``body`` is None when it is not a JSON object.

    ``raw`` is the payload as sent (the signed envelope, from protocol v1.1); ``body`` the report
    inside it. ``verdict`` says whether the device's enrolled key signed it and it is new
    (``signed``), or why not (receiver/central/reports.py); ``unchecked`` without a registry.
    """

    device: str
    channel: Channel
    body: dict[str, Any] | None
    raw: bytes
    verdict: str = "unchecked"
    detail: str = ""

    @property
    def n(self) -> int | None:
        """An event's number (``None`` for a state, or an event without a usable one)."""
        value = self.body.get("n") if self.body is not None else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None


def device_topics(prefix: str, device: str = "+") -> tuple[str, str]:
    return f"{prefix}/dev/{device}/state", f"{prefix}/dev/{device}/events"


def parse_device_message(
    topic: str, payload: bytes, verifier: ReportVerifier | None = None
) -> DeviceMessage | None:
    """The device message on ``topic`` (``.../dev/<id>/state|events``), or None if not one.

    Signed (v1.1) and plain (v1.0) reports are both read; with a ``verifier`` each is judged
    against the registry of device keys.
    """
    parts = topic.rsplit("/", 3)
    if len(parts) != 4 or parts[1] != "dev" or parts[3] not in ("state", "events"):
        return None
    channel: Channel = "state" if parts[3] == "state" else "events"
    if verifier is not None:
        report = verifier.check(topic, bytes(payload))
        return DeviceMessage(
            parts[2], channel, report.body, bytes(payload), report.verdict, report.detail
        )
    return DeviceMessage(parts[2], channel, open_report(bytes(payload)), bytes(payload))
