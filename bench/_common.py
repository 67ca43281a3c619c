"""Helpers shared by ``bench/sync_start.py``, ``bench/junk.py`` and ``bench/footprint.py``.

Not a benchmark (the leading underscore keeps ``python -m bench`` from running it). It holds what
the three have in common: daemon configs with a device id of their own, an MQTT client that
stamps arrivals with ``time.monotonic()``, readers for ``/proc/<pid>/{status,stat}``, the
daemon's JSON log, and small statistics. ``bench/latency.py`` predates it and keeps its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import paho.mqtt.client as mqtt

from tests.broker import MosquittoBroker, Received, Subscriber
from tests.e2e.daemon import DEVICE, Daemon, write_config

PREFIX = "loa/v1"
Json = dict[str, Any]


class BenchError(RuntimeError):
    """The benchmark could not measure: a command refused, an event missing, a process dead."""


# --- config --------------------------------------------------------------------------------


def bench_config(
    path: Path,
    *,
    device_id: str = DEVICE,
    edits: Sequence[tuple[str, str]] = (),
    append: str = "",
    **kwargs: Any,
) -> Path:
    """``tests/e2e/daemon.py``'s config for ``device_id``, with ``edits`` applied (each once).

    ``edits`` are (template line, bench line) pairs; a template line that is no longer there
    exactly once is an error, so a changed template cannot silently change what is measured.
    ``append`` is YAML added at the end (a top-level section the template does not have).
    """
    write_config(path, **kwargs)
    text = path.read_text(encoding="utf-8")
    for old, new in ((f"device_id: {DEVICE}\n", f"device_id: {device_id}\n"), *edits):
        if text.count(old) != 1:
            raise BenchError(f"tests/e2e/daemon.py's config no longer has {old.strip()!r}")
        text = text.replace(old, new)
    if append:
        top = append.split(":", 1)[0]
        if f"\n{top}:" in f"\n{text}":
            raise BenchError(f"tests/e2e/daemon.py's config has a {top!r} section now")
        text = text.rstrip("\n") + "\n" + append
    path.write_text(text, encoding="utf-8")
    return path


def rfc3339_ms(ms: int) -> str:
    """An exact RFC 3339 UTC time for an integer number of milliseconds since the epoch.

    (``receiver.signing.rfc3339`` truncates a float, which can lose a millisecond to rounding;
    a benchmark that compares against the instant it asked for needs the exact one.)
    """
    whole = datetime.fromtimestamp(ms // 1000, UTC)
    return f"{whole:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def wall_minus_mono(samples: int = 9) -> float:
    """``time.time() - time.monotonic()`` now, from the tightest of a few bracketed readings."""
    best: tuple[float, float] | None = None
    for _ in range(samples):
        before = time.monotonic()
        wall = time.time()
        after = time.monotonic()
        width = after - before
        if best is None or width < best[0]:
            best = (width, wall - (before + after) / 2.0)
    assert best is not None
    return best[1]


# --- MQTT ----------------------------------------------------------------------------------


class TimedClient(Subscriber):
    """``tests.broker.Subscriber`` that stamps each arrival with ``time.monotonic()``.

    The stamp is taken first thing in paho's callback. Arrivals go to :attr:`arrivals` (not to the
    base class's ``messages``/``seen``, which would grow without bound in a long run). Nagle's
    algorithm is turned off on our socket so our own client adds no stall to what is timed.
    """

    def __init__(
        self,
        broker: MosquittoBroker,
        topics: Sequence[str],
        *,
        timeout_s: float = 15.0,
        keep_all: bool = False,
    ) -> None:
        """``keep_all``: also append every arrival to :attr:`kept` (never consumed)."""
        super().__init__(
            broker, topics, client_id=f"bench-{uuid.uuid4().hex[:10]}", timeout_s=timeout_s
        )
        self.arrivals: queue.Queue[tuple[float, Received]] = queue.Queue()
        self.keep_all = keep_all
        self.kept: list[tuple[float, Received]] = []

    def start(self) -> Self:
        super().start()
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        at = time.monotonic()
        received = Received(
            topic=message.topic,
            payload=bytes(message.payload),
            retain=bool(message.retain),
            qos=message.qos,
        )
        self.arrivals.put((at, received))
        if self.keep_all:
            self.kept.append((at, received))

    def next_matching(
        self, predicate: Callable[[Received], bool], what: str, timeout_s: float | None = None
    ) -> tuple[float, Received]:
        """Arrival time and message of the next one that satisfies ``predicate``."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                at, message = self.arrivals.get(timeout=remaining)
            except queue.Empty:
                break
            if predicate(message):
                return at, message
        raise BenchError(f"no {what} within {limit:g} s")

    def wait_all(
        self,
        predicates: dict[str, Callable[[Received], bool]],
        what: str,
        timeout_s: float | None = None,
    ) -> dict[str, float]:
        """Consume arrivals until each predicate has matched once; the arrival time of each.

        Unlike calling :meth:`next_matching` once per predicate, a message that one predicate
        is waiting for is not thrown away while another one is being waited for.
        """
        found = self.wait_sequences({k: [p] for k, p in predicates.items()}, what, timeout_s)
        return {name: times[0] for name, times in found.items()}

    def wait_sequences(
        self,
        sequences: dict[str, Sequence[Callable[[Received], bool]]],
        what: str,
        timeout_s: float | None = None,
    ) -> dict[str, list[float]]:
        """Like :meth:`wait_all`, for per-name sequences that must match in their order.

        A message is offered to each name's next unmatched predicate only, so a later step
        (say, "idle again") cannot match a message that came before an earlier one ("finished").
        """
        limit = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        found: dict[str, list[float]] = {name: [] for name in sequences}

        def pending() -> list[str]:
            return [n for n, preds in sequences.items() if len(found[n]) < len(preds)]

        while pending():
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise queue.Empty
                at, message = self.arrivals.get(timeout=remaining)
            except queue.Empty:
                missing = ", ".join(f"{n} (step {len(found[n]) + 1})" for n in pending())
                raise BenchError(f"no {what} within {limit:g} s from: {missing}") from None
            for name in pending():
                if sequences[name][len(found[name])](message):
                    found[name].append(at)
        return found

    def drain(self) -> list[tuple[float, Received]]:
        """Everything that arrived and was not consumed yet."""
        out: list[tuple[float, Received]] = []
        while True:
            try:
                out.append(self.arrivals.get_nowait())
            except queue.Empty:
                return out


