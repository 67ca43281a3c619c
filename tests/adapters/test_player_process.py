"""The media engine in its supervised child process: it plays as the in-process player does, and
when the child crashes (SIGSEGV, as a libVLC thread's fault does) or wedges (SIGSTOP: it no longer
answers), ``PlayerCrashed`` comes at once or within ``PING_EVERY_S + ANSWER_TIMEOUT_S`` (under
1 s; a loaded machine is allowed a second more), the sound stops, and the next item plays in a
new child."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from queue import Empty, Queue

import pytest
import structlog.testing

from receiver.config_model import MediaConfig, PlayerConfig
from receiver.core.events import (
    Event,
    PlaybackEnded,
    PlaybackFailed,
    PlaybackStarted,
    PlayerCrashed,
)
from receiver.health import TRAFFIC_LOOPBACK_ENV, TrafficMeter
from receiver.player_child import Channel, child_settings
from receiver.player_process import ANSWER_TIMEOUT_S, PING_EVERY_S, ProcessPlayer
from tests.lab.audio import dominant_of, trim_silence, wait_for_final_wav, write_tone
from tests.lab.streams import StreamServer, encode, mp3_stream, write_programme

# How far ahead an instant for play(at=...) is set where the call, or a cancel after it, must
# come before the instant: a fraction of a second was overtaken on a loaded machine.
AHEAD_S = 2.0


class Recorder:
    def __init__(self) -> None:
        self.queue: Queue[tuple[float, Event]] = Queue()

    def __call__(self, event: Event) -> None:
        self.queue.put((time.monotonic(), event))

    def next(self, timeout_s: float = 10.0) -> tuple[float, Event]:
        try:
            return self.queue.get(timeout=timeout_s)
        except Empty:
            raise AssertionError(f"no event within {timeout_s} s") from None


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[ProcessPlayer, Recorder, Path]]:
    wav = tmp_path / "out.wav"
    events = Recorder()
    player = ProcessPlayer(PlayerConfig(output="file", wav_file=wav), events)
    yield player, events, wav
    player.close()


def wav_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def test_it_plays_a_file_and_reports_like_the_player(
    rig: tuple[ProcessPlayer, Recorder, Path], tmp_path: Path
) -> None:
    player, events, wav = rig
    tone = write_tone(tmp_path / "tone.wav", 1000.0, 1.0)
    player.play(1, str(tone), 100)
    assert events.next()[1] == PlaybackStarted(1)
    assert events.next()[1] == PlaybackEnded(1)
    sound = wait_for_final_wav(wav)
    assert dominant_of(trim_silence(sound.samples), sound.rate, (440.0, 1000.0)) == 1000.0
    with pytest.raises(ValueError, match="volume"):
        player.set_volume(101)


def test_a_play_the_engine_refuses_is_reported_failed_for_its_token(
    rig: tuple[ProcessPlayer, Recorder, Path], tmp_path: Path
) -> None:
    """A play is posted to the child, not waited for (the daemon's loop goes on while libVLC
    starts it): what the child refuses comes back as ``PlaybackFailed`` for that play's token,
    with the child's reason, and the engine plays on."""
    player, events, _ = rig
    tone = write_tone(tmp_path / "tone.wav", 1000.0, 0.3)
    player.play(3, str(tone), 101)
    _, event = events.next()
    assert isinstance(event, PlaybackFailed), event
    assert event.token == 3 and "volume" in event.detail, event
    player.play(4, str(tone), 100)
    assert events.next()[1] == PlaybackStarted(4)
    assert events.next()[1] == PlaybackEnded(4)


@pytest.mark.parametrize("how", [signal.SIGSEGV, signal.SIGSTOP], ids=["crash", "wedge"])
def test_a_dead_or_stuck_engine_is_reported_within_a_second_and_replaced(
    rig: tuple[ProcessPlayer, Recorder, Path], tmp_path: Path, how: signal.Signals
) -> None:
    player, events, wav = rig
    long_tone = write_tone(tmp_path / "long.wav", 440.0, 30.0)
    player.play(1, str(long_tone), 100)
    assert events.next()[1] == PlaybackStarted(1)
    time.sleep(0.5)
    pid = player.child_pid
    assert pid is not None
    hit = time.monotonic()
    os.kill(pid, how)
    # A crash shows at once (the pipe's EOF); a wedge at worst a ping interval and an
    # unanswered ping later, then the kill. Plus a second for a loaded machine's scheduling.
    designed_s = PING_EVERY_S + ANSWER_TIMEOUT_S if how is signal.SIGSTOP else 0.0
    at, event = events.next(designed_s + 3.0)
    assert isinstance(event, PlayerCrashed), event
    assert at - hit < designed_s + 1.0, f"reported {at - hit:.2f} s after the {how.name}"
    size = wav_size(wav)
    time.sleep(1.0)
    assert wav_size(wav) == size, "audio still flows after the engine was declared lost"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the stuck child was killed, not left behind
    tone = write_tone(tmp_path / "tone.wav", 1000.0, 1.0)
    player.play(2, str(tone), 100)  # a new engine for the next item
    assert events.next()[1] == PlaybackStarted(2)
    assert events.next()[1] == PlaybackEnded(2)
    assert player.child_pid not in (None, pid)


