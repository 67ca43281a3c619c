"""The stream gate on its own (:mod:`receiver.stream_gate`), against a real HTTP server with a
request log, a raw socket playing libVLC: it asks the station at most once a second, stops
asking once the station hung up without audio, and closes the station's connection at once."""

from __future__ import annotations

import itertools
import socket
import time

from receiver.stream_gate import MIN_INTERVAL_S, StreamGate
from tests.lab.stations import WebServer, answer, trickle


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
