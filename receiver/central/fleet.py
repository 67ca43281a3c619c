"""``receiver-admin fleet``: every device's retained state as one table, filtered and sorted.

One row per device from ``{prefix}/dev/+/state``. "Last seen" is the age of the state's ``ts``
by this machine's clock (``?`` when the device says its clock is not synchronised); an offline
state has no ``ts``, so it shows when this tool saw the device go offline, or ``-`` for an
offline state that was already retained. Filters keep the rows an operator is looking for at
province size (a group, the offline, the failing, a stale keyring, a cache missing files, events
waiting in the outbox); the summary line counts the whole fleet, not only the rows shown.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from receiver.central.reports import device_mark
from receiver.core.commands import ID_PATTERN
from receiver.core.record import record
from receiver.terminal import one_line
from receiver.timefmt import ts_utc

COLUMNS: Final = (
    "DEVICE",
    "ONLINE",
    "STATE",
    "VOL",
    "RELAY",
    "SCHEDULES",
    "TRUST",
    "MISSING",
    "OUTBOX",
    "LAST SEEN",
)
SORT_KEYS: Final = ("device", "last-seen", "trust", "missing", "outbox")
STALE_AFTER_S: Final = 15 * 60.0  # no fresh state for this long: counted as offline
_TITLE_CHARS = 32
_SCHEDULE_CHARS = 40
_CELL_CHARS = 80  # any cell: "playing: " and a title with its faults, a device and its marks


@record
class DeviceRow:
    """What the fleet table knows of one device: its last state and when that arrived."""

    device: str
    state: dict[str, Any] | None  # None: the payload was not a JSON object
    received_utc: float
    retained: bool
    verdict: str = ""  # of the device's signature (protocol §14); "" when not checked
    bridge_down: str | None = None  # the bridge the device sits behind, when it is down

    @property
    def online(self) -> bool:
        return self.state is not None and self.state.get("online") is True

    def age_s(self, now_utc: float) -> float | None:
        if self.state is None:
            return None
        made = ts_utc(self.state.get("ts"))
        return None if made is None else now_utc - made

    def reachable(self, now_utc: float) -> bool:
        """Online and heard from lately (a retained online state of a dead board is not).

        A device whose clock is not synchronised cannot date its state: online is all we know.
        """
        if not self.online:
            return False
        if (self.state or {}).get("clock_synced") is False:
            return True
        age = self.age_s(now_utc)
        return age is not None and age < STALE_AFTER_S

    def number(self, *path: str) -> int:
        value: Any = self.state
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    @property
    def failing(self) -> bool:
        """A local fault, a link error said, or files the device needs and does not have."""
        state = self.state or {}
        link = state.get("link")
        return bool(state.get("faults")) or (isinstance(link, dict) and link.get("up") is False)

    @property
    def groups(self) -> tuple[str, ...]:
        """The group ids the state lists. Only ids: a retained state is not verified here, and
        a name holding a terminal escape or a megabyte is no group a board can be in."""
        groups = (self.state or {}).get("groups")
        if not isinstance(groups, list):
            return ()
        return tuple(g for g in groups if isinstance(g, str) and ID_PATTERN.fullmatch(g))


@record
class Filters:
    group: str | None = None
    offline: bool = False
    failing: bool = False
    trust_below: int | None = None  # stale keyring: trust_version below this
    missing_cache: bool = False
    pending_outbox: bool = False

    def keep(self, row: DeviceRow, now_utc: float) -> bool:
        if self.group is not None and self.group not in row.groups:
            return False
        if self.offline and row.reachable(now_utc):
            return False
        if self.failing and not row.failing:
            return False
        if self.trust_below is not None and (
            not row.online or row.number("trust_version") >= self.trust_below
        ):
            return False
        if self.missing_cache and row.number("cache", "missing") == 0:
            return False
        return not (self.pending_outbox and row.number("outbox", "pending") == 0)


#: Said once with the audience warnings that judged by states no registry checked: anyone the
#: broker's ACL lets write a device's state topic can hide a warning or offer a decoy group.
UNVERIFIED_NOTE: Final = "judged by unverified states (--registry FILE checks their signatures)"


def set_aside(count: int) -> str:
    """The clause saying how many states a registry did not vouch for."""
    return f"{count} state{'' if count == 1 else 's'} set aside as unverified"


def unknown_group_warning(
    group: str,
    rows: Iterable[DeviceRow],
    *,
    where: str,
    states: str,
    who: str,
    verified: bool = False,
    outcome: str = "sent all the same",
) -> str | None:
    """What to say of a ``grp:`` audience no device's state lists (None: one lists it).

    A mistyped group is sent to a topic no board listens on; the closest group names the
    states list are offered. The command is sent anyway (a group being set up has no member
    yet), so this is a warning, and it says what it could not see: the offline state of a
    board that runs an older receiver lists no group, and a broker's ACL hides states without a
    word. ``verified``: the rows were judged against the device registry, and only the states their
    device signed count; the others neither list the group nor offer names (a forged state
    could do either).
    ``outcome`` ends the line: what became of the command or programme all the same.
    """
    every = list(rows)
    trusted = [row for row in every if row.verdict == "signed"] if verified else every
    aside = len(every) - len(trusted)
    if not every:
        return (
            f"no device has left a state on {where} ({states}), so none lists group {group}: "
            f"is the group right? (or the broker's ACL hides them from {who}); {outcome}"
        )
    if not trusted:
        return (
            f"no device on {where} lists group {group} in a verified state: is the group "
            f"right? {set_aside(aside)}; {outcome}"
        )
    line = unlisted_group(group, trusted, subject=f"no device on {where}")
    if line is None:
        return None
    if aside:
        line += f"; {set_aside(aside)}"
    return f"{line}; {outcome}"


def unknown_group_warnings(
    groups: Iterable[str],
    rows: Iterable[DeviceRow],
    *,
    where: str,
    states: str,
    who: str,
    verified: bool = False,
    outcome: str = "sent all the same",
) -> list[str]:
    """:func:`unknown_group_warning` for each group once; without ``verified``, the first that
    judged by states says, once, that they were not checked (none at all: nothing to check)."""
    every = list(rows)
    lines = []
    for group in dict.fromkeys(groups):
        line = unknown_group_warning(
            group,
            every,
            where=where,
            states=states,
            who=who,
            verified=verified,
            outcome=outcome,
        )
        if line is not None:
            lines.append(line)
    if lines and every and not verified:
        lines[0] += f"; {UNVERIFIED_NOTE}"
    return lines


def unlisted_group(
    group: str, rows: Iterable[DeviceRow], *, subject: str = "no device's state"
) -> str | None:
    """What to say when no state lists ``group`` (a mistyped id, usually), with the closest
    names they do list: None when one does, or when there are no states at all to judge by."""
    every = list(rows)
    if not every or any(group in row.groups for row in every):
        return None
    known = sorted({name for row in every for name in row.groups})
    close = difflib.get_close_matches(group, known, n=2)
    line = f"{subject} lists group {group}"
    line += f"; did you mean {' or '.join(close)}?" if close else "; is the group right?"
    silent = sum(1 for row in every if not row.groups)
    if silent:
        line += (
            f" ({silent} of {len(every)} states list no group: a board that is off and runs "
            "an older receiver does not say its groups)"
        )
    return line


def judged_unlisted_group(group: str, rows: Iterable[DeviceRow], *, verified: bool) -> str | None:
    """:func:`unlisted_group` judged as ``fleet --group`` and ``schedule show --group`` judge:
    with ``verified`` (a registry given) only the states their device signed count, and when
    none did, that is said, not passed over (whoever can write the state topics could otherwise
    switch the check off with forged states)."""
    every = list(rows)
    if not verified:
        return unlisted_group(group, every)
    trusted = [row for row in every if row.verdict == "signed"]
    aside = len(every) - len(trusted)
    if every and not trusted:
        return (
            f"no device lists group {group} in a verified state: is the group right? "
            f"({set_aside(aside)})"
        )
    line = unlisted_group(group, trusted)
    return f"{line}; {set_aside(aside)}" if line is not None and aside else line


def _age(seconds: float) -> str:
    if seconds < -5:
        return "future"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def fleet_row(row: DeviceRow, now_utc: float) -> tuple[str, ...]:
    """The table cells for one device (see COLUMNS), each one line of text: a state is whatever
    a client the broker lets write it left there, terminal escapes included."""
    return tuple(one_line(cell, _CELL_CHARS) for cell in _cells(row, now_utc))


def _cells(row: DeviceRow, now_utc: float) -> tuple[str, ...]:
    state = row.state
    device = row.device + device_mark(row.verdict)
    if row.bridge_down is not None:
        device += f" [BRIDGE {row.bridge_down} DOWN]"
    if state is None:
        return (device, "?", "(not a state message)", *[""] * 7)
    online = state.get("online")
    if online is not True:
        seen = "-" if row.retained else _age(now_utc - row.received_utc)
        return (device, "no" if online is False else "?", *["-"] * 7, seen)
    playing = state.get("playing")
    what = str(state.get("state", "?"))
    if what == "playing" and isinstance(playing, dict):
        what = "playing: " + one_line(str(playing.get("title", "?")), _TITLE_CHARS)
    if state.get("faults"):
        what += " [fault: " + ",".join(map(str, state["faults"])) + "]"
    relays = state.get("relays")
    relay = str(relays.get("amp", "?")) if isinstance(relays, dict) else "?"
    if state.get("relay_override") is not None:
        relay += " (manual)"
    schedules = state.get("schedules")
    if isinstance(schedules, dict):
        compact = ",".join(f"{sid}:{version}" for sid, version in sorted(schedules.items()))
        schedule_text = one_line(compact, _SCHEDULE_CHARS) or "-"
    else:
        schedule_text = "?"
    age = row.age_s(now_utc)
    seen = "?" if age is None else _age(age)
    if age is not None and state.get("clock_synced") is False:
        seen += "?"
    # "online" from a state older than STALE_AFTER_S is what a board that died without its
    # will said last: the summary and --offline count it offline, and so does this column.
    reachable = "yes" if row.reachable(now_utc) else "?" if age is None else "stale"
    return (
        device,
        reachable,
        what,
        str(state.get("volume", "?")),
        relay,
        schedule_text,
        str(state.get("trust_version", "?")),
        str(row.number("cache", "missing")),
        str(row.number("outbox", "pending")),
        seen,
    )


def _sort_key(name: str, now_utc: float) -> Callable[[DeviceRow], Any]:
    if name == "last-seen":  # the longest silent first
        return lambda r: (-(r.age_s(now_utc) or float("inf")), r.device)
    if name == "trust":
        return lambda r: (r.number("trust_version"), r.device)
    if name == "missing":
        return lambda r: (-r.number("cache", "missing"), r.device)
    if name == "outbox":
        return lambda r: (-r.number("outbox", "pending"), r.device)
    return lambda r: r.device


def summary(rows: Iterable[DeviceRow], now_utc: float, shown: int) -> str:
    """One line for the whole fleet (not only the rows a filter kept)."""
    every = list(rows)
    total = len(every)
    reachable = sum(1 for r in every if r.reachable(now_utc))
    playing = sum(1 for r in every if r.online and (r.state or {}).get("state") == "playing")
    failing = sum(1 for r in every if r.failing)
    versions = [r.number("trust_version") for r in every if r.online]
    newest = max(versions, default=0)
    stale = sum(1 for v in versions if v < newest)
    missing = sum(1 for r in every if r.number("cache", "missing") > 0)
    pending = sum(1 for r in every if r.number("outbox", "pending") > 0)
    line = (
        f"{total} device{'' if total == 1 else 's'}: {reachable} online, "
        f"{total - reachable} offline or unknown, {playing} playing, {failing} failing, "
        f"{stale} below trust {newest}, {missing} missing media, {pending} with pending events"
    )
    return line if shown == total else f"{line} ({shown} shown)"


def format_fleet(
    rows: Mapping[str, DeviceRow],
    now_utc: float,
    *,
    filters: Filters | None = None,
    sort: str = "device",
    limit: int | None = None,
) -> str:
    """The table (filtered, sorted, at most ``limit`` rows) and a summary line."""
    kept = [r for r in rows.values() if filters is None or filters.keep(r, now_utc)]
    kept.sort(key=_sort_key(sort, now_utc))
    shown = kept if limit is None else kept[:limit]
    cells = [COLUMNS] + [fleet_row(row, now_utc) for row in shown]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in cells
    ]
    if len(shown) < len(kept):
        lines.append(f"... {len(kept) - len(shown)} more (raise --limit)")
    if any(len(line[-1]) > 1 and line[-1].endswith("?") for line in cells[1:]):
        lines.append("(an age ending in ? comes from a device whose clock is not synchronised)")
    lines.append(summary(rows.values(), now_utc, len(kept)))
    return "\n".join(lines)
