"""Resilience end to end: the real daemon process and the real Mosquitto, with the broker
restarted under load, the daemon stopped while commands wait for it, and the daemon killed
(SIGKILL) again and again at random moments.

What must hold, whatever happens to the processes (``docs/protocol.md``, device state and
events; ``docs/security.md``):

* a command is never acted on twice, whatever the redeliveries (QoS 1 is at least once; the
  replay floor turns a copy into "duplicate of the last accepted" or ``replayed``); with no
  daemon crash, every command the broker acknowledged is acted on exactly once;
* no event the daemon logged is lost: central eventually receives every ``n`` the daemon's log
  names. Copies of the same ``n`` are allowed (at least once): the outbox sends again, after a
  restart, what the broker had received but whose PUBACK the killed daemon never processed;
* ``n`` never goes back, also across SIGKILLs;
* the state store survives any kill (no ``store_corrupt_moved_aside``), so a replay of anything
  accepted before the kill is still refused;
* every start begins with the relay forced off, and the stop helper always succeeds.

* no command is used up in silence (docs/protocol.md §5, "After a restart"): every command
  central sent is, in some run, accepted and acted on, carried out after a restart, or reported
  ``failed`` (``interrupted``); a command killed between its floor and its action is never
  answered only "duplicate of the last accepted".

Also measured and printed: what became of the command of each kill phase that the killed daemon
never answered (see :meth:`KillLoop.retry_unanswered`).

The kill loop is random but seeded: the seed is printed, and ``RESILIENCE_SEED=<seed>`` repeats
the same choices (the timing of three processes is not reproducible to the millisecond, the
choices and the delays are). ``RESILIENCE_KILLS=<n>`` sets the number of SIGKILLs (12 by default,
about 20 s, for the quick verdict of ``make test``: the first four kills go one to each kind of
moment, the rest are drawn; ``make soak``, which CI runs after ``make test``, runs 120).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from receiver.central.signing import SigningKey, command_payload, sign_command
from tests.e2e.conftest import Site
from tests.e2e.test_daemon import play_payload, wait_event, wait_online, wait_relay_switches
from tests.lab.audio import dominant_of, read_wav, trim_silence, write_tone
from tests.lab.broker import MosquittoBroker, Subscriber
from tests.lab.daemon import DEVICE, GROUP, Daemon, write_config
from tests.lab.web import LabServer, QuietHandler

Json = dict[str, Any]

EVENT_KINDS: Final = frozenset(
    {"accepted", "rejected", "started", "finished", "stopped", "preempted", "failed", "fault"}
)
ENDED_KINDS: Final = frozenset({"finished", "stopped", "preempted", "failed"})
DUPLICATE: Final = "duplicate of the last accepted"
CARRIED_OUT: Final = "carried out after a restart"  # the detail ends with it
CMD_TOPIC: Final = f"loa/v1/dev/{DEVICE}/cmd"
EVENTS_TOPIC: Final = f"loa/v1/dev/{DEVICE}/events"
STATE_TOPIC: Final = f"loa/v1/dev/{DEVICE}/state"
RELAY_OFF_OUTPUT: Final = "switched off"


# --- helpers ---------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def logged_events(lines: list[Json]) -> list[Json]:
    """The daemon's log lines that report an event (each carries the event's ``n``)."""
    return [line for line in lines if line.get("event") in EVENT_KINDS and "n" in line]


def first_accepts(lines: list[Json]) -> list[Json]:
    """``accepted`` lines that acted (not an acknowledged QoS 1 duplicate)."""
    return [
        line
        for line in lines
        if line.get("event") == "accepted" and line.get("detail") != DUPLICATE
    ]


def _carried_out(line: Json) -> bool:
    """An ``accepted`` line for a command a killed run had accepted: not a second acceptance."""
    return line.get("event") == "accepted" and str(line.get("detail", "")).endswith(CARRIED_OUT)


def _interrupted(line: Json) -> bool:
    return line.get("event") == "failed" and line.get("reason") == "interrupted"


def received_events(sub: Subscriber) -> list[Json]:
    """Every event the subscriber received, in arrival order, copies included."""
    return [json.loads(m.payload) for m in list(sub.seen) if m.topic.endswith("/events")]


def settle_output(daemon: Daemon, timeout: float = 2.0) -> None:
    """After the process ended: wait until its last log lines are parsed (pipe at EOF)."""
    process = daemon.process
    assert process is not None
    stdout = process.stdout
    if stdout is None:
        return
    deadline = time.monotonic() + timeout
    count, quiet_since = -1, time.monotonic()
    while not stdout.closed and time.monotonic() < deadline:
        if len(daemon.raw) != count:
            count, quiet_since = len(daemon.raw), time.monotonic()
        elif time.monotonic() - quiet_since > 0.2:
            return  # nothing more for a while: the reader is at EOF
        time.sleep(0.005)


def outbox_numbers(path: Path) -> set[int] | None:
    """The ``n`` of the events in the daemon's outbox file, read-only (None: unreadable)."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            return {int(n) for (n,) in db.execute("SELECT n FROM events")}
    except sqlite3.Error:
        return None


