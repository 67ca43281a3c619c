"""The stream gate on its own (:mod:`receiver.stream_gate`), against a real HTTP server with a
request log, a raw socket playing libVLC: it asks the station at most once a second, stops
asking once the station hung up without audio, and closes the station's connection at once."""

from __future__ import annotations

import errno
import itertools
import os
import socket
import threading
import time
from http.server import SimpleHTTPRequestHandler
from typing import Any

import pytest

from receiver.stream_gate import MIN_INTERVAL_S, StreamGate
from tests.lab.stations import Route, WebServer, answer, trickle


def ask(gate: StreamGate) -> bytes:
    """One request to the gate, as libVLC makes it; the whole answer."""
    port = int(gate.url.rsplit(":", 1)[1].split("/", 1)[0])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\nIcy-MetaData: 1\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_the_station_is_asked_at_most_once_a_second(web: WebServer) -> None:
    url = web.route("/short.mp3", answer(200, "audio/mpeg", b"\xff\xfb" * 200, icy_name="x"))
    gate = StreamGate(url)
    try:
        answers = [ask(gate) for _ in range(4)]  # libVLC reconnecting as fast as it can
    finally:
        gate.close()
    for data in answers:
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 OK") and b"icy-" not in head.lower(), head
        assert body == b"\xff\xfb" * 200
    times = [r.mono for r in web.requests]
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= MIN_INTERVAL_S - 0.05, gaps


def test_once_the_station_hangs_up_without_audio_it_is_not_asked_again(web: WebServer) -> None:
    url = web.route("/gone.mp3", answer(200, "audio/mpeg", b"", icy_name="x"))
    gate = StreamGate(url)
    try:
        first = ask(gate)
        later = [ask(gate) for _ in range(5)]
    finally:
        gate.close()
    assert first.startswith(b"HTTP/1.0 200 OK") and first.endswith(b"\r\n\r\n")
    assert all(data.startswith(b"HTTP/1.0 503") for data in later), later
    assert len(web.requests) == 1


def test_an_error_answer_ends_it_too(web: WebServer) -> None:
    gate = StreamGate(web.url("/missing.mp3"))  # 404
    try:
        answers = [ask(gate) for _ in range(3)]
    finally:
        gate.close()
    assert all(data.startswith(b"HTTP/1.0 503") for data in answers), answers
    assert len(web.requests) == 1


def test_close_hangs_up_on_the_station_at_once(web: WebServer) -> None:
    url = web.route("/slow.mp3", trickle(0.1, limit_s=20))
    gate = StreamGate(url)
    port = int(gate.url.rsplit(":", 1)[1].split("/", 1)[0])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        deadline = time.monotonic() + 5
        while web.serving == 0:
            assert time.monotonic() < deadline, "the gate never asked the station"
            time.sleep(0.02)
        gate.close()
        closed = time.monotonic()
        while web.serving:
            assert time.monotonic() - closed < 1.0, "the station's connection is still open"
            time.sleep(0.02)
        assert sock.recv(65536) == b""  # and libVLC's connection is closed too


# --- a gate closed while its threads are between two system calls ---------------------------
#
# CPython's socket methods read the socket's descriptor, let go of the interpreter lock, then
# make the system call. A thread paused in between holds only a number: if another thread closes
# the socket meanwhile and a new socket gets that number (the kernel hands out the lowest free
# one), the call lands on the new socket. In the player's child, the next socket is often the
# next relay's gate, or libVLC's connection to it.


