"""Checking the reports devices publish: is this event or state really from that device, and new?

Devices sign their events and states with their own Ed25519 key (protocol §14). Central keeps a
registry of the enrolled keys (one ``receiver enroll`` line per device, JSON Lines) and passes
every report through a :class:`ReportVerifier`, which returns the report's JSON and a verdict:

``signed``
    the device's registered key signed it, and it is new;
``duplicate``
    an event already seen (same device, ``n`` and content): the at-least-once delivery's second
    copy, or a replay of it; drop it;
``replayed``
    signed by the device but older than what it has already reported: an event whose ``n`` is
    below the newest seen and that was never seen itself (replayed from an archive, or
    reordered), or a state older than the newest one;
``unsigned``
    plain JSON, or an envelope without a signature (a device older than v1.1 sends these);
``forged``
    a signature that does not verify, a key id or ``device`` that is not the topic's device, a
    payload type for the other topic, or the same ``n`` with other content;
``unknown_device``
    no key registered for the device of the topic;
``malformed``
    neither JSON nor an envelope, JSON a strict reader refuses (a key given twice, which two
    readers could read two ways), or larger than any report (32 KiB);
``unchecked``
    read without a registry (``watch`` or ``fleet`` run without ``--registry``).

Only ``signed`` (and a ``duplicate``, which adds nothing) should count. The verifier remembers,
per device, the highest event ``n``, the events seen (content digests of the newest 512)
and the newest state's ``ts``; a fresh verifier (a restarted tool) knows nothing yet, so it takes
the first report of each device as the reference. A device whose state store was reset starts
its ``n`` at 1 again with the same key: an event with a lower ``n`` whose ``ts`` is newer than
every earlier event is taken as such a restart, not as a replay; an event older than that
restart is then a replay, whatever its ``n``. The offline state (the will) has
no ``ts``, so its freshness cannot be checked: it is ``signed`` or not, and a replayed one is
contradicted by the device's next state within a minute.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import sqlite3
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from receiver.central.inputs import why
from receiver.core.envelope import b64decode_canonical, pae
from receiver.core.record import record
from receiver.core.strict_json import loads_strict
from receiver.device_key import EVENT_TYPE, STATE_TYPE
from receiver.terminal import one_line
from receiver.timefmt import ts_utc

__all__ = [
    "REPORT_TYPES",
    "Registry",
    "RegistryError",
    "Report",
    "ReportVerifier",
    "Verdict",
    "open_report",
]

Verdict = Literal[
    "signed",
    "duplicate",
    "replayed",
    "unsigned",
    "forged",
    "unknown_device",
    "malformed",
    "unchecked",
]
ReportKind = Literal["event", "state"]

#: What each payload type is, and the last topic level it belongs on.
REPORT_TYPES: Final[dict[str, tuple[ReportKind, str]]] = {
    EVENT_TYPE: ("event", "events"),
    STATE_TYPE: ("state", "state"),
}
# A redelivery comes within the broker's in-flight window (20 by default); an older copy has an
# n below the newest and is flagged replayed, which the collector then finds stored. 512 digests
# cost about 90 KB a device, where 10,000 cost 1.7 MB (5 GB for a province's collector).
_REMEMBERED_EVENTS: Final = 512
#: Larger than any report a device makes (a state is about 1.3 KB) and what the brokers pass
#: (docs/operations.md section 8): anything bigger is refused before it is parsed.
MAX_REPORT_BYTES: Final = 32 * 1024
#: How much older than the newest event an event with a lower ``n`` must be to count as a
#: replay rather than a counter restart (two events of one step share a millisecond or so).
_RESTART_SLACK_S: Final = 0.0


class DeviceMessageLike(Protocol):
    """What :func:`message_text` reads of a received message (receiver.central.received)."""

    @property
    def body(self) -> dict[str, Any] | None: ...
    @property
    def raw(self) -> bytes: ...
    @property
    def verdict(self) -> str: ...
    @property
    def detail(self) -> str: ...


class ReceivedLike(DeviceMessageLike, Protocol):
    """What :func:`set_aside` reads of a received message (receiver.central.received)."""

    @property
    def device(self) -> str: ...
    @property
    def channel(self) -> str: ...


class RegistryError(ValueError):
    """The registry file cannot be read; the message names the file and line."""


@record
class Registry:
    """Enrolled device keys: ``receiver enroll`` lines, one JSON object per line."""

    keys: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Registry:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RegistryError(f"cannot read the device registry {path}: {why(exc)}") from exc
        registry = cls.parse(text.splitlines(), str(path))
        if not registry.keys:
            # Not "no device is enrolled": every report would be set aside as unknown.
            raise RegistryError(
                f"the device registry {path} enrolls no device: is it the right file? "
                "(each line is a 'receiver enroll' line)"
            )
        return registry

    @classmethod
    def parse(cls, lines: Iterable[str], source: str = "registry") -> Registry:
        keys: dict[str, bytes] = {}
        for number, line in enumerate(lines, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            where = f"{source}:{number}"
            try:
                entry = json.loads(line)
                device, public = entry["device"], entry["ed25519"]
                raw = b64decode_canonical(public)
            except (ValueError, KeyError, TypeError, binascii.Error) as exc:
                raise RegistryError(
                    f'{where}: not a \'receiver enroll\' line ({{"device": ..., "ed25519": ...}})'
                ) from exc
            if not isinstance(device, str) or len(raw) != 32:
                raise RegistryError(f"{where}: ed25519 must be a 32-byte key in base64")
            if device in keys and keys[device] != raw:
                raise RegistryError(
                    f"{where}: {device} is enrolled twice with different keys: keep the new one"
                )
            keys[device] = raw
        return cls(keys)


@record
class Report:
    """One report as read: where it came from, its JSON, and what the verifier made of it."""

    device: str
    kind: ReportKind | None
    body: dict[str, Any] | None
    verdict: Verdict
    detail: str = ""

    @property
    def trusted(self) -> bool:
        return self.verdict == "signed"


@record
class _Opened:
    body: bytes
    payload_type: str | None  # None: plain JSON, no envelope
    signatures: tuple[tuple[str, bytes], ...]


def _open(payload: bytes) -> _Opened | None:
    """The report's JSON bytes, out of its envelope if it has one; None if it is neither.

    Read strictly (no duplicate keys, NaN, BOM, ...): a message two JSON readers would read two
    ways is not a report, whichever way this one reads it.
    """
    if len(payload) > MAX_REPORT_BYTES:
        return None
    try:
        doc = loads_strict(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    if "payloadType" not in doc or "payload" not in doc:
        return _Opened(payload, None, ())
    try:
        body = b64decode_canonical(doc["payload"])
        signatures = tuple(
            (str(entry["keyid"]), b64decode_canonical(entry["sig"]))
            for entry in doc.get("signatures") or ()
        )
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        return None
    return _Opened(body, str(doc["payloadType"]), signatures)


def open_report(payload: bytes) -> dict[str, Any] | None:
    """The report's JSON object, enveloped or not, without checking anything: for readers that
    only display (the migration path of protocol §14). None if it is not a JSON object."""
    opened = _open(payload)
    return None if opened is None else _strict_object(opened.body)


def _strict_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = loads_strict(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _topic_parts(topic: str) -> tuple[str, str]:
    """(device, last level) of ``{p}/dev/{device}/events|state``."""
    levels = topic.split("/")
    if len(levels) >= 3 and levels[-3] == "dev":
        return levels[-2], levels[-1]
    return "", levels[-1]


@dataclass
class _DeviceMemory:
    max_n: int = 0
    newest_event_ts: float | None = None
    newest_state_ts: float | None = None
    # The ts of the first event after the device's counter last restarted: an event older than
    # that was numbered before the restart, whatever its n (a replay from the earlier count).
    restarted_ts: float | None = None
    events: OrderedDict[int, bytes] = field(default_factory=OrderedDict)  # n -> digest


class ReportVerifier:
    """Verdicts for a stream of reports, remembering what each device already said."""

    def __init__(self, registry: Registry | None) -> None:
        self._registry = registry
        self._memory: dict[str, _DeviceMemory] = {}

    def memory(self, device: str) -> _DeviceMemory:
        """What this verifier remembers of ``device`` (made empty on first use)."""
        return self._memory.setdefault(device, _DeviceMemory())

    def check(self, topic: str, payload: bytes) -> Report:
        device, level = _topic_parts(topic)
        if len(payload) > MAX_REPORT_BYTES:
            detail = f"{len(payload)} bytes, more than a report's {MAX_REPORT_BYTES}"
            return Report(device, None, None, "malformed", detail)
        opened = _open(payload)
        if opened is None:
            return Report(device, None, None, "malformed", "neither JSON nor an envelope")
        body = _strict_object(opened.body)
        kind: ReportKind | None = {"events": "event", "state": "state"}.get(level)  # type: ignore[assignment]
        if body is None:
            return Report(device, kind, None, "malformed", "the payload is not a JSON object")
        if self._registry is None:
            return Report(device, kind, body, "unchecked")
        verdict, detail = _authentic(self._registry, device, level, opened, body)
        if verdict != "signed":
            return Report(device, kind, body, verdict, detail)
        verdict, detail = self._fresh(device, kind, opened.body, body)
        return Report(device, kind, body, verdict, detail)

    def _fresh(
        self, device: str, kind: ReportKind | None, raw: bytes, body: dict[str, Any]
    ) -> tuple[Verdict, str]:
        memory = self.memory(device)
        ts = ts_utc(body.get("ts"))
        if kind == "state":
            if body.get("online") is not True or ts is None:
                return "signed", ""
            if memory.newest_state_ts is not None and ts < memory.newest_state_ts:
                return "replayed", "older than a state this device already reported"
            memory.newest_state_ts = ts
            return "signed", ""
        n = body.get("n")
        if kind != "event" or not isinstance(n, int) or isinstance(n, bool):
            return "signed", ""
        digest = hashlib.sha256(raw).digest()
        seen = memory.events.get(n)
        restarted = memory.restarted_ts
        if restarted is not None and ts is not None and ts < restarted and seen != digest:
            return "replayed", f"event {n} was numbered before the device's counter restarted"
        if seen is not None:
            if seen == digest:
                return "duplicate", f"event {n} was already received"
            if not self._restarted(memory, ts):
                return "forged", f"another event {n} with other content"
        elif n < memory.max_n and not self._restarted(memory, ts):
            return "replayed", f"event {n} arrived after event {memory.max_n} and is older"
        if n <= memory.max_n:  # the device's counter restarted (a reset state store)
            memory.events.clear()
            memory.max_n = 0
            memory.restarted_ts = ts
        memory.events[n] = digest
        while len(memory.events) > _REMEMBERED_EVENTS:
            memory.events.popitem(last=False)
        memory.max_n = max(memory.max_n, n)
        if ts is not None:
            memory.newest_event_ts = max(ts, memory.newest_event_ts or ts)
        return "signed", ""

    @staticmethod
    def _restarted(memory: _DeviceMemory, ts: float | None) -> bool:
        return (
            ts is not None
            and memory.newest_event_ts is not None
            and ts > memory.newest_event_ts + _RESTART_SLACK_S
        )


def _authentic(
    registry: Registry, device: str, level: str, opened: _Opened, body: dict[str, Any]
) -> tuple[Verdict, str]:
    if opened.payload_type is None:
        return "unsigned", "plain JSON, not in a signed envelope"
    if not opened.signatures:
        return "unsigned", "an envelope without a signature"
    expected = REPORT_TYPES.get(opened.payload_type)
    if expected is None or expected[1] != level:
        return "forged", f"payload type {opened.payload_type[:60]!r} on a {level} topic"
    if body.get("device") != device:
        return "forged", f"says it is from {str(body.get('device'))[:64]!r}, not {device}"
    public = registry.keys.get(device)
    if public is None:
        return "unknown_device", f"no key enrolled for {device}"
    key = Ed25519PublicKey.from_public_bytes(public)
    message = pae(opened.payload_type, opened.body)
    for keyid, sig in opened.signatures:
        if keyid != device:
            continue
        try:
            key.verify(sig, message)
        except InvalidSignature:
            continue
        return "signed", ""
    return "forged", "no signature by the device's enrolled key verifies"


# --- hooks for the operator's tools (watch, fleet, collector, report) ----------------------


def registry_for(registry_path: str | None) -> Registry | None:
    """The registry a tool's ``--registry`` option names (None: no option).

    Raises :class:`RegistryError` (a ValueError) with the file and line when it is bad.
    """
    return None if registry_path is None else Registry.load(Path(registry_path))


def verifier_for(registry_path: str | None) -> ReportVerifier:
    """A verifier for a tool's ``--registry`` option (None: read the JSON, mark it unchecked).

    Raises :class:`RegistryError` (a ValueError) with the file and line when it is bad.
    """
    return ReportVerifier(registry_for(registry_path))


def message_text(message: DeviceMessageLike) -> str:
    """One line for ``watch``: the report's JSON, and its verdict unless no registry was given."""
    if message.body is None:
        text = message.raw.decode("utf-8", "replace")
    else:
        text = json.dumps(message.body, separators=(",", ":"), ensure_ascii=False)
    # Whatever a client the broker lets write the topic left there: one line of text, no escape
    # for the terminal (json.dumps escapes only what is below 0x20); JSON stays JSON.
    text = one_line(text, MAX_REPORT_BYTES)
    if message.verdict == "unchecked":
        return text
    return f"{text}  [{message.verdict}{': ' + message.detail if message.detail else ''}]"