def relay_off(config: Path) -> subprocess.CompletedProcess[str]:
    """The systemd stop helper, exactly as ``ExecStopPost=`` runs it."""
    return subprocess.run(
        [sys.executable, "-m", "receiver.cli", "relay-off", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def check_boot(lines: list[Json], where: str) -> None:
    """The store and outbox opened cleanly, and the relay was forced off before anything else."""
    names = [line.get("event") for line in lines]
    assert "daemon_started" in names, f"{where}: no daemon_started"
    for bad in ("store_corrupt_moved_aside", "outbox_corrupt_moved_aside", "daemon_failed"):
        assert bad not in names, f"{where}: {bad}"
    relay = [line for line in lines if line.get("event") == "relay_switched"]
    assert relay, f"{where}: no relay_switched"
    assert relay[0]["on"] is False, f"{where}: the first relay switch was {relay[0]}"
    assert names.index("relay_switched") < names.index("daemon_started"), where


class Publisher:
    """Central's command side: a persistent-session MQTT 5 client whose QoS 1 publishes do not
    wait, so a stream keeps going while the broker is away (paho queues and resends them);
    ``acknowledged`` tells which ones the broker has PUBACKed."""

    def __init__(self, broker: MosquittoBroker, client_id: str) -> None:
        self.broker = broker
        self.sent: list[tuple[str, int]] = []  # (ref, mid)
        self._acked: set[int] = set()  # mids the broker PUBACKed
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=1)
        self._client.max_queued_messages_set(0)  # unbounded: nothing is dropped while away
        self._client.on_connect = self._on_connect
        self._client.on_publish = self._on_publish

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not reason_code.is_failure:
            self._connected.set()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        if not reason_code.is_failure:
            self._acked.add(mid)

    def __enter__(self) -> Self:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 600
        self._client.connect(
            self.broker.host, self.broker.port, keepalive=30, clean_start=False,
            properties=properties,
        )  # fmt: skip
        self._client.loop_start()
        if not self._connected.wait(5):
            self._close()
            raise AssertionError("the publisher could not connect")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    def _close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self._client.loop_stop()

    def publish(self, ref: str, payload: bytes) -> None:
        # paho gives the message its mid now, keeps it while the broker is away and sends it
        # again after the reconnect with the same mid, so the PUBACK matches this entry.
        with self._lock:
            info = self._client.publish(CMD_TOPIC, payload, qos=1)
            self.sent.append((ref, info.mid))

    def acknowledged(self) -> list[str]:
        with self._lock:
            return [ref for ref, mid in self.sent if mid in self._acked]


# --- 1. the broker restarts while commands and events are in flight --------------------------


def test_a_broker_restart_in_the_middle_of_a_command_stream_loses_and_doubles_nothing(
    site: Site, start_daemon: Callable[[], Daemon]
) -> None:
    central = Subscriber(
        site.broker, [site.events_topic, site.state_topic], client_id="central-events",
        persistent=True,
    )  # fmt: skip
    with central, Publisher(site.broker, "central-commands") as publisher:
        daemon = start_daemon()
        wait_online(central, site)
        seq = int(time.time() * 1000)
        # The tone is fetched once, so that the plays of the stream come from the cache.
        central.publish(
            site.cmd_topic,
            sign_command(play_payload(site, "tone1000.wav", message_id="prime", seq=seq),
                         [site.operator]),
        )  # fmt: skip
        wait_event(central, site, "finished", "prime")

        plays: list[str] = []

        def stream() -> None:
            for i in range(36):
                if i % 6 == 5:
                    ref = f"p{i:02d}"
                    plays.append(ref)
                    payload = play_payload(site, "tone1000.wav", message_id=ref, seq=seq + 1 + i)
                else:
                    ref = f"v{i:02d}"
                    payload = command_payload(
                        "volume", {"level": 20 + i}, env="lab", aud=[f"dev:{DEVICE}"],
                        message_id=ref, seq=seq + 1 + i,
                    )  # fmt: skip
                publisher.publish(ref, sign_command(payload, [site.operator]))
                time.sleep(0.08)

        sender = threading.Thread(target=stream, name="command-stream")
        sender.start()
        time.sleep(0.8)  # a dozen commands in, the first short play sounding
        site.broker.stop()  # SIGTERM: Mosquitto saves sessions and queued messages
        time.sleep(1.0)  # the stream goes on into the publisher's queue; events into the outbox
        site.broker.start()
        sender.join()
        refs = [ref for ref, _mid in publisher.sent]
        wait_until(
            lambda: len(publisher.acknowledged()) == len(refs), 20,
            "the broker's PUBACK for every command",
        )  # fmt: skip
        acked = publisher.acknowledged()
        for ref in acked:
            daemon.wait_log(
                lambda line, r=ref: line.get("event") == "accepted" and line.get("ref") == r,  # type: ignore[misc]
                timeout=20,
            )
        for ref in plays:
            daemon.wait_log(
                lambda line, r=ref: line.get("event") in ENDED_KINDS and line.get("ref") == r,  # type: ignore[misc]
                timeout=30,
            )
        logged = {line["n"]: line for line in logged_events(daemon.lines)}

        def all_logged_received() -> bool:
            return set(logged) <= {e["n"] for e in received_events(central)}

        wait_until(all_logged_received, 30, "every logged event on the events topic")
        assert daemon.stop() == 0

    lines = daemon.lines
    # The broker really went away and the daemon really came back.
    assert len(daemon.logged("broker_disconnected")) >= 1
    assert len(daemon.logged("broker_connected")) >= 2
    reconnects = [line for line in lines if line.get("event") == "mqtt_connected"][1:]
    assert all(line["session_present"] is True for line in reconnects), reconnects

    # Every acknowledged command acted exactly once; copies were only ever refused or re-acked.
    assert sorted(acked) == sorted(refs)
    acted = Counter(line["ref"] for line in first_accepts(lines))
    assert {ref: acted[ref] for ref in acked} == dict.fromkeys(acked, 1)
    redelivered = [
        line
        for line in lines
        if line.get("ref") in acted
        and (
            (line.get("event") == "accepted" and line.get("detail") == DUPLICATE)
            or line.get("event") == "rejected"
        )
    ]
    assert all(
        line.get("event") == "accepted" or line.get("reason") == "replayed" for line in redelivered
    ), redelivered
    assert not [line for line in lines if line.get("event") in ("rejected", "failed", "fault")
                and line not in redelivered]  # fmt: skip

    # No play sounded twice, each one finished.
    started = Counter(line["ref"] for line in lines if line.get("event") == "started")
    finished = Counter(line["ref"] for line in lines if line.get("event") == "finished")
    for ref in plays:
        assert (started[ref], finished[ref]) == (1, 1), ref

    # The events topic: n strictly increasing in order of first arrival; a copy (QoS 1 resent
    # after the reconnect) is byte for byte the same event; no logged n is missing.
    seen = received_events(central)
    by_n: dict[int, Json] = {}
    order: list[int] = []
    copies: list[int] = []
    for event in seen:
        n = event["n"]
        if n in by_n:
            copies.append(n)
            assert event == by_n[n], f"two different events numbered {n}"
        else:
            by_n[n] = event
            order.append(n)
    assert order == sorted(order), f"events out of order: {order}"
    assert set(logged) <= set(by_n), sorted(set(logged) - set(by_n))
    for n, line in logged.items():
        assert (by_n[n]["kind"], by_n[n].get("ref")) == (line["event"], line.get("ref")), n
    accepted_on_topic = Counter(
        e["ref"] for e in by_n.values() if e["kind"] == "accepted" and e.get("detail") != DUPLICATE
    )
    assert {ref: accepted_on_topic[ref] for ref in acked} == dict.fromkeys(acked, 1)
    print(
        f"broker restart: {len(refs)} commands ({len(plays)} plays), {len(logged)} events logged, "
        f"{len(seen)} received, copies of the same n: {sorted(copies) or 'none'}, "
        f"commands redelivered to the daemon: {len(redelivered)}"
    )


# --- 2. commands that waited for the daemon on the broker ------------------------------------


def test_a_command_queued_while_the_daemon_was_stopped_plays_and_an_expired_one_is_refused(
    site: Site, start_daemon: Callable[[], Daemon]
) -> None:
    # receiver-admin would also set an MQTT message expiry, and the broker would then drop the
    # short-lived command itself. Signed here and published raw, the command has none: the
    # broker delivers it, and what is tested is the device's own check of ``exp``.
    central = Subscriber(
        site.broker, [site.events_topic, site.state_topic], client_id="central-queued",
        persistent=True,
    )  # fmt: skip
    with central:
        first = start_daemon()
        wait_online(central, site)  # subscribed: the broker now keeps a session for it
        assert first.stop() == 0  # SIGTERM: a clean DISCONNECT, the session stays (expiry 7 d)

        seq = int(time.time() * 1000)
        short = play_payload(site, "tone1000.wav", message_id="short-lived", seq=seq, ttl_s=1.0)
        kept = play_payload(site, "tone440.wav", message_id="kept", seq=seq + 1)
        central.publish(site.cmd_topic, sign_command(short, [site.operator]))
        central.publish(site.cmd_topic, sign_command(kept, [site.operator]))
        time.sleep(1.5)  # the short-lived one is past its exp when the daemon is back

        second = start_daemon()
        rejected = wait_event(central, site, "rejected", "short-lived")
        assert rejected["reason"] == "expired"
        wait_event(central, site, "accepted", "kept")
        wait_event(central, site, "started", "kept")
        wait_event(central, site, "finished", "kept")
        wait_relay_switches(second, 3)
        assert second.stop() == 0

    connected = second.logged("mqtt_connected")
    assert connected and connected[0]["session_present"] is True  # delivered from the session
    assert [line["ref"] for line in second.logged("started")] == ["kept"]
    assert [line["ref"] for line in first_accepts(second.lines)] == ["kept"]
    # What came out of the amplifier: the 1.5 s tone of 440 Hz only, never the 1000 Hz one.
    sound = read_wav(site.wav)
    assert 1.3 < sound.duration_s < 1.8
    assert dominant_of(trim_silence(sound.samples), sound.rate, (440.0, 1000.0)) == 440.0
    assert [line["on"] for line in second.logged("relay_switched")] == [False, True, False, False]


# --- 3. SIGKILL, again and again ---------------------------------------------------------------


class Trickle:
    """Counts the slow downloads: in progress, finished, and cut off by the client."""

    def __init__(self, chunk: int, pause_s: float) -> None:
        self.chunk = chunk
        self.pause_s = pause_s
        self.active = 0
        self.completed = 0
        self.aborted = 0
        self.lock = threading.Lock()


class TrickleHandler(QuietHandler):
    """Serves ``slow-*`` files a chunk at a time (a slow 3G link), anything else at once."""

    def __init__(self, *args: Any, trickle: Trickle, **kwargs: Any) -> None:
        self._trickle = trickle  # set first: the base class handles the request in __init__
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        path = Path(self.translate_path(self.path))
        if not path.name.startswith("slow-") or not path.is_file():
            super().do_GET()
            return
        data = path.read_bytes()
        trickle = self._trickle
        self.send_response(200)
        self.send_header("Content-Type", "audio/wav")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with trickle.lock:
            trickle.active += 1
        try:
            for offset in range(0, len(data), trickle.chunk):
                self.wfile.write(data[offset : offset + trickle.chunk])
                self.wfile.flush()
                time.sleep(trickle.pause_s)
        except OSError:  # the daemon was killed: the socket is gone
            with trickle.lock:
                trickle.aborted += 1
        else:
            with trickle.lock:
                trickle.completed += 1
        finally:
            with trickle.lock:
                trickle.active -= 1


@dataclass
class Sent:
    """A command the test published (the broker PUBACKed it)."""

    ref: str
    stream: str  # "op" (the kill phase) or "marker" (one per run, awaited before the kill)
    seq: int
    envelope: bytes
    run: int


@dataclass
class Run:
    index: int
    scenario: str
    delay_s: float
    daemon: Daemon
    mid_play: bool = False
    mid_fetch: bool = False
    replays: list[tuple[str, str]] = field(default_factory=list)  # (ref, outcome)
    outbox_after_kill: set[int] | None = None  # the n still in outbox.db right after the kill

    @property
    def lines(self) -> list[Json]:
        return self.daemon.lines


class KillLoop:
    """The bookkeeping of the kill loop: what was sent, what each run logged."""

    def __init__(self, site: KillSite, central: Subscriber, rng: random.Random) -> None:
        self.site = site
        self.central = central
        self.rng = rng
        self.sent: list[Sent] = []
        self.runs: list[Run] = []
        # What became of a command the killed daemon never answered (see retry_unanswered).
        self.fates: dict[str, str] = {}
        self._seq = {"op": int(time.time() * 1000), "marker": int(time.time() * 1000)}

    # --- commands ------------------------------------------------------------------------

    def send(self, stream: str, run: int, kind: str, **extra: Any) -> Sent:
        self._seq[stream] += 1
        seq = self._seq[stream]
        ref = f"{stream}-{run:02d}-{uuid.uuid4().hex[:6]}"
        if kind == "volume":
            payload = command_payload(
                "volume", {"level": self.rng.randint(10, 90)}, env="lab", aud=[f"dev:{DEVICE}"],
                message_id=ref, seq=seq,
            )  # fmt: skip
        else:
            payload = self.site.play_payload(extra["media"], ref, seq)
        key = self.site.operator if stream == "op" else self.site.marker
        sent = Sent(ref, stream, seq, sign_command(payload, [key]), run)
        self.central.publish(CMD_TOPIC, sent.envelope)
        self.sent.append(sent)
        return sent

    def all_lines(self) -> list[Json]:
        return [line for run in self.runs for line in run.lines]

    def acted(self, stream: str, lines: list[Json] | None = None) -> list[Sent]:
        """Commands of ``stream`` that some run logged as accepted (and acted on)."""
        refs = {line["ref"] for line in first_accepts(self.all_lines() if lines is None else lines)}
        return [s for s in self.sent if s.stream == stream and s.ref in refs]

    # --- a replay of something accepted before a kill ---------------------------------------

    def publish_again(self, run: Run, sent: Sent) -> Json:
        """Publish ``sent`` again and return the daemon's answer to it (accepted/rejected)."""
        before = len(run.lines)
        self.central.publish(CMD_TOPIC, sent.envelope)
        line: Json | None = None

        def answered() -> bool:
            nonlocal line
            for item in run.lines[before:]:
                if item.get("ref") == sent.ref and item.get("event") in ("accepted", "rejected"):
                    line = item
                    return True
            return False

        wait_until(answered, 10, f"run {run.index}: the answer to {sent.ref} sent again")
        assert line is not None
        return line

    def replay(self, run: Run, sent: Sent, expected: set[str]) -> str:
        """Publish ``sent`` again; return "duplicate" or "replayed" (it must be in expected)."""
        line = self.publish_again(run, sent)
        if line["event"] == "accepted":
            assert line.get("detail") == DUPLICATE, f"run {run.index}: {sent.ref} acted again"
            outcome = "duplicate"
        else:
            assert line.get("reason") == "replayed", line
            outcome = "replayed"
        assert outcome in expected, f"run {run.index}: replay of {sent.ref}: {outcome}"
        run.replays.append((sent.ref, outcome))
        return outcome

    def replays_after_a_kill(self, run: Run) -> None:
        """The floors survived: the last marker is a duplicate, anything older a replay."""
        markers = self.acted("marker")
        if markers:
            if len(markers) > 1:
                self.replay(run, self.rng.choice(markers[:-1]), {"replayed"})
            self.replay(run, markers[-1], {"duplicate"})
        ops = self.acted("op")
        if not ops:
            return
        target = self.rng.choice(ops)
        # "replayed" for sure when a later command of the stream is known to have been
        # accepted; otherwise the floor may still be this one (a duplicate) or a later command
        # that was stored but whose log line the kill cut off.
        later_known = any(s.seq > target.seq for s in ops)
        self.replay(run, target, {"replayed"} if later_known else {"replayed", "duplicate"})

    def retry_unanswered(self, run: Run) -> None:
        """The command of the last kill phase, if the killed daemon logged nothing about it.

        The broker resends a QoS 1 message that was never PUBACKed as soon as the session is
        resumed, so by the time this run has accepted its marker, such a command has arrived
        ("redelivered"). If it has not, the killed daemon had PUBACKed it and the broker has
        forgotten it. Central, having no answer, sends it again: accepted as new means it had
        not been stored ("lost, acted on retry"); "duplicate of the last accepted" means its
        replay floor had been stored but it was never acted on nor reported, and the retry is
        acknowledged without effect ("lost, floor stored, never acted").
        """
        previous = [s for s in self.sent if s.stream == "op" and s.run == run.index - 1]
        if not previous:
            return
        sent = previous[-1]
        if any(line.get("ref") == sent.ref for line in self.runs[run.index - 1].lines):
            return  # answered before the kill
        if any(_carried_out(line) and line.get("ref") == sent.ref for line in run.lines):
            self.fates[sent.ref] = "carried out after the restart"
            return
        if any(_interrupted(line) and line.get("ref") == sent.ref for line in run.lines):
            self.fates[sent.ref] = "reported interrupted after the restart"
            return
        if any(line.get("ref") == sent.ref for line in run.lines):
            self.fates[sent.ref] = "redelivered"
            return
        line = self.publish_again(run, sent)
        assert line["event"] == "accepted", line  # it is the newest of its stream
        if line.get("detail") == DUPLICATE:
            self.fates[sent.ref] = LOST_SILENTLY
        else:
            self.fates[sent.ref] = "lost, acted on retry"


@dataclass
class KillSite:
    root: Path
    broker: MosquittoBroker
    operator: SigningKey
    marker: SigningKey
    config: Path
    media_dir: Path
    port: int
    trickle: Trickle

    @property
    def outbox(self) -> Path:
        return self.root / "state" / "outbox.db"

    def play_payload(self, name: str, ref: str, seq: int) -> Json:
        data = (self.media_dir / name).read_bytes()
        body = {
            "priority": "normal",
            "source": {
                "files": [
                    {
                        "url": f"http://127.0.0.1:{self.port}/{name}",
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "size": len(data),
                        "title": name,
                    }
                ]
            },
            "max_duration_s": 60,
        }
        return command_payload(
            "play", body, env="lab", aud=[f"grp:{GROUP}"], message_id=ref, seq=seq
        )


@pytest.fixture
def kill_site(tmp_path: Path, broker: MosquittoBroker) -> Iterator[KillSite]:
    media_dir = tmp_path / "media"
    media_dir.mkdir()
    write_tone(media_dir / "tone440.wav", 440.0, 1.5)
    trickle = Trickle(chunk=4096, pause_s=0.06)  # a 0.5 s tone (44 KB) takes about 0.7 s
    server = LabServer(functools.partial(TrickleHandler, directory=str(media_dir), trickle=trickle))
    port = server.port
    operator = SigningKey.generate("op-kill")
    marker = SigningKey.generate("op-marker")
    config = write_config(
        tmp_path / "receiver.yaml",
        broker_port=broker.port,
        media_port=port,
        keys=[(operator, ["operator"], [GROUP]), (marker, ["operator"], [GROUP])],
        wav=tmp_path / "out.wav",
        state_dir=tmp_path / "state",
        cache_dir=tmp_path / "cache",
    )
    try:
        yield KillSite(tmp_path, broker, operator, marker, config, media_dir, port, trickle)
    finally:
        server.close()


SCENARIOS: Final = (("play", 0.35), ("fetch", 0.25), ("volume", 0.2), ("instant", 0.2))
DEFAULT_KILLS: Final = 12
LOST_SILENTLY: Final = "lost, floor stored, never acted"


def _kills() -> int:
    text = os.environ.get("RESILIENCE_KILLS", str(DEFAULT_KILLS))
    if not text.isdigit() or int(text) < 1:
        pytest.fail(f"RESILIENCE_KILLS must be a whole number of kills, at least 1, not {text!r}")
    return int(text)


def test_sigkill_at_random_moments_loses_no_event_and_replays_nothing(
    kill_site: KillSite,
) -> None:
    kills = _kills()
    seed = int(os.environ.get("RESILIENCE_SEED", "0")) or random.SystemRandom().randrange(1, 2**31)
    print(
        f"kill loop seed {seed}, {kills} kills "
        f"(RESILIENCE_SEED={seed} RESILIENCE_KILLS={kills} repeats the choices)"
    )
    rng = random.Random(seed)  # noqa: S311 - test choices, not secrets
    site = kill_site
    began = time.monotonic()
    central = Subscriber(
        site.broker, [EVENTS_TOPIC, STATE_TOPIC], client_id="central-kill", persistent=True
    )
    with central:
        loop = KillLoop(site, central, rng)
        try:
            for index in range(kills + 1):
                _one_run(loop, index, final=index == kills)
            _drain_and_stop(loop)
        except BaseException:
            for run in loop.runs[-3:]:
                print(f"--- run {run.index} ({run.scenario}, {run.delay_s:.3f} s) ---")
                print("".join(run.daemon.raw))
            raise
        finally:
            for run in loop.runs:
                run.daemon.kill()
        _summary(loop, seed, time.monotonic() - began)
        _check_the_whole_loop(loop, seed)


def _summary(loop: KillLoop, seed: int, elapsed: float) -> None:
    site = loop.site
    central = loop.central
    kills = loop.runs[:-1]
    received = received_events(central)
    copies = len(received) - len({e["n"] for e in received})
    acted = {s.ref for s in loop.acted("op")} | {s.ref for s in loop.acted("marker")}
    lost = [_fate(loop, s) for s in loop.sent if s.ref not in acted]
    silent = _silent(loop)
    outcomes = Counter(outcome for run in loop.runs for _ref, outcome in run.replays)
    print(
        f"kill loop seed {seed}: {len(kills)} SIGKILLs in {elapsed:.1f} s; "
        f"scenarios {dict(Counter(r.scenario for r in kills))}; "
        f"mid-play {sum(r.mid_play for r in kills)}, mid-fetch {sum(r.mid_fetch for r in kills)}; "
        f"events logged {len(logged_events(loop.all_lines()))}, received {len(received)} "
        f"({copies} copies of an n already received); replays {dict(outcomes)}; "
        f"commands sent {len(loop.sent)}, never acted on {len(lost)} {lost}; "
        f"used up without a word {len(silent)} of {len(kills)} kills {silent}; "
        f"reported interrupted {sum(map(_interrupted, loop.all_lines()))}; "
        f"unanswered at the kill {dict(Counter(loop.fates.values()))}; "
        f"downloads cut off {site.trickle.aborted}, completed {site.trickle.completed}; "
        f"outbox.db unreadable after {sum(r.outbox_after_kill is None for r in kills)} kills"
    )


def _silent(loop: KillLoop) -> list[str]:
    """Commands no run acted on nor reported failed: used up without a word."""
    answered = {
        line.get("ref")
        for line in loop.all_lines()
        if line.get("event") == "failed"
        or (line.get("event") == "accepted" and line.get("detail") != DUPLICATE)
    }
    return [_fate(loop, s) for s in loop.sent if s.ref not in answered]


def _one_run(loop: KillLoop, index: int, *, final: bool) -> None:
    site = loop.site
    rng = loop.rng
    names = [name for name, _weight in SCENARIOS]
    weights = [weight for _name, weight in SCENARIOS]
    if final:
        scenario = "final"
    elif index < len(names):  # each kind of moment at least once, however few the kills
        scenario = names[index]
    else:
        scenario = rng.choices(names, weights)[0]
    daemon = Daemon(site.config)
    run = Run(index, scenario, 0.0, daemon)
    loop.runs.append(run)
    daemon.start()
    daemon.wait_log(lambda line: line.get("event") == "daemon_started", timeout=15)
    check_boot(run.lines, f"run {index}")
    if index:
        loop.replays_after_a_kill(run)
    else:  # a new session: the broker routes commands to it once it has subscribed
        loop.central.wait_for(
            lambda m: m.topic == STATE_TOPIC and json.loads(m.payload).get("online") is True, 15
        )
    # Something certain to be accepted (and stored) before anything can be killed.
    marker = loop.send("marker", index, "volume")
    daemon.wait_log(
        lambda line: line.get("event") == "accepted" and line.get("ref") == marker.ref, timeout=10
    )
    if index:
        loop.retry_unanswered(run)
    if final:
        return
    if scenario == "play":  # the cached 1.5 s tone: warm-up 0.3 s, ~0.5 s of sound, tail 0.5 s
        loop.send("op", index, "play", media="tone440.wav")
        run.delay_s = rng.uniform(0.2, 1.3)
    elif scenario == "fetch":  # a new file, trickled over about 0.7 s
        name = f"slow-{index:02d}.wav"
        write_tone(site.media_dir / name, 300.0 + 10 * index, 0.5)
        loop.send("op", index, "play", media=name)
        run.delay_s = rng.uniform(0.05, 1.0)
    elif scenario == "volume":
        loop.send("op", index, "volume")
        run.delay_s = rng.uniform(0.0, 0.15)
    else:  # killed while the command is still on its way in: the PUBACK/accept window
        loop.send("op", index, rng.choice(("volume", "play")), media="tone440.wav")
        run.delay_s = rng.uniform(0.0, 0.01)
    time.sleep(run.delay_s)
    with site.trickle.lock:
        run.mid_fetch = site.trickle.active > 0
    daemon.kill()  # SIGKILL
    settle_output(daemon)
    run.outbox_after_kill = outbox_numbers(site.outbox)
    helper = relay_off(site.config)
    assert helper.returncode == 0, helper
    assert RELAY_OFF_OUTPUT in helper.stdout.strip(), helper
    started = {line["ref"] for line in run.lines if line.get("event") == "started"}
    ended = {line["ref"] for line in run.lines if line.get("event") in ENDED_KINDS}
    run.mid_play = bool(started - ended)


def _fate(loop: KillLoop, sent: Sent) -> str:
    """What became of a command no run acted on: its run, and every log line naming it."""
    run = loop.runs[sent.run]
    mentions = [
        f"run {r.index}: {line.get('event')} {line.get('reason') or line.get('detail') or ''}"
        for r in loop.runs
        for line in r.lines
        if line.get("ref") == sent.ref
    ]
    return (
        f"{sent.ref} ({run.scenario}, killed after {run.delay_s:.3f} s; {mentions or 'no trace'})"
    )


def _missing_event(loop: KillLoop, line: Json) -> str:
    """A logged event central never received: its run, and what that run logged after it."""
    run = next(r for r in loop.runs if any(item is line for item in r.lines))
    position = next(i for i, item in enumerate(run.lines) if item is line)
    after = [
        f"{item.get('event')}{' n=' + str(item['n']) if 'n' in item else ''}"
        for item in run.lines[position + 1 :]
    ]
    if run.outbox_after_kill is None:
        stored = "unknown"
    else:
        stored = "yes" if line["n"] in run.outbox_after_kill else "no"
    return (
        f"n={line['n']} {line['event']} {line.get('ref')}: run {run.index} ({run.scenario}, "
        f"SIGKILL after {run.delay_s:.3f} s), logged after it: {after or 'nothing'}; "
        f"in outbox.db right after the kill: {stored}"
    )


def _drain_and_stop(loop: KillLoop) -> None:
    """The last daemon stays up until central has every logged event (or 30 s), then stops."""
    logged = {line["n"] for line in logged_events(loop.all_lines())}

    def all_received() -> bool:
        return logged <= {e["n"] for e in received_events(loop.central)}

    with contextlib.suppress(AssertionError):  # what is missing is reported by the checks
        wait_until(all_received, 30, "every logged event")
    final = loop.runs[-1].daemon
    assert final.stop() == 0
    settle_output(final)


def _check_the_whole_loop(loop: KillLoop, seed: int) -> None:
    central = loop.central
    every = logged_events(loop.all_lines())
    logged = {line["n"]: line for line in every}
    where = f"(seed {seed})"

    # Every run: clean store and outbox, relay off first, the broker still had our session.
    for run in loop.runs:
        check_boot(run.lines, f"run {run.index} {where}")
        if run.index:
            connected = [line for line in run.lines if line.get("event") == "mqtt_connected"]
            assert connected and connected[0]["session_present"] is True, f"run {run.index}"

    # n never goes back: strictly increasing within a run and from one run to the next.
    numbers = [line["n"] for line in every]
    assert numbers == sorted(set(numbers)), f"event numbers went back or repeated {where}"

    # Never used up in silence: each command acted on, carried out after a restart, or failed.
    assert LOST_SILENTLY not in loop.fates.values(), f"{where} {loop.fates}"
    silent = _silent(loop)
    assert not silent, f"{where} used up without a word: {silent}"

    # Nothing acted twice: no command accepted (as new) twice, no play started twice. A command
    # carried out after a restart is the same acceptance, announced again.
    lines = loop.all_lines()
    accepted = Counter(line["ref"] for line in first_accepts(lines) if not _carried_out(line))
    assert not [ref for ref, count in accepted.items() if count > 1], where
    started = Counter(line["ref"] for line in lines if line.get("event") == "started")
    assert not [ref for ref, count in started.items() if count > 1], where
    assert all(line.get("reason") == "replayed" for line in lines
               if line.get("event") == "rejected"), where  # fmt: skip

    # No event lost: every n that any run logged reached central, as the same event.
    seen = received_events(central)
    by_n: dict[int, Json] = {}
    order: list[int] = []
    for event in seen:
        if event["n"] in by_n:
            assert event == by_n[event["n"]], f"two different events numbered {event['n']}"
        else:
            by_n[event["n"]] = event
            order.append(event["n"])
    # A copy is the outbox sending again, after a kill, an event the broker already had.
    copies = sorted({e["n"] for e in seen if sum(x["n"] == e["n"] for x in seen) > 1})
    in_outbox_at_a_kill = set().union(*(r.outbox_after_kill or set() for r in loop.runs))
    if all(r.outbox_after_kill is not None for r in loop.runs[:-1]):
        assert set(copies) <= in_outbox_at_a_kill, (copies, where)
    missing = sorted(set(logged) - set(by_n))
    assert not missing, f"{where} events logged by the daemon but never received:\n" + "\n".join(
        _missing_event(loop, logged[n]) for n in missing
    )
    assert order == sorted(order), f"events out of order {where}: {order}"
    for n, line in logged.items():
        assert (by_n[n]["kind"], by_n[n].get("ref")) == (line["event"], line.get("ref")), n


# --- the order of "log the event" and "store the event" ----------------------------------------


def test_an_event_is_logged_only_once_it_is_stored(
    site: Site, start_daemon: Callable[[], Daemon]
) -> None:
    """The kill loop's race, made deterministic: while outbox.db cannot be written (here another
    connection holds its write lock; on a device: a full or failing SD card), every event the
    daemon logs with an ``n`` must still reach central, or not be logged as such at all."""
    central = Subscriber(
        site.broker, [site.events_topic, site.state_topic], client_id="central-locked",
        persistent=True,
    )  # fmt: skip
    with central:
        daemon = start_daemon()
        wait_online(central, site)
        seq = int(time.time() * 1000)

        def volume(ref: str, offset: int) -> bytes:
            payload = command_payload(
                "volume", {"level": 50}, env="lab", aud=[f"dev:{DEVICE}"], message_id=ref,
                seq=seq + offset,
            )  # fmt: skip
            return sign_command(payload, [site.operator])

        outbox = site.root / "state" / "outbox.db"
        with contextlib.closing(sqlite3.connect(outbox, isolation_level=None)) as blocker:
            blocker.execute("BEGIN IMMEDIATE")  # the outbox's own writes now wait, then fail
            central.publish(site.cmd_topic, volume("while-locked", 1))
            daemon.wait_log(lambda line: line.get("event") == "effect_failed", timeout=15)
            blocker.execute("ROLLBACK")
        central.publish(site.cmd_topic, volume("after", 2))
        wait_event(central, site, "accepted", "after")
        assert daemon.stop() == 0

    failed = daemon.logged("effect_failed")
    assert [line["effect"] for line in failed] == ["Emit"], failed
    logged = {line["n"]: line for line in logged_events(daemon.lines)}
    received = {e["n"] for e in received_events(central)}
    never_sent = {n: f"{line['event']} {line.get('ref')}" for n, line in logged.items()
                  if n not in received}  # fmt: skip
    assert not never_sent, f"logged as events, never stored nor sent: {never_sent}"