def as_json(message: Received) -> Json:
    try:
        value = json.loads(message.payload)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def is_online(topic: str) -> Callable[[Received], bool]:
    return lambda m: m.topic == topic and as_json(m).get("online") is True


def event_for(ref: str, kind: str, events_topic: str) -> Callable[[Received], bool]:
    """Matches ``kind`` for ``ref`` on ``events_topic``; raises on an outcome that rules it out."""

    def matches(message: Received) -> bool:
        if message.topic != events_topic:
            return False
        event = as_json(message)
        if event.get("kind") == "rejected" and event.get("ref") == ref:
            raise BenchError(
                f"{events_topic}: {ref} rejected: {event.get('reason')} {event.get('detail')}"
            )
        if event.get("ref") != ref:
            return False
        if event.get("kind") in ("failed", "stopped", "preempted") and kind != event.get("kind"):
            raise BenchError(f"{events_topic}: {ref} {event['kind']}: {event.get('reason')}")
        return bool(event.get("kind") == kind)

    return matches


# --- the daemon's log ----------------------------------------------------------------------


def log_lines(daemon: Daemon, mark: int, predicate: Callable[[Json], bool]) -> list[dict[str, Any]]:
    """The daemon's JSON log lines from index ``mark`` on that satisfy ``predicate``."""
    return [line for line in daemon.lines[mark:] if predicate(line)]


def wait_log(
    daemon: Daemon, mark: int, predicate: Callable[[Json], bool], what: str, timeout_s: float = 5.0
) -> dict[str, Any]:
    """The first log line from ``mark`` on that satisfies ``predicate`` (the pipe may trail)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = log_lines(daemon, mark, predicate)
        if found:
            return found[0]
        if time.monotonic() > deadline:
            tail = "".join(daemon.raw[-15:]) or "(nothing)\n"
            raise BenchError(f"no {what} in the daemon's log; its last lines:\n{tail}")
        time.sleep(0.01)


def mono_of(line: Json) -> float:
    value = line.get("mono")
    if not isinstance(value, int | float):
        raise BenchError(f"log line without a mono stamp: {line!r}")
    return float(value)


def stop_all(daemons: Sequence[Daemon], timeout_s: float = 15.0) -> None:
    """SIGTERM to every daemon first, then wait for each (killing one that does not stop)."""
    for daemon in daemons:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.send_signal(signal.SIGTERM)
    for daemon in daemons:
        if daemon.process is None:
            continue
        try:
            daemon.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            daemon.kill()


def log_mono(line: Json, offset: float) -> float:
    """When a log line was written, in monotonic time: its ``mono`` field if it has one, else
    its wall-clock ``timestamp`` minus ``offset`` (:func:`wall_minus_mono`, read by the caller).
    """
    if isinstance(line.get("mono"), int | float):
        return float(line["mono"])
    stamp = line.get("timestamp")
    if not isinstance(stamp, str):
        raise BenchError(f"log line without a time: {line!r}")
    return datetime.fromisoformat(stamp).timestamp() - offset


def pid_of(daemon: Daemon) -> int:
    if daemon.process is None or daemon.process.poll() is not None:
        raise BenchError("the daemon is not running:\n" + "".join(daemon.raw[-15:]))
    return daemon.process.pid


# --- /proc ---------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcSample:
    """One reading of a process: when, resident memory and its peak (KiB), CPU seconds."""

    mono: float
    rss_kib: int
    hwm_kib: int
    cpu_s: float


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {field}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may contain spaces and ')'
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of proc(5)


def sample(pid: int) -> ProcSample:
    return ProcSample(
        time.monotonic(),
        proc_status_kib(pid, "VmRSS"),
        proc_status_kib(pid, "VmHWM"),
        cpu_seconds(pid),
    )


class Sampler:
    """Samples some processes every ``period_s`` on a thread of its own, until stopped."""

    def __init__(self, pids: dict[str, int], period_s: float = 1.0) -> None:
        self.pids = pids
        self.period_s = period_s
        self.samples: dict[str, list[ProcSample]] = {name: [] for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Self:
        self._take()
        self._thread.start()
        return self

    def stop(self) -> dict[str, list[ProcSample]]:
        self._stop.set()
        self._thread.join()
        self._take()
        return self.samples

    def _take(self) -> None:
        for name, pid in self.pids.items():
            # A process that ended: its series stops here, and the report says so.
            with contextlib.suppress(OSError, BenchError, ValueError):
                self.samples[name].append(sample(pid))

    def _run(self) -> None:
        next_at = time.monotonic() + self.period_s
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            self._take()
            next_at += self.period_s


# --- statistics ----------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def worst(values: Sequence[float]) -> float:
    """The value farthest from zero, with its sign."""
    return max(values, key=abs) if values else float("nan")


def ratio(value: float, floor: float) -> float:
    return value / floor if floor > 0 else float("nan")
