"""Name lookups under the relay's deadline: a name server gone silent (a 4G link in a bad state)
holds neither a relay's start, nor a stop, nor the stream gate (:func:`receiver.streams.lookup`).

Two kinds of silent name server:

* ``socket.getaddrinfo`` patched so that names under ``.silent.test`` answer only after
  :data:`ANSWER_AFTER_S` (as glibc does once its own timeouts have run out), and then with
  127.0.0.1, where a station counts every connection made to it: whatever the receiver did
  with a late answer after giving up, the station would see it;
* the real glibc resolver, in a network and mount namespace of the test's own whose
  ``resolv.conf`` names a UDP port on its loopback that reads queries and never answers.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import pytest

from receiver import stream_gate, streams
from receiver.config_model import PlayerConfig
from receiver.core.events import Event, PlaybackFailed
from receiver.player import Player
from receiver.stream_gate import StreamGate
from receiver.streams import Resolved, StreamRefused, resolve

ANSWER_AFTER_S = 4.0  # how long the silent name server takes to answer at last
DEADLINE_S = 1.5  # the resolver's deadline in these tests (10 s in service)
SLACK_S = 0.75  # POLL_S (0.25 s) and a loaded machine


class Station:
    """A listener on 127.0.0.1 counting the connections made to it (and answering nothing)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            self._held.append(conn)

    def close(self) -> None:
        # shutdown() wakes the accept() (close() alone would leave the thread blocked in it,
        # and the listener open, for the rest of the test run).
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._listener.close()
        for conn in self._held:
            conn.close()


@dataclass
class SilentDns:
    """The patched lookup: which names were asked, and a switch that answers them all now."""

    asked: list[str] = field(default_factory=list)
    answer_now: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def silent_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[SilentDns]:
    real = socket.getaddrinfo
    dns = SilentDns()

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        numeric_only = kwargs.get("flags", 0) & socket.AI_NUMERICHOST
        if numeric_only or not str(host).endswith(".silent.test"):
            return real(host, port, *args, **kwargs)
        dns.asked.append(str(host))
        dns.answer_now.wait(ANSWER_AFTER_S)
        return real("127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield dns
    dns.answer_now.set()


def assert_no_answer_in_time(detail: str | None, host: str, before: str = "") -> None:
    """``detail`` is the refusal for a name server that never answered ``host``. The seconds
    it names are the lookup's own share of the deadline, rounded: a lookup starting a moment
    after the deadline did (a loaded machine) names a little less, never more."""
    said = re.fullmatch(
        rf"{re.escape(before)}cannot look up {re.escape(host)}: "
        r"the name server did not answer in (\d+(?:\.\d+)?) s",
        detail or "",
    )
    assert said is not None, detail
    assert DEADLINE_S - 0.3 <= float(said.group(1)) <= DEADLINE_S, detail


@pytest.fixture
def station() -> Iterator[Station]:
    running = Station()
    yield running
    running.close()


def test_a_silent_name_server_fails_the_resolve_at_its_deadline(
    silent_dns: SilentDns, station: Station
) -> None:
    host = f"radio.silent.test:{station.port}"
    start = time.monotonic()
    with pytest.raises(StreamRefused) as refused:
        resolve(f"http://{host}/live.mp3", ("http",), (host,), deadline_s=DEADLINE_S)
    took = time.monotonic() - start
    assert_no_answer_in_time(refused.value.detail, "radio.silent.test")
    assert took < DEADLINE_S + SLACK_S, took
    assert silent_dns.asked == ["radio.silent.test"]
    time.sleep(ANSWER_AFTER_S - took + 0.5)  # the late answer comes, and is dropped
    assert station.connections == 0


def test_the_lookup_has_a_bound_of_its_own_below_the_stall_watchdog(
    silent_dns: SilentDns, station: Station, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In service 6.5 s of the 10 s deadline, so that the relay fails saying why before the
    # daemon's stall watchdog (8 s by default) restarts it.
    assert streams.LOOKUP_TIMEOUT_S < 8.0 < streams.RESOLVE_DEADLINE_S
    monkeypatch.setattr(streams, "LOOKUP_TIMEOUT_S", 1.0)
    host = f"radio.silent.test:{station.port}"
    start = time.monotonic()
    with pytest.raises(StreamRefused) as refused:
        resolve(f"http://{host}/live.mp3", ("http",), (host,), deadline_s=10.0)
    assert refused.value.detail == (
        "cannot look up radio.silent.test: the name server did not answer in 1 s"
    )
    assert time.monotonic() - start < 1.0 + SLACK_S


def test_cancelling_during_a_lookup_returns_at_once_and_the_late_answer_is_dropped(
    silent_dns: SilentDns, station: Station
) -> None:
    host = f"radio.silent.test:{station.port}"
    stopped = threading.Event()
    threading.Timer(0.3, stopped.set).start()
    start = time.monotonic()
    with pytest.raises(StreamRefused) as refused:
        resolve(f"http://{host}/live.mp3", ("http",), (host,), cancelled=stopped.is_set)
    took = time.monotonic() - start
    assert refused.value.detail == "stopped while looking up radio.silent.test"
    assert took < 0.3 + SLACK_S, took
    silent_dns.answer_now.set()
    time.sleep(0.5)
    assert station.connections == 0, "the resolver went on to the station after a stop"


def wait_for_no_pending_lookup() -> None:
    deadline = time.monotonic() + 5
    while any(thread.name == "stream-lookup" for thread in threading.enumerate()):
        assert time.monotonic() < deadline, "a lookup thread never ended"
        time.sleep(0.02)


def test_a_stop_during_a_connect_to_a_silent_station_is_prompt() -> None:
    # A listener whose queue is full drops every SYN, as a dead 4G link does: the connect
    # waits (5 s at most) but is called off within POLL_S, and the next address is not tried.
    full = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = full.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port), timeout=1)
    try:
        stopped = threading.Event()
        threading.Timer(0.3, stopped.set).start()
        start = time.monotonic()
        with pytest.raises(StreamRefused) as refused:
            resolve(
                f"http://127.0.0.1:{port}/",
                ("http",),
                (f"127.0.0.1:{port}",),
                cancelled=stopped.is_set,
            )
        assert refused.value.detail == "stopped while asking the server"
        assert time.monotonic() - start < 0.3 + SLACK_S

        start = time.monotonic()
        with pytest.raises(StreamRefused) as refused:
            resolve(f"http://127.0.0.1:{port}/", ("http",), (f"127.0.0.1:{port}",), deadline_s=1.0)
        assert refused.value.detail == "127.0.0.1 too slow: no answer in 1 s"
        assert time.monotonic() - start < 1.0 + SLACK_S
    finally:
        queued.close()
        full.close()


