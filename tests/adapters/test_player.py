"""The libVLC adapter against real libVLC, with output ``file`` (afile) writing a WAV into tmp_path.

No mocks: every test plays real audio through libVLC 3 and reads the WAV back (``tests.lab.audio``).
Events are awaited on a queue with timeouts; afile runs ahead of real time, so nothing here
asserts timing. What these tests found out about libVLC 3.0.24 (also in ``receiver/player.py``):

* afile reopens its file (``wb``) for every item: the second item **overwrites** the WAV. The
  header's sizes are filled in when the output stops, a moment after ``EndReached``, hence
  :func:`tests.lab.audio.wait_for_final_wav`. ``stop()`` and ``close()`` stop it synchronously.
* afile ignores ``audio_set_volume``; the adapter emulates VLC's cubic volume law there with the
  equalizer preamp, so volume 50 measures 0.125 (0.5 cubed, -18 dB) of volume 100.
* A missing file, a refused connection or an HTTP 404 is libVLC's ``Error`` state (no
  ``Playing``). A text file or random bytes give ``Playing`` then ``EndReached`` and no error;
  the adapter reports those as ``PlaybackFailed`` because no audio track was ever announced.
* Stopping never gives ``EndReached``; the adapter reports nothing more for a stopped or
  superseded token. ``libvlc_media_player_stop`` would also destroy the audio output, so that
  ``audio_set_volume`` fails until the next item is already playing; the adapter stops with
  ``set_media(None)`` instead, and the item after a stop still starts at its own volume.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue

import pytest

from receiver.config_model import PlayerConfig
from receiver.core.events import Event, PlaybackEnded, PlaybackFailed, PlaybackStarted
from receiver.player import ANY_TOKEN, Player, PlayerError, instance_args
from tests.lab.audio import (
    FULL_SCALE,
    dominant_of,
    read_wav,
    rms,
    trim_silence,
    wait_for_final_wav,
    wav_is_final,
    write_tone,
    zero_crossing_freq,
)
from tests.lab.tools import free_port
from tests.lab.web import RoutedServer, serve

TIMEOUT_S = 10.0
AMPLITUDE = 0.5  # of full scale, for every generated tone
SINE_RMS = AMPLITUDE * FULL_SCALE / 2**0.5
CANDIDATES = (440.0, 1000.0)
# How far ahead an instant for play(at=...) is set where the call, or a cancel after it, must
# come before the instant: a fraction of a second was overtaken on a loaded machine.
AHEAD_S = 2.0


class Recorder:
    """The ``on_event`` callback: a queue, as the daemon's inbox is."""

    def __init__(self) -> None:
        self.queue: Queue[Event] = Queue()

    def __call__(self, event: Event) -> None:
        self.queue.put(event)

    def until_terminal(self, token: int) -> list[Event]:
        """Every event up to and including the terminal event (Ended/Failed) of ``token``."""
        events: list[Event] = []
        while True:
            try:
                event = self.queue.get(timeout=TIMEOUT_S)
            except Empty:
                raise AssertionError(
                    f"no terminal event for {token} within {TIMEOUT_S} s: {events}"
                ) from None
            events.append(event)
            if isinstance(event, PlaybackEnded | PlaybackFailed) and event.token == token:
                return events

    def next(self) -> Event:
        try:
            return self.queue.get(timeout=TIMEOUT_S)
        except Empty:
            raise AssertionError(f"no event within {TIMEOUT_S} s") from None


@dataclass
class Rig:
    player: Player
    events: Recorder
    wav: Path


@dataclass(frozen=True)
class Tones:
    a440: Path  # 1.5 s
    b1000: Path  # 1.0 s
    mid: Path  # 4 s of 440 Hz, for a volume change while playing
    long: Path  # 10 s of 400 Hz at 8 kHz, to be stopped


