"""An ``https`` relay: the station's certificate is checked by the resolver and by the stream
gate (:mod:`receiver.stream_gate`, which now makes the connection libVLC used to make), against
the system's trust store (``SSL_CERT_FILE`` here names the lab's CA). An untrusted certificate,
or one for another name, is refused with our reason; a trusted one relays, and the tone is heard."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler
from pathlib import Path
from queue import Empty, Queue
from typing import Any, cast
from urllib.parse import urlsplit

import pytest

from receiver.config_model import PlayerConfig
from receiver.core.events import Event, PlaybackStarted
from receiver.player import Player
from receiver.stream_gate import StreamGate
from receiver.streams import Resolved, StreamRefused, resolve
from tests.lab.audio import dominant_of, read_wav, trim_silence, wait_for_final_wav
from tests.lab.ca import TestCa
from tests.lab.stations import mp3_tone, plays_then_hangs_up
from tests.lab.web import RoutedServer


@pytest.fixture
def pki(tmp_path: Path) -> TestCa:
    return TestCa(tmp_path / "pki")


def station(ca: TestCa, hosts: list[str], audio: bytes) -> RoutedServer:
    files = ca.issue(hosts[0], server_hosts=hosts)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    server = RoutedServer(tls=context)
    live = plays_then_hangs_up(audio, 128_000, audio_s=120.0)  # paced, no length: a live stream

    def behaviour(handler: BaseHTTPRequestHandler, _stopping: threading.Event) -> None:
        live(cast(SimpleHTTPRequestHandler, handler))

    server.routes["/live.mp3"] = behaviour
    return server


@pytest.fixture(scope="module")
def tone(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return mp3_tone(tmp_path_factory.mktemp("tone") / "tone.mp3", 440.0, 20.0)


def refused(url: str, port: int) -> str:
    with pytest.raises(StreamRefused) as refusal:
        resolve(url, ("https",), (f"127.0.0.1:{port}",), deadline_s=5.0)
    return refusal.value.detail


def test_a_station_whose_certificate_is_not_trusted_is_refused(
    pki: TestCa, tone: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with station(pki, ["127.0.0.1"], tone) as server:
        assert refused(server.url("/live.mp3"), server.port) == "TLS with 127.0.0.1 failed"
        assert server.requests == []


def test_a_certificate_for_another_name_is_refused(
    pki: TestCa, tone: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.cert_file))
    with station(pki, ["radio.example"], tone) as server:
        assert refused(server.url("/live.mp3"), server.port) == "TLS with 127.0.0.1 failed"
        assert server.requests == []


def test_a_trusted_station_relays_through_the_gate(
    pki: TestCa, tone: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.cert_file))  # the player's process inherits it
    events: Queue[Event] = Queue()
    wav = tmp_path / "out.wav"
    with station(pki, ["127.0.0.1"], tone) as server:
        allowed = (f"127.0.0.1:{server.port}",)

        def resolver(url: str, cancelled: Callable[[], bool]) -> Resolved:
            return resolve(url, ("https",), allowed, cancelled=cancelled)

        player = Player(PlayerConfig(output="file", wav_file=wav), events.put, resolver=resolver)
        try:
            player.play(1, server.url("/live.mp3"), 100, live=True)
            try:
                event = events.get(timeout=20)
            except Empty:
                raise AssertionError("no event within 20 s") from None
            assert event == PlaybackStarted(1), event
            time.sleep(3.0)
        finally:
            player.close()
        wait_for_final_wav(wav)
        sound = read_wav(wav)
        assert dominant_of(trim_silence(sound.samples), sound.rate, (440.0, 1000.0)) == 440.0
        # One probe by the resolver, then the gate's own request: libVLC never reached it.
        assert server.requests == ["/live.mp3", "/live.mp3"], server.requests


def test_the_gate_refuses_a_station_whose_certificate_is_not_trusted(
    pki: TestCa, tone: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with station(pki, ["127.0.0.1"], tone) as server:
        gate = StreamGate(server.url("/live.mp3"))
        try:
            port = urlsplit(gate.url).port
            assert port is not None
            with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
                sock.sendall(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answer = sock.recv(1024)
        finally:
            gate.close()
        assert answer.startswith(b"HTTP/1.0 503"), answer
        assert server.requests == []


class SlowHandshakeStation:
    """A TLS station that waits ``delay_s`` after accepting before it answers the handshake (a
    slow 4G link), then answers one request with a few bytes of audio. ``delay_s`` may be
    changed between connections."""

    def __init__(self, ca: TestCa, delay_s: float) -> None:
        files = ca.issue("127.0.0.1", server_hosts=["127.0.0.1"])
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(files.cert, files.key)
        self.delay_s = delay_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0  # connections taken, whose handshake then waits
        self.handshakes = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self._closed.wait(self.delay_s):
                conn.close()
                return
            try:
                with self._context.wrap_socket(conn, server_side=True) as tls:
                    self.handshakes += 1
                    tls.recv(4096)
                    tls.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: audio/mpeg\r\n\r\n\xff\xfb\x90")
            except OSError:
                continue

    def close(self) -> None:
        self._closed.set()  # ends a handshake's wait too
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        self._thread.join(timeout=5)
        self._listener.close()


def test_a_slow_handshake_is_waited_for_and_a_stop_during_it_is_prompt(
    pki: TestCa, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The handshake is waited for in 0.25 s steps (so that a stop is noticed), each resuming
    # where OpenSSL left off: a station 1 s slow to answer it is still reached.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.cert_file))
    slow = SlowHandshakeStation(pki, delay_s=1.0)
    try:
        url, hosts = f"https://127.0.0.1:{slow.port}/live.mp3", (f"127.0.0.1:{slow.port}",)
        resolved = resolve(url, ("https",), hosts, deadline_s=5.0)
        assert resolved.kind == "stream" and slow.handshakes == 1

        # Then a station 5 s slow, stopped once it took the connection (in the handshake):
        # the resolve ends well before the station would answer or the deadline would pass.
        slow.delay_s = 5.0
        stopped = threading.Event()
        stopped_at: list[float] = []

        def stop_during_the_handshake() -> None:
            deadline = time.monotonic() + 10
            while slow.accepted < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            stopped_at.append(time.monotonic())
            stopped.set()

        threading.Thread(target=stop_during_the_handshake, daemon=True).start()
        with pytest.raises(StreamRefused) as refusal:
            resolve(url, ("https",), hosts, deadline_s=10.0, cancelled=stopped.is_set)
        ended = time.monotonic()
        assert refusal.value.detail == "stopped while asking the server"
        assert slow.accepted == 2 and slow.handshakes == 1
        assert ended - stopped_at[0] < 2.0  # not the station's 5 s
    finally:
        slow.close()


def test_a_stop_while_the_gate_reads_tls_ends_the_relay_cleanly(
    pki: TestCa, tone: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The gate is closed while its relay thread is inside SSLSocket.recv, about to read the
    # station's next TLS record: close() must not pull the TLS object from under it (a
    # ValueError in that thread); the read ends, the thread ends, libVLC's connection ends.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.cert_file))
    failures: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda hook: failures.append(hook.exc_value))
    paused, resume, armed = threading.Event(), threading.Event(), threading.Lock()
    armed.acquire()
    real_read = ssl.SSLSocket.read

    def read(sock: ssl.SSLSocket, *args: Any) -> Any:
        if threading.current_thread().name.startswith("stream-gate") and armed.acquire(False):
            paused.set()
            resume.wait(10)
        return real_read(sock, *args)

    monkeypatch.setattr(ssl.SSLSocket, "read", read)
    with station(pki, ["127.0.0.1"], tone) as server:
        gate = StreamGate(server.url("/live.mp3"))
        try:
            port = urlsplit(gate.url).port
            assert port is not None
            with socket.create_connection(("127.0.0.1", port), timeout=10.0) as sock:
                sock.sendall(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                heard = b""
                while len(heard.partition(b"\r\n\r\n")[2]) < 4000:
                    chunk = sock.recv(65536)
                    assert chunk, heard[:200]
                    heard += chunk
                armed.release()
                assert paused.wait(10), "the gate stopped reading the station"
                gate.close()
                resume.set()
                assert gate.join(5.0), "a thread of the closed gate is still running"
                while sock.recv(65536):
                    pass  # what was on its way; then the end
        finally:
            resume.set()
            gate.close()
    assert failures == []