def test_lookups_given_up_on_are_capped(silent_dns: SilentDns, station: Station) -> None:
    # Each abandoned lookup keeps a thread until the name server (or glibc) gives up: their
    # number is capped, and past the cap a lookup is refused at once.
    wait_for_no_pending_lookup()
    host = f"radio.silent.test:{station.port}"
    for _ in range(streams.MAX_PENDING_LOOKUPS):
        with pytest.raises(StreamRefused, match="did not answer"):
            resolve(f"http://{host}/", ("http",), (host,), deadline_s=0.1)
    start = time.monotonic()
    with pytest.raises(StreamRefused) as refused:
        resolve(f"http://{host}/", ("http",), (host,), deadline_s=DEADLINE_S)
    assert time.monotonic() - start < SLACK_S
    assert refused.value.detail == (
        "cannot look up radio.silent.test: the name server has not answered the last 4 lookups yet"
    )
    assert len(silent_dns.asked) == streams.MAX_PENDING_LOOKUPS
    silent_dns.answer_now.set()  # the pending lookups end, and new ones may start
    wait_for_no_pending_lookup()
    with pytest.raises(StreamRefused, match="too slow"):  # on to the station, which is mute
        resolve(f"http://{host}/", ("http",), (host,), deadline_s=0.5)
    assert station.connections == 1