@pytest.fixture(scope="module")
def tones(tmp_path_factory: pytest.TempPathFactory) -> Tones:
    d = tmp_path_factory.mktemp("tones")
    return Tones(
        a440=write_tone(d / "a440.wav", 440, 1.5, amplitude=AMPLITUDE),
        b1000=write_tone(d / "b1000.wav", 1000, 1.0, amplitude=AMPLITUDE),
        mid=write_tone(d / "mid.wav", 440, 4.0, amplitude=AMPLITUDE),
        long=write_tone(d / "long.wav", 400, 10.0, rate=8000, amplitude=AMPLITUDE),
    )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    wav = tmp_path / "out.wav"
    events = Recorder()
    player = Player(PlayerConfig(output="file", wav_file=wav), events)
    yield Rig(player, events, wav)
    player.close()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


def audio_flows(wav: Path) -> bool:
    return wav.exists() and wav.stat().st_size > 1000


def tokens(events: list[Event]) -> set[int]:
    return {
        e.token for e in events if isinstance(e, PlaybackStarted | PlaybackEnded | PlaybackFailed)
    }


# --- configuration ---------------------------------------------------------------------------


def test_instance_args_select_the_output(tmp_path: Path) -> None:
    base = ["--intf=dummy", "--no-video", "--quiet"]
    alsa = PlayerConfig(output="alsa", alsa_device="hw:CARD=Headphones", vlc_args=("-v",))
    assert instance_args(alsa) == [
        *base,
        "--aout=alsa",
        "--alsa-audio-device=hw:CARD=Headphones",
        "-v",
    ]
    assert instance_args(PlayerConfig(output="alsa")) == [*base, "--aout=alsa"]
    assert instance_args(PlayerConfig(output="pulse")) == [*base, "--aout=pulse"]
    wav = tmp_path / "o.wav"
    assert instance_args(PlayerConfig(output="file", wav_file=wav)) == [
        *base,
        "--aout=afile",
        f"--audiofile-file={wav}",
        "--audiofile-wav",
        "--audiofile-format=s16",
    ]
    with pytest.raises(PlayerError, match="wav_file"):
        instance_args(PlayerConfig(output="file"))
    with pytest.raises(PlayerError, match=r"unknown player\.output"):
        instance_args(PlayerConfig(output="jack"))


def test_bad_vlc_args_raise_player_error(tmp_path: Path) -> None:
    config = PlayerConfig(output="file", wav_file=tmp_path / "o.wav", vlc_args=("--no-such-opt",))
    with pytest.raises(PlayerError, match="vlc_args"):
        Player(config, Recorder())


# --- playing ---------------------------------------------------------------------------------


def test_a_tone_is_started_ended_and_lands_in_the_wav(rig: Rig, tones: Tones) -> None:
    assert rig.player.position_ms() == -1
    rig.player.play(1, str(tones.a440), 100)

    assert rig.events.until_terminal(1) == [PlaybackStarted(1), PlaybackEnded(1)]
    info = wait_for_final_wav(rig.wav)
    assert info.duration_s == pytest.approx(1.5, abs=0.05)
    sound = trim_silence(info.samples)
    assert zero_crossing_freq(sound, info.rate) == pytest.approx(440, abs=2)
    assert dominant_of(sound, info.rate, CANDIDATES) == 440
    assert rms(sound) == pytest.approx(SINE_RMS, rel=0.02)  # volume 100 is 0 dB
    assert rig.player.position_ms() == -1


def test_the_next_item_has_its_own_token_and_overwrites_the_wav(rig: Rig, tones: Tones) -> None:
    rig.player.play(1, str(tones.a440), 100)
    rig.events.until_terminal(1)
    wait_for_final_wav(rig.wav)

    rig.player.play(2, str(tones.b1000), 100)

    assert rig.events.until_terminal(2) == [PlaybackStarted(2), PlaybackEnded(2)]
    info = wait_for_final_wav(rig.wav)
    assert info.duration_s == pytest.approx(1.0, abs=0.05)  # not 2.5: afile does not append
    sound = trim_silence(info.samples)
    assert zero_crossing_freq(sound, info.rate) == pytest.approx(1000, abs=3)
    assert dominant_of(sound, info.rate, CANDIDATES) == 1000


