"""The daemon's side of the player's channel: a media engine ended or replaced while its reader
thread is about to read never makes that thread read another socket that took the channel's
descriptor number (the next engine's channel, say), so the next engine starts and answers."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from receiver.config_model import PlayerConfig
from receiver.core.events import Event
from receiver.errors import PlayerError
from receiver.player_child import decode, encode
from receiver.player_process import ProcessPlayer


class PausedRead:
    """Pauses the player reader's first ``recv`` after :meth:`arm` right after it read its
    socket's descriptor, until :meth:`release`; then reads on that number, whatever it names by
    then (as CPython does once it has let go of the interpreter lock)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paused = threading.Event()
        self.descriptor = -1
        self.results: list[bytes] = []  # what the paused read got
        self._resume = threading.Event()
        self._armed = threading.Lock()
        self._armed.acquire()
        real = socket.socket.recv

        def recv(sock: socket.socket, *args: Any) -> bytes:
            if threading.current_thread().name != "player-reader":
                return real(sock, *args)
            if not self._armed.acquire(blocking=False):
                return real(sock, *args)
            self.descriptor = descriptor = sock.fileno()
            self.paused.set()
            self._resume.wait(20)
            if descriptor < 0:
                raise OSError(errno.EBADF, os.strerror(errno.EBADF))
            stale = socket.socket(fileno=descriptor)
            try:
                stale.settimeout(5)
                result = real(stale, *args)
            finally:
                stale.detach()
            self.results.append(result)
            return result

        monkeypatch.setattr(socket.socket, "recv", recv)

    def arm(self) -> None:
        self._armed.release()

    def release(self) -> None:
        self._resume.set()


@pytest.fixture
def player(tmp_path: Path) -> Iterator[ProcessPlayer]:
    events: list[Event] = []
    config = PlayerConfig(output="file", wav_file=tmp_path / "out.wav")
    engine = ProcessPlayer(config, events.append)
    try:
        yield engine
    finally:
        engine.close()


def test_a_replaced_engines_reader_never_reads_the_next_engines_channel(
    player: ProcessPlayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pause = PausedRead(monkeypatch)
    player.set_volume(50)  # the first engine, its reader waiting in a read
    pause.arm()
    asking = threading.Thread(target=_quietly, args=(player.set_volume, 60), daemon=True)
    asking.start()  # its answer wakes the reader, whose next read pauses
    assert pause.paused.wait(10), "the reader never read again"
    player._end_child()  # the engine is ended (as on a hang, or close) ...
    real_socketpair = socket.socketpair

    def socketpair(*args: Any) -> tuple[socket.socket, socket.socket]:
        pair = real_socketpair(*args)
        pause.release()  # ... and the old reader reads on while the next one starts
        time.sleep(0.3)
        return pair

    monkeypatch.setattr(socket, "socketpair", socketpair)
    try:
        player.set_volume(70)  # the next engine starts and answers ...
        monkeypatch.setattr(socket, "socketpair", real_socketpair)
        player.set_volume(80)  # ... and goes on answering
    except PlayerError as exc:
        pytest.fail(f"the next engine was broken by the old one's reader: {exc}")
    asking.join(10)
    # What the old reader got is the old engine's: its answer to the 60 (seq 2), or the end.
    for result in pause.results:
        message = decode(result) if result else None
        assert message in (None, ("reply", 2, "ok", None)), f"read another socket: {message!r}"


def _quietly(call: Any, *args: Any) -> None:
    with contextlib.suppress(Exception):
        call(*args)


def test_after_close_the_reader_is_gone_and_its_socket_closed(player: ProcessPlayer) -> None:
    player.set_volume(50)
    conn = player._conn
    assert conn is not None
    readers = [t for t in threading.enumerate() if t.name == "player-reader"]
    player.close()
    for reader in readers:
        reader.join(5)
        assert not reader.is_alive(), "the reader outlived its engine"
    assert conn._sock.fileno() == -1, "the channel's socket was left open"


def test_plain_messages_are_marshalled_and_anything_else_pickled() -> None:
    """Every message the two ends exchange today is plain values, sent without pickle (which
    the idle child then never loads); an object still crosses, pickled."""
    call = ("call", 7, "play", (3, "/var/cache/a.wav", 80, 0), {"live": False, "at": 12.5})
    assert encode(call)[:1] == b"m"
    assert decode(encode(call)) == call
    odd = ("reply", 8, "ok", Path("/var/cache/a.wav"))
    assert encode(odd)[:1] == b"p"
    assert decode(encode(odd)) == odd
    with pytest.raises(ValueError, match="not a channel message"):
        decode(b"x1234")