def test_the_gate_answers_503_at_its_deadline_and_never_asks_the_station_late(
    silent_dns: SilentDns, station: Station, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_gate, "RESOLVE_DEADLINE_S", DEADLINE_S)
    gate = StreamGate(f"http://radio.silent.test:{station.port}/live.mp3")
    port = int(gate.url.rsplit(":", 1)[1].split("/", 1)[0])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as libvlc:
            start = time.monotonic()
            libvlc.sendall(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = libvlc.recv(65536)
            took = time.monotonic() - start
        assert answer.startswith(b"HTTP/1.0 503"), answer
        assert took < DEADLINE_S + SLACK_S, took
        with socket.create_connection(("127.0.0.1", port), timeout=10) as libvlc:
            libvlc.sendall(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            # Closed while the second lookup is pending, well inside its deadline (a fixed
            # sleep as long as the deadline raced it on a loaded machine, and got the 503).
            asked_again = time.monotonic() + DEADLINE_S
            while len(silent_dns.asked) < 2 and time.monotonic() < asked_again:
                time.sleep(0.01)
            assert len(silent_dns.asked) == 2, silent_dns.asked  # asked again, and looking up
            gate.close()
            closed = time.monotonic()
            assert libvlc.recv(65536) == b""  # closing hangs up on libVLC at once
            assert time.monotonic() - closed < SLACK_S
    finally:
        gate.close()
    silent_dns.answer_now.set()
    time.sleep(0.5)
    assert station.connections == 0, "the gate went on to the station after giving up"


# --- the player -------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.queue: Queue[Event] = Queue()

    def __call__(self, event: Event) -> None:
        self.queue.put(event)

    def next(self, timeout_s: float) -> Event:
        try:
            return self.queue.get(timeout=timeout_s)
        except Empty:
            raise AssertionError(f"no event within {timeout_s} s") from None


@pytest.fixture
def player(tmp_path: Path) -> Iterator[tuple[Player, Recorder]]:
    events = Recorder()

    def resolver(url: str, cancelled: Callable[[], bool]) -> Resolved:
        host = url.split("/")[2]
        return resolve(url, ("http",), (host,), deadline_s=DEADLINE_S, cancelled=cancelled)

    config = PlayerConfig(output="file", wav_file=tmp_path / "out.wav")
    running = Player(config, events, resolver=resolver)
    yield running, events
    running.close()


def test_the_player_reports_a_silent_name_server_as_failed_on_time(
    silent_dns: SilentDns, station: Station, player: tuple[Player, Recorder]
) -> None:
    relay, events = player
    start = time.monotonic()
    relay.play(3, f"http://radio.silent.test:{station.port}/live.mp3", 100, live=True)
    event = events.next(DEADLINE_S + SLACK_S)
    assert isinstance(event, PlaybackFailed) and event.token == 3, event
    assert_no_answer_in_time(event.detail, "radio.silent.test", before="not relayed: ")
    assert time.monotonic() - start < DEADLINE_S + SLACK_S
    assert relay.position_ms() == -1


def test_stopping_the_player_during_a_lookup_leaves_the_station_alone(
    silent_dns: SilentDns, station: Station, player: tuple[Player, Recorder]
) -> None:
    relay, events = player
    relay.play(4, f"http://radio.silent.test:{station.port}/live.mp3", 100, live=True)
    # Stopped while the lookup is pending, well inside its deadline (a fixed sleep had to be
    # both long enough for the lookup to start and shorter than the deadline).
    asked = time.monotonic() + DEADLINE_S
    while not silent_dns.asked and time.monotonic() < asked:
        time.sleep(0.01)
    assert silent_dns.asked == ["radio.silent.test"]
    start = time.monotonic()
    relay.stop()
    assert time.monotonic() - start < SLACK_S
    silent_dns.answer_now.set()  # a late answer, after the stop
    with pytest.raises(AssertionError):
        events.next(1.0)  # stopped: nothing is reported for its token
    assert station.connections == 0, "the stopped relay still went to the station"
    assert relay.position_ms() == -1


# --- the real resolver --------------------------------------------------------------------------

_IN_NAMESPACE = r"""
import json, socket, sys, threading, time
from receiver.streams import StreamRefused, resolve

# The namespace's name server: reads queries, never answers (no ICMP "port unreachable" either).
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind(("127.0.0.1", 53))
queries = []
threading.Thread(target=lambda: [queries.append(server.recv(512)) for _ in iter(int, 1)],
                 daemon=True).start()
plain = threading.Thread(target=lambda: socket.getaddrinfo("radio.example.test", 80),
                         daemon=True)
plain.start()  # what the resolver used to do: wait for glibc
start = time.monotonic()
try:
    resolve("http://radio.example.test/live.mp3", ("http",), ("radio.example.test",),
            deadline_s=float(sys.argv[1]))
    detail = None
except StreamRefused as refused:
    detail = refused.detail
took = time.monotonic() - start
print(json.dumps({"took": took, "detail": detail, "queries": len(queries),
                  "plain_lookup_still_waiting": plain.is_alive()}))
"""


def test_the_real_resolver_with_a_silent_name_server_is_bounded(tmp_path: Path) -> None:
    for tool in ("unshare", "ip", "mount"):
        if shutil.which(tool) is None:
            pytest.fail(f"this test needs {tool} (util-linux, iproute2)", pytrace=False)
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("nameserver 127.0.0.1\noptions timeout:30 attempts:1\n")
    script = 'ip link set lo up && mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
    argv = [
        "unshare", "--net", "--mount", "sh", "-c", script, "sh", str(resolv_conf),
        sys.executable, "-c", _IN_NAMESPACE, str(DEADLINE_S),
    ]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
    except subprocess.TimeoutExpired:
        raise AssertionError("the resolve waited for glibc (over 15 s)") from None
    if done.returncode != 0:
        pytest.fail(
            f"cannot run in a network and mount namespace of our own (the test runs as root): "
            f"{done.stderr.strip()[-500:]}",
            pytrace=False,
        )
    seen = json.loads(done.stdout)
    assert_no_answer_in_time(seen["detail"], "radio.example.test")
    assert seen["took"] < DEADLINE_S + SLACK_S, seen
    assert seen["queries"] >= 1, "the name server was never asked"
    assert seen["plain_lookup_still_waiting"], "glibc did not wait: the test proves nothing"
