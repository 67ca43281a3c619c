"""Helpers shared by the benchmarks in ``bench/``.

Not a benchmark (the leading underscore keeps ``python -m bench`` from running it). It holds what
they have in common: the lab (a real Mosquitto, a media server with one tone, an operator key,
signed commands), daemon configs with a device id of their own and their startup, an MQTT client
that stamps arrivals with ``time.monotonic()``, an in-process libVLC player timed the same way,
readers for ``/proc/<pid>/{status,stat}``, the daemon's JSON log, small statistics, and the
command-line frame every benchmark's ``main()`` runs in.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from receiver.central.signing import SigningKey, command_payload, sign_command
from receiver.config_model import PlayerConfig
from receiver.core.events import Event, PlaybackEnded, PlaybackStarted
from receiver.player import Player
from tests.lab.audio import write_tone
from tests.lab.broker import MosquittoBroker, Received, Subscriber, report_json
from tests.lab.daemon import DEVICE, GROUP, Daemon, write_config
from tests.lab.stations import HlsStation, IcecastStation
from tests.lab.tools import MissingToolError
from tests.lab.web import MediaServer

PREFIX = "loa/v1"
Json = dict[str, Any]


def dev_topic(device: str, leaf: str) -> str:
    """A device's topic: ``leaf`` is ``cmd``, ``events`` or ``state``."""
    return f"{PREFIX}/dev/{device}/{leaf}"


CMD_TOPIC = dev_topic(DEVICE, "cmd")
EVENTS_TOPIC = dev_topic(DEVICE, "events")
STATE_TOPIC = dev_topic(DEVICE, "state")
GROUP_TOPIC = f"{PREFIX}/grp/{GROUP}/cmd"


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
    """``tests/lab/daemon.py``'s config for ``device_id``, with ``edits`` applied (each once).

    ``edits`` are (template line, bench line) pairs; a template line that is no longer there
    exactly once is an error, so a changed template cannot silently change what is measured.
    ``append`` is YAML added at the end (a top-level section the template does not have).
    """
    write_config(path, **kwargs)
    text = path.read_text(encoding="utf-8")
    for old, new in ((f"device_id: {DEVICE}\n", f"device_id: {device_id}\n"), *edits):
        if text.count(old) != 1:
            raise BenchError(f"tests/lab/daemon.py's config no longer has {old.strip()!r}")
        text = text.replace(old, new)
    if append:
        top = append.split(":", 1)[0]
        if f"\n{top}:" in f"\n{text}":
            raise BenchError(f"tests/lab/daemon.py's config has a {top!r} section now")
        text = text.rstrip("\n") + "\n" + append
    path.write_text(text, encoding="utf-8")
    return path