def device_mark(verdict: str) -> str:
    """What ``fleet`` adds to a device's name when its state cannot be trusted ("" if it can)."""
    if verdict in ("", "signed", "duplicate", "unchecked"):
        return ""
    return f" [{verdict.upper().replace('_', ' ')}]"


# --- the collector and the proof-of-play report --------------------------------------------

#: Verdicts a collector with a registry keeps apart from the events and states it counts.
SUSPECT: Final = frozenset({"unsigned", "forged", "unknown_device", "malformed", "replayed"})

SUSPECT_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS suspect_reports (
    device TEXT NOT NULL,
    channel TEXT NOT NULL,
    verdict TEXT NOT NULL,
    detail TEXT NOT NULL,
    received_utc REAL NOT NULL,
    raw BLOB NOT NULL
);
"""


def seed_verifier(verifier: ReportVerifier, db: sqlite3.Connection) -> None:
    """Teach a collector's verifier what its database already holds from each device (the newest
    event number and times), so that an old report replayed after a restart is still flagged;
    makes the table :func:`set_aside` writes to (outside any transaction: it commits)."""
    db.executescript(SUSPECT_SCHEMA)
    for device, max_n, newest in db.execute(
        "SELECT device, MAX(n), MAX(ts_utc) FROM events GROUP BY device"
    ):
        memory = verifier.memory(device)
        memory.max_n = max(memory.max_n, int(max_n))
        if newest is not None:
            memory.newest_event_ts = max(float(newest), memory.newest_event_ts or float(newest))
    for device, newest in db.execute(
        "SELECT device, MAX(ts_utc) FROM states WHERE online = 1 GROUP BY device"
    ):
        memory = verifier.memory(device)
        memory.newest_state_ts = max(float(newest), memory.newest_state_ts or float(newest))


def set_aside(db: sqlite3.Connection, message: ReceivedLike, received_utc: float) -> bool:
    """Keep a report the registry does not vouch for out of the counted tables; True if it was
    one. An event copy found already stored byte for byte is a redelivery: not set aside."""
    device, channel, verdict, raw = message.device, message.channel, message.verdict, message.raw
    if verdict not in SUSPECT:
        return False
    if verdict == "replayed" and channel == "events":
        same = db.execute("SELECT 1 FROM events WHERE device = ? AND raw = ?", (device, raw))
        if same.fetchone() is not None:
            return False  # the collector's own table knows it: a duplicate, counted as one
    db.execute(
        "INSERT INTO suspect_reports (device, channel, verdict, detail, received_utc, raw) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (device, channel, verdict, message.detail, received_utc, raw),
    )
    return True


def suspect_summary(db: sqlite3.Connection, device: str | None = None) -> str | None:
    """For the proof-of-play report: how many reports were set aside, by verdict, or None."""
    try:
        found = db.execute(
            "SELECT verdict, COUNT(*) FROM suspect_reports "
            "WHERE ? IS NULL OR device = ? GROUP BY verdict ORDER BY verdict",
            (device, device),
        ).fetchall()
    except sqlite3.OperationalError:  # no such table: nothing was ever set aside
        return None
    if not found:
        return None
    counts = ", ".join(f"{count} {verdict}" for verdict, count in found)
    return (
        f"not counted: reports the device did not sign or that replay older ones ({counts}); "
        "see the suspect_reports table"
    )
