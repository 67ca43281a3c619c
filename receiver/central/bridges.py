"""Which devices sit behind which bridge, and whether that bridge is up.

A district broker that dies is invisible from the province: its receivers' retained states
still say ``online`` there, only their "last seen" grows. The province's Mosquitto publishes
each bridge's state, retained, on ``$SYS/broker/connection/<remote_clientid>/state`` (``1`` up,
``0`` down; ``notifications true``, see config/brokers/province.conf). ``receiver-admin fleet
--bridges FILE`` reads that and marks the devices behind a bridge that is down.

The file names the devices behind each bridge, one bridge per line: its ``remote_clientid``
followed by device id patterns (``fnmatch``: ``loa-25-07873-*``); ``#`` starts a comment::

    province-25.district-a  loa-25-07873-* loa-25-07874-*
    province-25.district-b  loa-25-07901-*
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Final

from receiver.central.inputs import why

if TYPE_CHECKING:
    from receiver.central.fleet import DeviceRow

__all__ = [
    "BRIDGE_STATE_FILTER",
    "BridgeMap",
    "BridgeMapError",
    "bridge_of_topic",
    "with_bridges",
]

BRIDGE_STATE_FILTER: Final = "$SYS/broker/connection/+/state"
_PREFIX: Final = "$SYS/broker/connection/"
_WILDCARDS: Final = frozenset("*?[")  # fnmatch's: in a device pattern, never in a bridge's name


class BridgeMapError(ValueError):
    """The bridge file cannot be read; the message names the file and line."""


def bridge_of_topic(topic: str) -> str | None:
    """The bridge's name in a ``$SYS/broker/connection/<name>/state`` topic, else None."""
    if topic.startswith(_PREFIX) and topic.endswith("/state"):
        name = topic[len(_PREFIX) : -len("/state")]
        return name if name and "/" not in name else None
    return None


@dataclass
class BridgeMap:
    """Device patterns per bridge, and the last state each bridge reported."""

    patterns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    up: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> BridgeMap:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise BridgeMapError(f"cannot read the bridge file {path}: {why(exc)}") from exc
        patterns: dict[str, tuple[str, ...]] = {}
        for number, line in enumerate(lines, start=1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) < 2:
                raise BridgeMapError(
                    f"{path}:{number}: write the bridge's remote_clientid, then device patterns"
                )
            if _WILDCARDS.intersection(words[0]):
                # The columns swapped: a bridge of that name would never report, so the file
                # would mark nothing, without a word.
                raise BridgeMapError(
                    f"{path}:{number}: {words[0]} is a device pattern, not a bridge: write the "
                    "bridge's remote_clientid first, then its device patterns"
                )
            patterns[words[0]] = (*patterns.get(words[0], ()), *words[1:])
        return cls(patterns)

    def note(self, topic: str, payload: bytes) -> bool:
        """Take a bridge state message; False if ``topic`` is not one."""
        name = bridge_of_topic(topic)
        if name is None:
            return False
        self.up[name] = payload.strip() == b"1"
        return True

    def doubts(self, devices: Iterable[str]) -> list[str]:
        """What in the file marks nothing on this broker: a bridge that has reported no state
        (a mistyped name, or the columns swapped), a pattern that matches none of ``devices``."""
        known = list(devices)
        said = []
        if self.patterns and not self.up:
            said.append(
                f"no bridge has reported a state on this broker (may this client read "
                f"{BRIDGE_STATE_FILTER}? has each bridge `notifications true`?)"
            )
        for name, patterns in self.patterns.items():
            if self.up and name not in self.up:
                said.append(
                    f"bridge {name} has reported no state on this broker "
                    "(is the name its remote_clientid, first on its line?)"
                )
            for pattern in patterns:
                if not any(fnmatch.fnmatchcase(device, pattern) for device in known):
                    said.append(f"pattern {pattern} (bridge {name}) matches no device")
        return said

    def down_for(self, device: str) -> str | None:
        """The name of a bridge that is down and that ``device`` sits behind, if any."""
        for name, patterns in self.patterns.items():
            if self.up.get(name) is False and any(
                fnmatch.fnmatchcase(device, pattern) for pattern in patterns
            ):
                return name
        return None


def with_bridges(rows: dict[str, DeviceRow], bridges: BridgeMap | None) -> dict[str, DeviceRow]:
    """The fleet's rows, each marked with the down bridge its device sits behind (if any)."""
    if bridges is None:
        return rows
    return {name: replace(row, bridge_down=bridges.down_for(name)) for name, row in rows.items()}
