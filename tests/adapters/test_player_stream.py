"""Live streams and offsets through the libVLC adapter: real libVLC 3, a real stream server.

Output ``file`` (afile) writes a WAV into tmp_path; :mod:`tests.lab.streams` serves a real MP3
and a real chained Ogg/Vorbis stream of a 440 Hz tone, paced at real time with Icecast's headers
and its 4 s burst-on-connect, and breaks them on demand (``stall``, ``close``, ``gone``). No
mocks. What these tests measured with libVLC 3.0.24 (the figures print with ``pytest -s``; the
events contract they pin down is in ``receiver/player.py``):

* **Opening** an Icecast stream takes two requests: libVLC's newer ``https`` access gives up on
  seeing ``icy-*`` headers, and its legacy ``http`` access asks again and plays.
* **Stall** (connection open, no bytes): no event at all, the state stays ``Playing``, no
  reconnect; ``get_time()`` freezes 0.5-1 s after the last byte (when the input has read what
  it had), not when the buffered audio runs out. When bytes come again it moves on ~3 s later
  (a re-buffer of ``:network-caching``), still without an event.
* **Close**: the legacy access reconnects once, silently, whenever the server hangs up: if the
  new request is answered, the relay goes on with no event; if it is answered 404 (the source
  has left), ``PlaybackEnded`` follows once the buffered audio has been read (2-6 s here). A
  server that answers 200 and hangs up at once is re-asked in a tight loop (thousands of
  requests a second), with no event and a frozen position, until ``stop()``. A plain-HTTP
  stream (no ``icy-*``) stays with the newer access: it ends at the first close, unless
  ``live=True`` (``:http-continuous``) gives it the same single reconnect.
* **Unreachable** (refused, 404): ``PlaybackFailed`` and no ``PlaybackStarted``. A server that
  accepts and never answers leaves the item ``Opening`` for ever: no event, position 0.
* **Ogg** ``get_time()`` is the stream's own timestamp, runs on across chained links, and goes
  back when a reconnect rejoins earlier (the burst); ``position_ms()`` never goes back.
* afile truncates its WAV whenever the audio output restarts (at each Ogg link, after a stall),
  so a stream's sound is checked in the WAV while it is being written.
* ``start_ms`` (``:start-time``) starts a file at the offset, or at the demuxer block before it
  (0 or 50 ms early for a WAV); ``position_ms()`` then counts from the file's start.
"""

from __future__ import annotations

import itertools
import socket
import struct
import sys
import threading
import time
import wave
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue

import pytest

from receiver.config_model import PlayerConfig
from receiver.core.events import Event, PlaybackEnded, PlaybackFailed, PlaybackStarted
from receiver.player import Player
from tests.lab.audio import (
    dominant_of,
    goertzel_power,
    trim_silence,
    wait_for_final_wav,
    write_tone,
    zero_crossing_freq,
)
from tests.lab.streams import (
    Stream,
    StreamServer,
    encode,
    mp3_stream,
    ogg_stream,
    write_programme,
)
from tests.lab.tools import free_port

TIMEOUT_S = 10.0
POLL_S = 0.25
TONE_HZ = 440.0
CANDIDATES = (440.0, 1000.0)
OPENING_REQUESTS = 2  # the https access's request, then the legacy http access's (icy-* seen)
MP3 = "/tone.mp3"
OGG = "/tone.ogg"


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def programmes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stream]:
    """8 s of 440 Hz (with a little noise) as MP3 and Ogg/Vorbis, encoded once by libVLC."""
    d = tmp_path_factory.mktemp("streams")
    wav = write_programme(d / "tone.wav", TONE_HZ, 8.0)
    return {
        MP3: mp3_stream(encode(wav, d / "tone.mp3", "mp3")),
        OGG: ogg_stream(encode(wav, d / "tone.ogg", "ogg")),
    }


@pytest.fixture
def server(programmes: dict[str, Stream]) -> Iterator[StreamServer]:
    with StreamServer(programmes) as running:
        yield running


class Recorder:
    """The ``on_event`` callback: a queue, as the daemon's inbox is."""

    def __init__(self) -> None:
        self.queue: Queue[Event] = Queue()

    def __call__(self, event: Event) -> None:
        self.queue.put(event)

    def next(self, timeout_s: float = TIMEOUT_S) -> Event:
        try:
            return self.queue.get(timeout=timeout_s)
        except Empty:
            raise AssertionError(f"no event within {timeout_s} s") from None

    def pending(self) -> list[Event]:
        events: list[Event] = []
        while not self.queue.empty():
            events.append(self.queue.get_nowait())
        return events