def rfc3339_ms(ms: int) -> str:
    """An exact RFC 3339 UTC time for an integer number of milliseconds since the epoch.

    (``receiver.timefmt.rfc3339`` truncates a float, which can lose a millisecond to rounding;
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
    """``tests.lab.broker.Subscriber`` that stamps each arrival with ``time.monotonic()``.

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
        """Connect, and turn Nagle's algorithm off on our socket (paho leaves it on).

        Without this our own client would be part of what is measured: a command published a
        few milliseconds after we acknowledged a message (our PUBACK not yet ACKed by the
        broker's delayed ACK) is held back by Nagle for up to 40 ms.
        """
        super().start()
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        at = time.monotonic()
        raw = bytes(message.payload)
        received = Received(
            topic=message.topic,
            payload=report_json(raw),  # a device's report, out of its signed envelope
            retain=bool(message.retain),
            qos=message.qos,
            raw=raw,
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


def paho_client(tag: str) -> mqtt.Client:
    """A plain paho client (MQTT 5, callback API 2) with a client id of its own."""
    return mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"{tag}-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )


def as_json(message: Received) -> Json:
    try:
        value = json.loads(message.payload)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def is_online(topic: str) -> Callable[[Received], bool]:
    return lambda m: m.topic == topic and as_json(m).get("online") is True


def is_idle(topic: str) -> Callable[[Received], bool]:
    """A state on ``topic`` that says idle with the relay off (the relay tail has run out)."""
    return lambda m: (
        m.topic == topic
        and as_json(m).get("relays") == {"amp": "off"}
        and as_json(m).get("state") == "idle"
    )


def event_for(
    ref: str, kind: str, events_topic: str, *, unreferenced: bool = False
) -> Callable[[Received], bool]:
    """Matches ``kind`` for ``ref`` on ``events_topic``; raises on an outcome that rules it out.

    ``unreferenced``: a rejection that names no ref at all rules it out too (when nobody but the
    benchmark sends commands, that rejection can only be of the one it waits for).
    """
    refs = (ref, None) if unreferenced else (ref,)

    def matches(message: Received) -> bool:
        if message.topic != events_topic:
            return False
        event = as_json(message)
        if event.get("kind") == "rejected" and event.get("ref") in refs:
            raise BenchError(
                f"{events_topic}: {ref} rejected: {event.get('reason')} {event.get('detail')}"
            )
        if event.get("ref") != ref:
            return False
        if event.get("kind") in ("failed", "stopped", "preempted") and kind != event.get("kind"):
            raise BenchError(f"{events_topic}: {ref} {event['kind']}: {event.get('reason')}")
        return bool(event.get("kind") == kind)

    return matches


def wait_online(
    client: TimedClient, devices: Sequence[str] = (DEVICE,), timeout_s: float = 60.0
) -> None:
    """Until each device's state says ``online``."""
    client.wait_all(
        {d: is_online(dev_topic(d, "state")) for d in devices}, "online state", timeout_s=timeout_s
    )


# --- the lab: broker, media, an operator key, daemons --------------------------------------


@dataclass
class Lab:
    """A real Mosquitto, a media server with one tone on it, and an operator key, in ``root``."""

    root: Path
    broker: MosquittoBroker
    media: MediaServer
    operator: SigningKey
    tone: Path
    sha256: str
    size: int
    next_seq: int = 0

    def cached(self, home: Path) -> Path:
        """Where a daemon whose config was written in ``home`` caches the tone."""
        return home / "cache" / self.sha256

    def daemon_config(
        self,
        home: Path,
        *,
        device_id: str = DEVICE,
        edits: Sequence[tuple[str, str]] = (),
        append: str = "",
        wav_name: str = "out.wav",
        more_keys: Sequence[tuple[SigningKey, list[str], list[str]]] = (),
    ) -> Path:
        """:func:`bench_config` in ``home``: this lab's broker, media and key (and ``more_keys``:
        key, roles, scopes); state, cache and WAV output in ``home`` too."""
        return bench_config(
            home / "receiver.yaml",
            device_id=device_id,
            edits=edits,
            append=append,
            broker_port=self.broker.port,
            media_port=self.media.port,
            keys=[(self.operator, ["operator"], [GROUP]), *more_keys],
            wav=home / wav_name,
            state_dir=home / "state",
            cache_dir=home / "cache",
        )

    def play_body(self, title: str, max_duration_s: int, **extra: Any) -> Json:
        """A normal-priority ``play`` of the tone; ``extra`` goes in the body (``start_at``)."""
        entry = {
            "url": self.media.url(self.tone.name),
            "sha256": self.sha256,
            "size": self.size,
            "title": title,
        }
        return {
            "priority": "normal",
            "source": {"files": [entry]},
            **extra,
            "max_duration_s": max_duration_s,
        }

    def signed(self, kind: str, body: Json, ref: str, aud: str) -> bytes:
        """A command signed by the operator, with a seq above every one sent before."""
        self.next_seq = max(self.next_seq + 1, int(time.time() * 1000))
        payload = command_payload(
            kind, body, env="lab", aud=[aud], message_id=ref, seq=self.next_seq
        )
        return sign_command(payload, [self.operator])


@contextmanager
def open_lab(root: Path, *, tone_name: str, tone_s: float, key_id: str) -> Iterator[Lab]:
    """The broker and the media server started (a 440 Hz tone of ``tone_s``); stopped after."""
    with ExitStack() as stack:
        broker = MosquittoBroker(root / "broker")
        broker.start()
        stack.callback(broker.stop)
        media_dir = root / "media"
        media_dir.mkdir()
        tone = write_tone(media_dir / tone_name, 440.0, tone_s)
        data = tone.read_bytes()
        media = MediaServer(media_dir)
        stack.callback(media.close)
        operator = SigningKey.generate(key_id)
        yield Lab(root, broker, media, operator, tone, hashlib.sha256(data).hexdigest(), len(data))


def open_stations(
    stack: ExitStack, root: Path, lab: Lab
) -> tuple[IcecastStation, HlsStation, tuple[str, str]]:
    """An Icecast station (440 Hz) and an HLS one (1 kHz), closed by ``stack``, and the edit of
    :meth:`Lab.daemon_config` that adds both to the media allowlist."""
    icecast = IcecastStation(root, 440.0)
    stack.callback(icecast.close)
    hls = HlsStation(root, 1000.0)
    stack.callback(hls.close)
    hosts = f'"127.0.0.1:{lab.media.port}", "127.0.0.1:{icecast.port}", '
    hosts += f'"127.0.0.1:{hls.web.port}"'
    allowlist = (
        f'  allowed_hosts: ["127.0.0.1:{lab.media.port}"]\n',
        f"  allowed_hosts: [{hosts}]\n",
    )
    return icecast, hls, allowlist


def start_daemons(stack: ExitStack, configs: Sequence[Path]) -> list[Daemon]:
    """One daemon per config; ``stack`` stops them all (SIGTERM first, see :func:`stop_all`)."""
    daemons: list[Daemon] = []
    stack.callback(_kill_all, daemons)
    stack.callback(stop_all, daemons)
    for config in configs:
        daemons.append(Daemon(config).start())
    return daemons


def _kill_all(daemons: Sequence[Daemon]) -> None:
    for daemon in daemons:
        daemon.kill()


def log_tail(daemon: Daemon, lines: int) -> str:
    return "".join(daemon.raw[-lines:]) or "(nothing)\n"


@contextmanager
def explained_by_logs(daemons: Mapping[str, Daemon], lines: int) -> Iterator[None]:
    """A :class:`BenchError` from within gets the daemons' last log lines added to its message."""
    try:
        yield
    except BenchError as exc:
        if len(daemons) == 1:
            (daemon,) = daemons.values()
            tails = f"the daemon's last log lines:\n{log_tail(daemon, lines)}"
        else:
            tails = "the daemons' last log lines:\n" + "".join(
                f"--- {name} ---\n{log_tail(daemon, lines)}" for name, daemon in daemons.items()
            )
        raise BenchError(f"{exc}\n{tails}") from exc


# --- an in-process player ------------------------------------------------------------------


class PlayerEvents:
    """``Player``'s ``on_event``: each event with the ``time.monotonic()`` it was reported at."""

    def __init__(self, timeout_s: float) -> None:
        self.queue: queue.Queue[tuple[float, Event]] = queue.Queue()
        self.timeout_s = timeout_s

    def __call__(self, event: Event) -> None:
        self.queue.put((time.monotonic(), event))

    def next_for(self, token: int) -> tuple[float, Event]:
        deadline = time.monotonic() + self.timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                at, event = self.queue.get(timeout=remaining)
            except queue.Empty:
                break
            if getattr(event, "token", None) == token:
                return at, event
        raise BenchError(f"libVLC reported nothing for item {token} within {self.timeout_s:g} s")


class TimedPlayer:
    """``receiver.player.Player`` in this process, output ``file`` as the daemons' (afile,
    volume 100), writing to ``wav``: the libVLC floor."""

    def __init__(self, wav: Path, timeout_s: float) -> None:
        self.events = PlayerEvents(timeout_s)
        self.player = Player(
            PlayerConfig(output="file", wav_file=wav, default_volume=100), self.events
        )
        self.next_token = 1

    def start_s(self, path: Path, *, prerolled_s: float = 0.0) -> float:
        """Seconds from ``Player.play()`` of ``path`` to ``PlaybackStarted``; waits for its end.

        With ``prerolled_s``, the file is first opened paused (``Player.preroll``) that long
        before the ``play()``, as the daemon does for a start at an instant: the figure is
        then libVLC resuming it.
        """
        token = self.next_token
        self.next_token += 1
        if prerolled_s > 0:
            self.player.preroll(token, str(path), 100)
            time.sleep(prerolled_s)
        start = time.monotonic()
        self.player.play(token, str(path), 100)
        at, event = self.events.next_for(token)
        if not isinstance(event, PlaybackStarted):
            raise BenchError(f"libVLC did not start the file: {event!r}")
        _, end = self.events.next_for(token)
        if not isinstance(end, PlaybackEnded):
            raise BenchError(f"libVLC did not end the file normally: {end!r}")
        return at - start

    def close(self) -> None:
        self.player.close()


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
            tail = log_tail(daemon, 15)
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
    """One reading of a process: when, resident memory and its peak (KiB), CPU seconds, and its
    proportional set size (KiB: each shared page divided among the processes that map it)."""

    mono: float
    rss_kib: int
    hwm_kib: int
    cpu_s: float
    pss_kib: int = 0


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {field}")


def proc_pss_kib(pid: int) -> int:
    """``Pss`` of ``/proc/<pid>/smaps_rollup`` in KiB (0 where the kernel does not offer it)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text(encoding="ascii")
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may contain spaces and ')'
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of proc(5)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the daemon runs libVLC in a child process of its own)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                text = (task / "children").read_text(encoding="ascii")
                pending.extend(int(child) for child in text.split())
    return found


def sample(pid: int) -> ProcSample:
    """``pid`` with its descendants: RSS and CPU summed, the peak as the sum of their peaks."""
    tree = process_tree(pid)
    live = [p for p in tree if p == pid or Path(f"/proc/{p}/status").exists()]
    return ProcSample(
        time.monotonic(),
        sum(proc_status_kib(p, "VmRSS") for p in live),
        sum(proc_status_kib(p, "VmHWM") for p in live),
        sum(cpu_seconds(p) for p in live),
        sum(proc_pss_kib(p) for p in live),
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


# --- the command line ----------------------------------------------------------------------


def parser_for(name: str, doc: str | None) -> argparse.ArgumentParser:
    """``python -m bench.<name>``'s parser, described by the first paragraph of ``doc``."""
    return argparse.ArgumentParser(
        prog=f"python -m bench.{name}", description=doc.split("\n\n")[0] if doc else None
    )


def run_main(name: str, run: Callable[[Path], None], tmp_tag: str | None = None) -> int:
    """``run`` in a temporary directory (``loa-bench-<tmp_tag>-``, by default ``name``).

    0 once it measured; 1, with the reason on stderr, when it could not measure.
    """
    try:
        with tempfile.TemporaryDirectory(prefix=f"loa-bench-{tmp_tag or name}-") as tmp:
            run(Path(tmp))
    except BenchError as exc:
        print(f"{name}: could not measure: {exc}", file=sys.stderr)
        return 1
    except MissingToolError as exc:  # mosquitto is not installed
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    return 0


def load_line(before: Sequence[float], after: Sequence[float]) -> str:
    """The closing line of every report: the load averages around the run, the CPU count."""
    return (
        f"\nload average before {before[0]:.2f} {before[1]:.2f}, after {after[0]:.2f} "
        f"{after[1]:.2f}; {os.cpu_count()} CPUs; no figure here is asserted"
    )