def test_volume_50_is_cubic_and_applies_from_the_first_sample(rig: Rig, tones: Tones) -> None:
    rig.player.play(1, str(tones.a440), 100)
    rig.events.until_terminal(1)
    loud = wait_for_final_wav(rig.wav)

    rig.player.play(2, str(tones.a440), 50)
    rig.events.until_terminal(2)
    quiet = wait_for_final_wav(rig.wav)

    ratio = rms(trim_silence(quiet.samples)) / rms(trim_silence(loud.samples))
    assert 0.11 <= ratio <= 0.14  # measured 0.125 = 0.5 ** 3 (-18 dB), VLC's software law
    first_20ms = quiet.samples[: quiet.rate // 50]
    loud_peak = max(abs(s) for s in loud.samples)
    assert max(abs(s) for s in first_20ms) <= 0.14 * loud_peak  # no burst at the old level


def test_set_volume_while_playing_lowers_the_rest(rig: Rig, tones: Tones) -> None:
    rig.player.play(1, str(tones.mid), 100)
    assert rig.events.next() == PlaybackStarted(1)
    wait_until(lambda: rig.player.position_ms() >= 200, "some audio has been written")

    rig.player.set_volume(50)

    assert rig.events.until_terminal(1) == [PlaybackEnded(1)]
    info = wait_for_final_wav(rig.wav)
    rate = info.rate
    head = rms(info.samples[: rate // 10])
    tail = rms(info.samples[-rate // 2 : -rate // 20])
    assert head == pytest.approx(SINE_RMS, rel=0.02)
    assert 0.11 <= tail / head <= 0.14


def test_volume_out_of_range_is_refused(rig: Rig, tones: Tones) -> None:
    with pytest.raises(ValueError, match=r"0\.\.100"):
        rig.player.play(1, str(tones.a440), 101)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        rig.player.set_volume(-1)
    assert rig.events.queue.empty()


# --- failures --------------------------------------------------------------------------------


def test_a_missing_file_fails_without_starting(rig: Rig, tmp_path: Path) -> None:
    rig.player.play(3, str(tmp_path / "missing.mp3"), 100)

    events = rig.events.until_terminal(3)
    assert len(events) == 1
    assert isinstance(events[0], PlaybackFailed)
    assert "could not open" in events[0].detail


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("notes.mp3", b"this is a text file, not an announcement\n" * 50),
        ("noise.wav", random.Random(1234).randbytes(64_000)),  # noqa: S311 - test noise
    ],
)
def test_a_file_without_audio_is_a_failure_not_silence(
    rig: Rig, tmp_path: Path, name: str, content: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    rig.player.play(4, str(path), 100)

    events = rig.events.until_terminal(4)
    # libVLC itself says Playing, then EndReached: the adapter turns that into a failure.
    assert events[-1] == PlaybackFailed(4, "no audio track: not an audio file or stream")
    assert not any(isinstance(e, PlaybackEnded) for e in events)
    assert not rig.wav.exists()  # afile never started


# --- stopping and superseding ---------------------------------------------------------------


def test_stop_while_playing_reports_nothing_more_for_that_token(rig: Rig, tones: Tones) -> None:
    rig.player.play(7, str(tones.long), 100)
    assert rig.events.next() == PlaybackStarted(7)
    wait_until(lambda: audio_flows(rig.wav), "samples reach the WAV")
    assert rig.player.position_ms() >= 0

    rig.player.stop()

    assert rig.player.position_ms() == -1
    assert wav_is_final(rig.wav)  # stop() stopped the output synchronously
    assert read_wav(rig.wav).duration_s < 9.0  # cut short (afile runs ~1 s ahead)
    # The next item still gets its volume before its first sample (libvlc_media_player_stop
    # would have destroyed the audio output, and audio_set_volume would fail until too late).
    rig.player.play(8, str(tones.a440), 50)
    events = rig.events.until_terminal(8)
    assert events == [PlaybackStarted(8), PlaybackEnded(8)]  # nothing at all for 7
    info = wait_for_final_wav(rig.wav)
    assert 0.11 <= rms(info.samples[: info.rate // 10]) / SINE_RMS <= 0.14


def test_a_prerolled_file_waits_paused_and_starts_on_play_with_its_whole_sound(
    rig: Rig, tones: Tones
) -> None:
    """Pre-roll for a start at an instant: opened and paused, nothing reported, no sample out;
    ``play()`` with the same token resumes it, and the whole tone lands in the WAV."""
    rig.player.preroll(3, str(tones.a440), 50)
    time.sleep(0.5)  # libVLC opened it (it passes through Playing to Paused: not a start)
    assert rig.events.queue.empty()
    assert not audio_flows(rig.wav)
    began = time.monotonic()
    rig.player.play(3, str(tones.a440), 100)  # the volume of the play wins
    assert rig.events.next() == PlaybackStarted(3)
    resumed_s = time.monotonic() - began
    assert rig.events.until_terminal(3) == [PlaybackEnded(3)]
    info = wait_for_final_wav(rig.wav)
    assert info.duration_s == pytest.approx(1.5, abs=0.05)  # from its very start
    assert rms(trim_silence(info.samples)) == pytest.approx(SINE_RMS, rel=0.02)
    print(f"prerolled item started {resumed_s * 1000:.1f} ms after play()")


def test_a_preroll_that_is_not_the_played_item_is_replaced_or_dropped(
    rig: Rig, tones: Tones
) -> None:
    rig.player.preroll(4, str(tones.a440), 100)
    rig.player.play(5, str(tones.b1000), 100)  # another token: opened as usual
    assert rig.events.until_terminal(5) == [PlaybackStarted(5), PlaybackEnded(5)]
    rig.player.preroll(6, str(tones.a440), 100)
    rig.player.play(6, str(tones.b1000), 100)  # same token, other file: opened as usual
    assert rig.events.until_terminal(6) == [PlaybackStarted(6), PlaybackEnded(6)]
    info = wait_for_final_wav(rig.wav)
    assert dominant_of(trim_silence(info.samples), info.rate, CANDIDATES) == 1000  # the played
    rig.player.preroll(7, str(tones.a440), 100)
    rig.player.drop_preroll(8)  # not the waiting one: nothing happens
    rig.player.drop_preroll(7)
    rig.player.play(7, str(tones.a440), 100)  # dropped: opened again, and still plays
    assert rig.events.until_terminal(7) == [PlaybackStarted(7), PlaybackEnded(7)]
    with pytest.raises(ValueError):
        rig.player.preroll(9, "http://127.0.0.1:1/a.mp3", 100)


class LogRecorder:
    """A logger for the player (``info``, ``warning``, ``error``, ``exception``): its lines."""

    def __init__(self) -> None:
        self.lines: Queue[tuple[str, dict[str, object]]] = Queue()

    def _line(self, event: str, **fields: object) -> None:
        self.lines.put((event, fields))

    info = warning = error = exception = _line

    def next(self, event: str) -> dict[str, object]:
        while True:
            try:
                name, fields = self.lines.get(timeout=TIMEOUT_S)
            except Empty:
                raise AssertionError(f"no {event} log line within {TIMEOUT_S} s") from None
            if name == event:
                return fields


@pytest.fixture
def timed_rig(tmp_path: Path) -> Iterator[tuple[Rig, LogRecorder, list[float]]]:
    """A rig whose events are stamped (``time.monotonic()``) as they come, and whose log
    lines are kept."""
    wav = tmp_path / "out.wav"
    events = Recorder()
    stamps: list[float] = []

    def stamped(event: Event) -> None:
        if isinstance(event, PlaybackStarted):
            stamps.append(time.monotonic())
        events(event)

    log = LogRecorder()
    player = Player(PlayerConfig(output="file", wav_file=wav), stamped, log=log)
    yield Rig(player, events, wav), log, stamps
    player.close()


def test_a_prerolled_file_given_an_instant_starts_itself_then_with_its_whole_sound(
    timed_rig: tuple[Rig, LogRecorder, list[float]], tones: Tones
) -> None:
    """``play(at=...)``: the call returns at once and the player resumes the file itself at the
    instant, never before it, and says how late libVLC's Playing came."""
    rig, log, stamps = timed_rig
    rig.player.preroll(3, str(tones.a440), 50)
    time.sleep(0.5)
    at = time.monotonic() + AHEAD_S
    rig.player.play(3, str(tones.a440), 100, at=at)
    assert time.monotonic() < at and rig.events.queue.empty()  # armed, not started
    assert rig.events.until_terminal(3) == [PlaybackStarted(3), PlaybackEnded(3)]
    assert stamps[0] >= at  # never before the instant
    report = log.next("started_at_instant")
    assert report["token"] == 3 and report["at"] == round(at, 6)
    assert isinstance(report["late_ms"], float) and report["late_ms"] >= 0
    info = wait_for_final_wav(rig.wav)
    assert info.duration_s == pytest.approx(1.5, abs=0.05)  # from its very start
    assert rms(trim_silence(info.samples)) == pytest.approx(SINE_RMS, rel=0.02)  # play's volume
    print(f"started {report['late_ms']} ms after the instant")


def test_a_file_given_an_instant_without_a_preroll_is_opened_and_starts_then(
    timed_rig: tuple[Rig, LogRecorder, list[float]], tones: Tones
) -> None:
    rig, _, stamps = timed_rig
    at = time.monotonic() + 0.5
    rig.player.play(4, str(tones.b1000), 100, at=at)
    assert rig.events.until_terminal(4) == [PlaybackStarted(4), PlaybackEnded(4)]
    assert stamps[0] >= at
    info = wait_for_final_wav(rig.wav)
    assert dominant_of(trim_silence(info.samples), info.rate, CANDIDATES) == 1000
    with pytest.raises(ValueError, match="local file"):
        rig.player.play(5, "http://127.0.0.1:1/a.mp3", 100, at=at)


@pytest.mark.parametrize("cancel", ["stop", "drop_preroll", "close"])
def test_a_start_at_an_instant_cancelled_before_it_never_sounds(
    timed_rig: tuple[Rig, LogRecorder, list[float]], tones: Tones, cancel: str
) -> None:
    """Cancelled before its instant, an armed start must not sound, then or later."""
    rig, _, _ = timed_rig
    rig.player.preroll(6, str(tones.a440), 100)
    time.sleep(0.3)
    at = time.monotonic() + AHEAD_S
    rig.player.play(6, str(tones.a440), 100, at=at)
    if cancel == "stop":
        rig.player.stop()
    elif cancel == "drop_preroll":
        rig.player.drop_preroll(6)
    else:
        rig.player.close()
    time.sleep(at - time.monotonic() + 1.0)  # past the instant, by a second
    assert rig.events.queue.empty()  # no start, no end
    assert not audio_flows(rig.wav)  # and not a sample out
    if cancel != "close":  # the player still plays what comes next
        rig.player.play(7, str(tones.b1000), 100)
        assert rig.events.until_terminal(7) == [PlaybackStarted(7), PlaybackEnded(7)]


def test_a_start_at_an_instant_superseded_or_started_at_once_starts_only_once(
    timed_rig: tuple[Rig, LogRecorder, list[float]], tones: Tones
) -> None:
    rig, _, _ = timed_rig
    rig.player.preroll(8, str(tones.a440), 100)
    rig.player.play(8, str(tones.a440), 100, at=time.monotonic() + AHEAD_S)
    rig.player.play(8, str(tones.a440), 100)  # now after all: the armed start has no more to do
    assert rig.events.until_terminal(8) == [PlaybackStarted(8), PlaybackEnded(8)]
    at = time.monotonic() + AHEAD_S
    rig.player.play(9, str(tones.a440), 100, at=at)
    rig.player.play(10, str(tones.b1000), 100)  # another item: the armed one is cancelled
    assert rig.events.until_terminal(10) == [PlaybackStarted(10), PlaybackEnded(10)]
    time.sleep(max(0.0, at - time.monotonic()) + 0.5)
    assert rig.events.queue.empty()  # nothing of 9, ever
    info = wait_for_final_wav(rig.wav)
    assert dominant_of(trim_silence(info.samples), info.rate, CANDIDATES) == 1000
    rig.wav.unlink()
    at = time.monotonic() + AHEAD_S
    rig.player.play(11, str(tones.a440), 100, at=at)
    rig.player.preroll(12, str(tones.b1000), 100)  # another file waits paused: 11 is cancelled
    time.sleep(at - time.monotonic() + 1.0)
    assert rig.events.queue.empty()  # neither 11 nor the paused 12 started at 11's instant
    assert not audio_flows(rig.wav)


def test_a_file_prerolled_before_its_play_is_named_is_adopted_by_that_play(
    rig: Rig, tones: Tones
) -> None:
    """Token 0: opened for whichever play of that file comes next, which gives it its token
    (and its volume); another file's play opens its own, and drop_preroll(0) lets one go."""
    rig.player.preroll(ANY_TOKEN, str(tones.a440), 0)
    rig.player.play(12, str(tones.a440), 100)
    assert rig.events.until_terminal(12) == [PlaybackStarted(12), PlaybackEnded(12)]
    info = wait_for_final_wav(rig.wav)
    assert info.duration_s == pytest.approx(1.5, abs=0.05)
    assert rms(trim_silence(info.samples)) == pytest.approx(SINE_RMS, rel=0.02)
    rig.player.preroll(ANY_TOKEN, str(tones.a440), 0)
    rig.player.play(13, str(tones.b1000), 100)
    assert rig.events.until_terminal(13) == [PlaybackStarted(13), PlaybackEnded(13)]
    rig.player.preroll(ANY_TOKEN, str(tones.a440), 0)
    rig.player.drop_preroll(ANY_TOKEN)
    rig.player.play(14, str(tones.a440), 100)  # opened again
    assert rig.events.until_terminal(14) == [PlaybackStarted(14), PlaybackEnded(14)]


def test_a_missing_prerolled_file_fails_for_its_token(rig: Rig, tmp_path: Path) -> None:
    rig.player.preroll(11, str(tmp_path / "absent.wav"), 100)
    event = rig.events.next()
    assert isinstance(event, PlaybackFailed) and event.token == 11


def test_stop_when_idle_is_harmless(rig: Rig) -> None:
    rig.player.stop()
    rig.player.stop()
    assert rig.events.queue.empty()
    assert rig.player.position_ms() == -1


def test_play_while_playing_supersedes_the_previous_item(rig: Rig, tones: Tones) -> None:
    rig.player.play(1, str(tones.long), 100)
    assert rig.events.next() == PlaybackStarted(1)

    rig.player.play(2, str(tones.a440), 100)

    events = rig.events.until_terminal(2)
    assert events == [PlaybackStarted(2), PlaybackEnded(2)]
    info = wait_for_final_wav(rig.wav)
    assert info.rate == 44100  # the 440 Hz tone's own file, not the 8 kHz one
    assert dominant_of(trim_silence(info.samples), info.rate, CANDIDATES) == 440


def test_close_is_idempotent_and_final(rig: Rig, tones: Tones) -> None:
    rig.player.play(1, str(tones.long), 100)
    assert rig.events.next() == PlaybackStarted(1)
    wait_until(lambda: audio_flows(rig.wav), "samples reach the WAV")

    rig.player.close()
    rig.player.close()

    assert rig.events.queue.empty()  # close() joined libVLC's threads: nothing can follow
    assert wav_is_final(rig.wav)
    assert rig.player.position_ms() == -1
    rig.player.stop()  # a no-op
    with pytest.raises(PlayerError, match="closed"):
        rig.player.play(2, str(tones.a440), 100)
    with pytest.raises(PlayerError, match="closed"):
        rig.player.set_volume(10)


# --- http(s) ---------------------------------------------------------------------------------


@pytest.fixture
def http_base(tones: Tones) -> Iterator[str]:
    with RoutedServer() as server:
        server.routes["/tone.wav"] = serve(
            tones.a440.read_bytes(), headers={"Content-Type": "audio/wav"}
        )
        yield server.url("")


def test_an_http_url_plays_and_http_failures_fail(rig: Rig, http_base: str) -> None:
    rig.player.play(1, f"{http_base}/tone.wav", 100)
    assert rig.events.until_terminal(1) == [PlaybackStarted(1), PlaybackEnded(1)]
    info = wait_for_final_wav(rig.wav)
    assert dominant_of(trim_silence(info.samples), info.rate, CANDIDATES) == 440

    rig.player.play(2, f"{http_base}/missing.mp3", 100)
    (failed,) = rig.events.until_terminal(2)
    assert isinstance(failed, PlaybackFailed)

    rig.player.play(3, f"http://127.0.0.1:{free_port()}/x.mp3", 100)
    (refused,) = rig.events.until_terminal(3)
    assert isinstance(refused, PlaybackFailed)
    assert tokens([failed, refused]) == {2, 3}