def test_the_child_loads_the_player_and_nothing_else_of_the_daemon() -> None:
    """Every module the child imports stays resident beside libVLC: not the daemon's logging,
    MQTT, YAML, crypto, configuration or core (bench/footprint.py measures what it holds)."""
    probe = (
        "import sys, receiver.player_child, receiver.player, receiver.streams, receiver.health;"
        "print(' '.join(sorted(sys.modules)))"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-I", "-c", probe], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    unwanted = {
        "structlog",
        "paho",
        "yaml",
        "cryptography",
        "ssl",
        "multiprocessing",
        "asyncio",
        "receiver.config",
        "receiver.config_model",
        "receiver.core.machine",
        "receiver.logs",
    }
    assert not {m for m in loaded if m.split(".")[0] in unwanted or m in unwanted}


# What the idle child must not hold: the first call that needs each imports it (together about
# 2 MiB, held beside libVLC for the daemon's life; bench/footprint.py measures the child).
IDLE_FREE = frozenset(
    {
        "typing",
        "socket",
        "pickle",
        "dataclasses",
        "ssl",
        "http.client",
        "receiver.core.events",
        "receiver.streams",
        "receiver.stream_gate",
        "receiver.health",
        "structlog",
    }
)


def test_the_idle_child_holds_none_of_what_only_playing_needs(tmp_path: Path) -> None:
    """The real child, started as the daemon starts it (``python -I``, with a stream resolver),
    asked what it has imported once ready."""
    media = MediaConfig(allowed_schemes=("http", "https"), allowed_hosts=("radio.example",))
    config = PlayerConfig(output="file", wav_file=tmp_path / "out.wav")
    player = ProcessPlayer(config, Recorder(), media=media)
    try:
        loaded = set(player.imported_modules())
    finally:
        player.close()
    assert {"vlc", "receiver.player"} <= loaded  # the real child, libVLC loaded
    assert not loaded & IDLE_FREE


def test_the_first_play_and_the_first_relay_import_what_the_idle_child_left_out(
    tmp_path: Path,
) -> None:
    """A fresh child's first file plays and is reported (the child sends plain fields, the
    daemon makes the core's events), and its first live relay is resolved and heard: the
    resolver and gate are imported then (on the resolver's thread), and the traffic meter."""
    tone = write_tone(tmp_path / "tone.wav", 1000.0, 1.0)
    wav = write_programme(tmp_path / "station.wav", 440.0, 8.0)
    station = {"/live.mp3": mp3_stream(encode(wav, tmp_path / "live.mp3", "mp3"))}
    events = Recorder()
    with StreamServer(station) as server:
        media = MediaConfig(allowed_schemes=("http",), allowed_hosts=(f"127.0.0.1:{server.port}",))
        config = PlayerConfig(output="file", wav_file=tmp_path / "out.wav")
        player = ProcessPlayer(config, events, media=media)
        try:
            assert not set(player.imported_modules()) & IDLE_FREE
            player.play(1, str(tone), 100)
            assert events.next()[1] == PlaybackStarted(1)
            assert events.next()[1] == PlaybackEnded(1)
            assert not set(player.imported_modules()) & IDLE_FREE  # a file needs none of it
            player.play(2, server.url("/live.mp3"), 100, live=True)
            assert events.next(20)[1] == PlaybackStarted(2)
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and player.position_ms() < 1500:
                time.sleep(0.2)
            assert player.position_ms() >= 1500  # the relay sounds
            relaying = set(player.imported_modules())
            assert {"receiver.streams", "receiver.stream_gate", "receiver.health"} <= relaying
            assert "receiver.core.events" not in relaying  # the daemon makes the events
            player.stop()
        finally:
            player.close()