@dataclass
class Rig:
    player: Player
    events: Recorder
    wav: Path


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    wav = tmp_path / "out.wav"
    events = Recorder()
    player = Player(PlayerConfig(output="file", wav_file=wav), events)
    yield Rig(player, events, wav)
    player.close()


# --- helpers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    at_s: float  # monotonic
    position_ms: int


def sample(player: Player, seconds: float) -> list[Sample]:
    """``position_ms()`` every POLL_S for ``seconds``, as the daemon's loop polls it."""
    samples = [Sample(time.monotonic(), player.position_ms())]
    end = samples[0].at_s + seconds
    while samples[-1].at_s < end:
        time.sleep(POLL_S)
        samples.append(Sample(time.monotonic(), player.position_ms()))
    return samples


def last_change(samples: list[Sample]) -> Sample:
    """The first sample that holds the final value (the moment the position froze)."""
    frozen = samples[-1]
    for s in reversed(samples):
        if s.position_ms != frozen.position_ms:
            break
        frozen = s
    return frozen


def wait_until(what: str, condition: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> float:
    """Poll ``condition()`` until true; return how long it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting until {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def growing_wav(path: Path) -> tuple[int, tuple[int, ...]]:
    """The rate and channel 0 of the WAV afile is still writing (its header sizes are 0)."""
    data = path.read_bytes()
    offset = 12
    rate = channels = 0
    while offset + 8 <= len(data):
        chunk, size = data[offset : offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        if chunk == b"fmt ":
            channels, rate = struct.unpack_from("<HI", data, offset + 10)
        if chunk == b"data":
            body = data[offset + 8 :]
            samples = array("h")
            samples.frombytes(body[: len(body) - len(body) % (2 * channels)])
            if sys.byteorder != "little":
                samples.byteswap()
            return rate, tuple(samples[0::channels])
        offset += 8 + size
    raise AssertionError(f"{path} has no data chunk yet")


def assert_tone(rate: int, samples: tuple[int, ...], freq_hz: float) -> None:
    sound = trim_silence(samples)
    assert len(sound) > rate  # over a second of it
    assert dominant_of(sound, rate, CANDIDATES) == freq_hz
    second = sound[len(sound) // 2 : len(sound) // 2 + rate]
    assert zero_crossing_freq(second, rate) == pytest.approx(freq_hz, rel=0.02)


def start_stream(rig: Rig, url: str) -> None:
    rig.player.play(1, url, 100, live=True)
    assert rig.events.next() == PlaybackStarted(1)
    wait_until("audio flows", lambda: rig.player.position_ms() >= 500)


# --- streams that play, stall and come back ----------------------------------------------


@pytest.mark.parametrize(("path", "resume"), [(MP3, True), (OGG, False)])
def test_a_stall_freezes_the_position_without_any_event(
    rig: Rig, server: StreamServer, path: str, resume: bool
) -> None:
    start_stream(rig, server.url(path))
    healthy = sample(rig.player, 1.0)
    moved = [b.position_ms - a.position_ms for a, b in itertools.pairwise(healthy)]
    assert all(step >= 0 for step in moved)
    assert healthy[-1].position_ms - healthy[0].position_ms >= 500  # about 1000: real time
    # afile starts a new WAV whenever the audio output restarts (an Ogg link, a rebuffer), so
    # the sound is checked now, in the file being written.
    assert_tone(*growing_wav(rig.wav), TONE_HZ)

    server.set_mode("stall")
    stalled_at = time.monotonic()
    stalled = sample(rig.player, 4.5)

    froze = last_change(stalled)
    froze_after = froze.at_s - stalled_at
    held = stalled[-1].at_s - froze.at_s
    print(f"\n{path}: position froze {froze_after:.2f} s after the stall, held {held:.1f} s")
    assert froze_after <= 1.5  # measured 0.5-1.0 s, while libVLC's buffer still plays
    assert held >= 3.0
    assert rig.events.pending() == []  # no Ended, no Failed: libVLC says nothing at all
    assert rig.player.position_ms() == froze.position_ms

    if resume:  # (once is enough: it takes a re-buffer, ~3 s)
        server.set_mode("healthy")  # the source comes back: the relay goes on, still no event
        took = wait_until(
            "the position moves again", lambda: rig.player.position_ms() > froze.position_ms
        )
        print(f"{path}: moved again {took:.2f} s after the stall ended")
        assert rig.events.pending() == []
    assert server.connections == OPENING_REQUESTS  # a stall makes libVLC reconnect: never

    started = time.monotonic()
    rig.player.stop()
    assert time.monotonic() - started < 1.0
    assert rig.player.position_ms() == -1
    assert rig.events.pending() == []


@pytest.mark.parametrize("path", [MP3, OGG])
def test_a_dropped_connection_is_rejoined_silently_and_a_gone_source_ends(
    rig: Rig, server: StreamServer, path: str
) -> None:
    start_stream(rig, server.url(path))

    server.set_mode("close", connection=OPENING_REQUESTS)  # one hang-up; the server stays up
    raw: list[int] = []
    positions: list[int] = []
    end = time.monotonic() + 4.0
    while time.monotonic() < end:
        raw.append(int(rig.player._mp.get_time()))  # libVLC's own value, to show the jump
        positions.append(rig.player.position_ms())
        time.sleep(POLL_S)

    assert server.connections == OPENING_REQUESTS + 1  # one silent reconnect
    assert rig.events.pending() == []
    assert positions == sorted(positions)  # never backwards, whatever get_time() did
    assert positions[-1] - positions[0] >= 2000  # and it went on
    went_back = max(a - b for a, b in itertools.pairwise(raw))
    print(f"\n{path}: get_time() went back by {max(went_back, 0)} ms after the rejoin")
    if path == OGG:  # the stream's own timestamp, and the rejoin starts 4 s back (the burst)
        assert went_back > 0  # measured 789 ms

    server.set_mode("gone")  # the source has left the mount: the reconnect is answered 404
    closed_at = time.monotonic()
    assert rig.events.next() == PlaybackEnded(1)
    print(f"{path}: PlaybackEnded {time.monotonic() - closed_at:.1f} s after the close")
    assert server.connections == OPENING_REQUESTS + 2  # exactly one more attempt
    assert rig.player.position_ms() == -1


def test_a_server_that_hangs_up_at_once_is_reasked_in_a_loop_until_stop(
    rig: Rig, server: StreamServer
) -> None:
    start_stream(rig, server.url(MP3))
    before = server.connections
    server.set_mode("close")  # every request: 200, headers, then hang up

    samples = sample(rig.player, 3.0)

    storm = server.connections - before
    froze = last_change(samples)
    froze_after = froze.at_s - samples[0].at_s
    print(f"\nrequests in 3 s: {storm}; the position froze after {froze_after:.2f} s")
    assert storm > 100  # measured: well over a thousand a second
    assert rig.events.pending() == []  # no event: only the frozen position tells
    assert samples[-1].at_s - froze.at_s >= 1.5  # frozen once the buffered bytes were read
    rig.player.stop()
    stopped = wait_for_quiet(server)
    time.sleep(0.3)
    assert server.connections == stopped  # stop() ended the loop


def wait_for_quiet(server: StreamServer, quiet_s: float = 0.5) -> int:
    """The server's request count once it has not moved for ``quiet_s`` (at most TIMEOUT_S).

    The server counts a request on its handler thread, after reading it: a request libVLC
    sent just before ``stop()`` may be counted after ``stop()`` has returned (under load, one
    was: 3050 against 3049). A loop that goes on never falls quiet, and fails here."""
    count, since = server.connections, time.monotonic()
    deadline = since + TIMEOUT_S
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, "requests still coming after stop()"
        time.sleep(0.05)
        if server.connections != count:
            count, since = server.connections, time.monotonic()
    return count


@pytest.mark.parametrize("live", [False, True])
def test_a_plain_http_stream_reconnects_only_when_live(
    rig: Rig, programmes: dict[str, Stream], live: bool
) -> None:
    with StreamServer(programmes, icy=False) as server:  # no icy-*: libVLC's newer access
        rig.player.play(1, server.url(MP3), 100, live=live)
        assert rig.events.next() == PlaybackStarted(1)
        wait_until("audio flows", lambda: rig.player.position_ms() >= 1000)
        assert server.connections == 1

        server.set_mode("close", connection=1)
        if not live:
            assert rig.events.next() == PlaybackEnded(1)  # the first close ends it
            assert server.connections == 1
            return
        position = rig.player.position_ms()
        wait_until("it plays on", lambda: rig.player.position_ms() > position + 1000)
        assert server.connections == 2
        assert rig.events.pending() == []

        server.set_mode("gone")
        assert rig.events.next() == PlaybackEnded(1)
        assert server.connections == 3


# --- streams that never play -----------------------------------------------------------------


def test_an_unreachable_stream_fails(rig: Rig, server: StreamServer) -> None:
    rig.player.play(1, f"http://127.0.0.1:{free_port()}/tone.mp3", 100, live=True)
    refused = rig.events.next()
    assert isinstance(refused, PlaybackFailed)
    assert refused.token == 1

    server.set_mode("gone")  # the mount has no source: 404
    rig.player.play(2, server.url(MP3), 100, live=True)
    missing = rig.events.next()
    assert isinstance(missing, PlaybackFailed)
    assert missing.token == 2
    assert rig.events.pending() == []
    assert rig.player.position_ms() == -1


def test_a_server_that_never_answers_leaves_the_item_opening(rig: Rig) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts (the kernel does), never answers
        rig.player.play(1, f"http://127.0.0.1:{listener.getsockname()[1]}/x.mp3", 100)

        samples = sample(rig.player, 1.0)

        assert rig.events.pending() == []  # no Started, no Failed
        assert {s.position_ms for s in samples} == {0}  # what the watchdog sees
        started = time.monotonic()
        rig.player.stop()
        assert time.monotonic() - started < 1.0


# --- files at an offset ----------------------------------------------------------------------


def write_two_tones(path: Path, first: Path, second: Path) -> Path:
    frames = b""
    with wave.open(str(first), "rb") as a, wave.open(str(second), "rb") as b:
        params = a.getparams()
        frames = a.readframes(a.getnframes()) + b.readframes(b.getnframes())
    with wave.open(str(path), "wb") as w:
        w.setparams(params)
        w.writeframes(frames)
    return path


@pytest.fixture(scope="module")
def two_tones(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s of 440 Hz, then 2 s of 1000 Hz."""
    d = tmp_path_factory.mktemp("offset")
    return write_two_tones(
        d / "two.wav",
        write_tone(d / "a.wav", 440, 2.0, amplitude=0.5),
        write_tone(d / "b.wav", 1000, 2.0, amplitude=0.5),
    )


def test_start_ms_starts_a_file_at_the_offset(rig: Rig, two_tones: Path) -> None:
    rig.player.play(1, str(two_tones), 100, start_ms=2000)

    assert rig.events.next() == PlaybackStarted(1)
    assert rig.events.next() == PlaybackEnded(1)
    info = wait_for_final_wav(rig.wav)
    print(f"\nstart_ms=2000: {info.duration_s:.3f} s played")
    # The second half, not the whole 4 s. libVLC starts at the demuxer's block at or before the
    # offset (this WAV's blocks are 50 ms): measured 2.000 or 2.050 s, from run to run.
    assert 2.0 - 0.01 <= info.duration_s <= 2.0 + 0.06
    rest = info.samples[round(0.06 * info.rate) :]  # past that block, 1000 Hz and nothing else
    assert zero_crossing_freq(rest, info.rate) == pytest.approx(1000, abs=1)
    assert goertzel_power(rest, info.rate, 440.0) < 1e-6 * goertzel_power(rest, info.rate, 1000.0)
    assert dominant_of(info.samples, info.rate, CANDIDATES) == 1000


def test_start_ms_mid_tone_and_its_position(rig: Rig, two_tones: Path) -> None:
    rig.player.play(1, str(two_tones), 100, start_ms=1500)
    assert rig.events.next() == PlaybackStarted(1)
    seen: list[int] = []
    done = threading.Event()

    def poll() -> None:  # the loop thread's job in the daemon; here a helper thread's
        while not done.is_set():
            seen.append(rig.player.position_ms())
            time.sleep(0.01)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        assert rig.events.next() == PlaybackEnded(1)
    finally:
        done.set()
        poller.join()
    info = wait_for_final_wav(rig.wav)
    assert info.duration_s == pytest.approx(2.5, abs=0.05)
    head = info.samples[: info.rate // 2]
    assert dominant_of(head, info.rate, CANDIDATES) == 440  # 0.5 s of the first tone
    assert dominant_of(info.samples[-info.rate :], info.rate, CANDIDATES) == 1000
    first = next((p for p in seen if p > 0), None)
    assert first is not None, f"no position seen while it played: {seen}"
    assert first >= 1500 - 60  # it counts from the file's start, not from the offset


@pytest.mark.parametrize(
    ("start_ms", "live", "message"),
    [
        (-1, False, "start_ms"),
        (True, False, "start_ms"),
        (1.5, False, "start_ms"),
        (1000, True, "live stream"),
    ],
)
def test_bad_offsets_are_refused(
    rig: Rig, two_tones: Path, start_ms: int, live: bool, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        rig.player.play(1, str(two_tones), 100, start_ms, live=live)
    assert rig.events.pending() == []
    assert rig.player.position_ms() == -1


def test_start_ms_past_the_end_just_ends(rig: Rig, two_tones: Path) -> None:
    rig.player.play(1, str(two_tones), 100, start_ms=60_000)

    assert [rig.events.next(), rig.events.next()] == [PlaybackStarted(1), PlaybackEnded(1)]