class Pause:
    """Pauses the first ``method`` call of a gate's thread made after :meth:`arm`, right after
    it read its socket's descriptor, until :meth:`release`; then makes the call on that number,
    whatever it names by then (as CPython does once it let go of the interpreter lock)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
        self.paused = threading.Event()
        self._resume = threading.Event()
        self._armed = threading.Lock()
        self._armed.acquire()
        self.results: list[object] = []  # what the paused call gave back
        real = getattr(socket.socket, method)

        def call(sock: socket.socket, *args: Any) -> Any:
            if not threading.current_thread().name.startswith("stream-gate"):
                return real(sock, *args)
            if not self._armed.acquire(blocking=False):
                return real(sock, *args)
            descriptor = sock.fileno()
            self.paused.set()
            self._resume.wait(10)
            if descriptor < 0:
                raise OSError(errno.EBADF, os.strerror(errno.EBADF))
            stale = socket.socket(fileno=descriptor)
            try:
                result = real(stale, *args)
            finally:
                stale.detach()
            self.results.append(result)
            return result

        monkeypatch.setattr(socket.socket, method, call)

    def arm(self) -> None:
        self._armed.release()

    def release(self) -> None:
        self._resume.set()


def steady(byte: bytes, limit_s: float = 20.0) -> Route:
    """A live station whose audio is ``byte`` over and over (which station a listener hears)."""

    def route(handler: SimpleHTTPRequestHandler) -> int:
        handler.send_response(200)
        handler.send_header("Content-Type", "audio/mpeg")
        handler.end_headers()
        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            handler.wfile.write(byte * 512)
            handler.wfile.flush()
            time.sleep(0.02)
        return 200

    return route


def port_of(gate: StreamGate) -> int:
    return int(gate.url.rsplit(":", 1)[1].split("/", 1)[0])


def listen(sock: socket.socket, gate: StreamGate, at_least: int) -> bytes:
    """libVLC's side of a relay: ask ``gate``, and read until ``at_least`` bytes of audio came."""
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port_of(gate)))
    sock.sendall(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while len(data.partition(b"\r\n\r\n")[2]) < at_least:
        chunk = sock.recv(65536)
        assert chunk, f"the gate hung up: {data[:200]!r}"
        data += chunk
    return data.partition(b"\r\n\r\n")[2]


def gate_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("stream-gate")}


def test_a_closed_gate_never_takes_the_next_gates_connections(
    web: WebServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Station A's relay stops while its gate's accept thread is between two calls; station B's
    relay starts: every connection libVLC makes to B's gate is B's."""
    pause = Pause(monkeypatch, "accept")
    pause.arm()
    old = StreamGate(web.route("/a.mp3", answer(200, "audio/mpeg", b"A" * 4000)))
    assert pause.paused.wait(10), "the gate never tried to accept"
    old.close()
    new = StreamGate(web.route("/b.mp3", answer(200, "audio/mpeg", b"B" * 4000)))
    try:
        pause.release()
        answers = [ask(new) for _ in range(3)]
    finally:
        new.close()
    assert pause.results == [], "the closed gate's thread took a connection meant for the next"
    for data in answers:
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 OK"), data[:200]
        assert body == b"B" * 4000


def test_a_closed_gate_never_plays_into_the_next_relay(
    web: WebServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Station A's relay stops while the gate is about to pass libVLC a piece of A's audio;
    station B's relay starts: libVLC's connection to B's gate carries B's audio only."""
    pause = Pause(monkeypatch, "sendall")
    old = StreamGate(web.route("/a.mp3", steady(b"A")))
    new: StreamGate | None = None
    with socket.socket() as first, socket.socket() as second:
        try:
            assert set(listen(first, old, 2000)) == {ord("A")}
            pause.arm()
            assert pause.paused.wait(10), "the gate stopped passing audio"
            old.close()
            new = StreamGate(web.route("/b.mp3", steady(b"B")))
            heard = listen(second, new, 2000)
            pause.release()
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                heard += second.recv(65536)
        finally:
            pause.release()
            if new is not None:
                new.close()
    assert set(heard) == {ord("B")}, f"station A on station B's relay: {heard.count(b'A')} bytes"


def test_after_close_nothing_of_the_gate_is_left(web: WebServer) -> None:
    """Closing a gate with libVLC connected: its threads end, its port refuses, and the next gate
    (on the same descriptor, as the kernel reuses the lowest free one) gets every connection."""
    before = gate_threads()
    old = StreamGate(web.route("/a.mp3", steady(b"A")))
    old_port = port_of(old)
    listener = old._listener.fileno()
    with socket.socket() as libvlc:
        assert set(listen(libvlc, old, 2000)) == {ord("A")}
        old.close()
        assert old.join(2.0), "a thread of the closed gate is still running"
        assert gate_threads() == before
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", old_port), timeout=5).close()
        new = StreamGate(web.route("/b.mp3", answer(200, "audio/mpeg", b"B" * 4000)))
        try:
            assert new._listener.fileno() == listener  # the descriptor is reused ...
            answers = [ask(new) for _ in range(2)]  # ... and only the new gate answers on it
        finally:
            new.close()
        assert new.join(2.0)
    assert all(data.endswith(b"\r\n\r\n" + b"B" * 4000) for data in answers), answers
    assert gate_threads() == before