def test_the_engines_media_bytes_reach_the_daemons_traffic_meter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libVLC's connections live in the child: it reports what they moved, so the state's
    ``health.traffic.media`` still counts a relay (it read 0 once libVLC left the daemon)."""
    monkeypatch.setenv(TRAFFIC_LOOPBACK_ENV, "1")  # the test's station is on loopback
    wav = write_programme(tmp_path / "tone.wav", 440.0, 8.0)
    station = {"/tone.mp3": mp3_stream(encode(wav, tmp_path / "tone.mp3", "mp3"))}
    events = Recorder()
    player = ProcessPlayer(PlayerConfig(output="file", wav_file=tmp_path / "out.wav"), events)
    meter = TrafficMeter(lambda: None, loopback=True, other_media=player.media_bytes)
    try:
        with StreamServer(station) as server:
            player.play(1, server.url("/tone.mp3"), 100, live=True)
            assert events.next()[1] == PlaybackStarted(1)
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and server.bytes_sent(1) < 20_000:
                time.sleep(0.25)
            time.sleep(2.5)  # the child reports every second
            meter.sample()
            # Over every connection libVLC made: under load it may open a second one.
            connections = server.connections
            sent_by_server = sum(server.bytes_sent(n) for n in range(1, connections + 1))
            _, received = meter.totals("media")
            player.stop()
    finally:
        player.close()
    assert sent_by_server >= 20_000
    # What libVLC received, with TCP/IP headers, is about what the station sent (the last
    # second may not be reported yet).
    assert 0.5 * sent_by_server <= received <= 1.5 * sent_by_server + 10_000, (
        received,
        sent_by_server,
        connections,
    )


def test_the_child_starts_a_prerolled_file_itself_at_the_instant_and_says_how_late(
    rig: tuple[ProcessPlayer, Recorder, Path], tmp_path: Path
) -> None:
    """The instant travels with the play (or ahead of it): the child, not the daemon's call,
    resumes the file then; its report comes through the daemon's log. A start cancelled before
    its instant never sounds."""
    player, events, wav = rig
    tone = write_tone(tmp_path / "tone.wav", 1000.0, 1.0)
    player.preroll(1, str(tone), 100)
    time.sleep(0.3)
    with structlog.testing.capture_logs() as logs:
        at = time.monotonic() + AHEAD_S
        player.play(1, str(tone), 100, at=at)
        assert time.monotonic() < at  # handed over, not waited for
        started_at, started = events.next()
        assert started == PlaybackStarted(1) and started_at >= at
        assert events.next()[1] == PlaybackEnded(1)
        deadline = time.monotonic() + 5.0
        while not any(line["event"] == "started_at_instant" for line in logs):
            assert time.monotonic() < deadline, logs
            time.sleep(0.01)
    (report,) = [line for line in logs if line["event"] == "started_at_instant"]
    assert report["token"] == 1 and report["late_ms"] >= 0
    sound = wait_for_final_wav(wav)
    assert dominant_of(trim_silence(sound.samples), sound.rate, (440.0, 1000.0)) == 1000.0
    wav.unlink()
    player.preroll(2, str(tone), 100)
    at = time.monotonic() + AHEAD_S
    player.play(2, str(tone), 100, at=at)
    player.stop()
    time.sleep(at - time.monotonic() + 1.0)
    with pytest.raises(AssertionError, match="no event"):
        events.next(timeout_s=0.1)
    assert wav_size(wav) == 0


def test_a_child_whose_daemon_went_away_while_it_started_ends_without_a_traceback(
    tmp_path: Path,
) -> None:
    """A daemon stopped (Ctrl-C, SIGTERM) just after it started its media engine left the child
    printing a BrokenPipeError traceback on the technician's terminal as it said it was ready."""
    ours, theirs = socket.socketpair()
    child = subprocess.Popen(
        [sys.executable, "-I", "-m", "receiver.player_child", str(theirs.fileno())],
        pass_fds=(theirs.fileno(),),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    theirs.close()
    Channel(ours).send(
        child_settings(PlayerConfig(output="file", wav_file=tmp_path / "o.wav"), None)
    )
    ours.close()  # the daemon is gone before the child says it is ready
    _, errors = child.communicate(timeout=30)
    assert child.returncode == 0
    assert "Traceback" not in errors, errors
