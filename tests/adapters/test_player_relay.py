"""The player relaying real stations: Icecast2 fed by FFmpeg (its stream and its ``.m3u``), and an
HLS live stream made by FFmpeg, through the stream resolver (:mod:`receiver.streams`) with the
allowlist, libVLC writing a WAV. What a listener and a station's operator would notice: the tone
is heard, the position advances, and the server gets a few requests a second at most.

Bad input at the player's level: a web page, a redirect loop, a playlist naming itself or a host
off the allowlist, a server trickling a byte a second: each gives ``PlaybackFailed`` with our
reason in bounded time, and the log shows no request storm.

A station that breaks in mid-relay (plays, then hangs up every connection at once) is asked a
few times in all through the stream gate (:mod:`receiver.stream_gate`) and the item ends, while
a single hang-up is still rejoined with no event."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue

import pytest

from receiver.config_model import PlayerConfig
from receiver.core.events import Event, PlaybackEnded, PlaybackFailed, PlaybackStarted
from receiver.player import Player
from receiver.streams import RESOLVE_DEADLINE_S, Resolved, resolve
from tests.lab.audio import dominant_of, read_wav, trim_silence, wait_for_final_wav
from tests.lab.stations import (
    HlsStation,
    IcecastStation,
    WebServer,
    answer,
    mp3_tone,
    plays_then_hangs_up,
    redirect,
    trickle,
)
from tests.lab.streams import Stream, StreamServer, encode, mp3_stream, write_programme


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


@dataclass
class Rig:
    player: Player
    events: Recorder
    wav: Path
    hosts: list[str]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    wav = tmp_path / "out.wav"
    events = Recorder()
    hosts: list[str] = []

    def resolver(url: str, cancelled: Callable[[], bool]) -> Resolved:
        return resolve(url, ("http",), tuple(hosts), cancelled=cancelled)

    player = Player(PlayerConfig(output="file", wav_file=wav), events, resolver=resolver)
    yield Rig(player, events, wav, hosts)
    player.close()


def relay_for(rig: Rig, url: str, seconds: float) -> list[int]:
    """Play ``url`` live; return the positions read each second for ``seconds`` after start."""
    rig.player.play(1, url, 100, live=True)
    event = rig.events.next(20)
    assert event == PlaybackStarted(1), event
    positions = []
    for _ in range(int(seconds)):
        time.sleep(1.0)
        positions.append(rig.player.position_ms())
    return positions


def heard(rig: Rig) -> float:
    sound = read_wav(rig.wav)
    return dominant_of(trim_silence(sound.samples), sound.rate, (440.0, 1000.0))


def test_an_icecast_stream_relays_with_one_probe_and_one_connection(
    rig: Rig, icecast: IcecastStation
) -> None:
    rig.hosts.append(f"127.0.0.1:{icecast.port}")
    before = len(icecast.requests())
    positions = relay_for(rig, icecast.url(), 6)
    assert positions[-1] > positions[-3] > 0, positions  # audio flows
    rig.player.stop()
    time.sleep(0.5)  # Icecast logs a request when its connection ends
    lines = icecast.requests()[before:]
    assert len([line for line in lines if "/live.mp3 " in line]) <= 3, lines
    assert heard(rig) == 440.0


def test_icecast_s_own_m3u_playlist_is_resolved_to_its_stream(
    rig: Rig, icecast: IcecastStation
) -> None:
    rig.hosts.append(f"127.0.0.1:{icecast.port}")
    before = len(icecast.requests())
    positions = relay_for(rig, icecast.url("/live.mp3.m3u"), 5)
    assert positions[-1] > positions[-3] > 0, positions
    rig.player.stop()
    time.sleep(0.5)
    lines = icecast.requests()[before:]
    assert len([line for line in lines if "/live.mp3.m3u " in line]) == 1, lines
    assert len(lines) <= 4, lines  # no reconnect loop
    assert heard(rig) == 440.0


def test_an_hls_live_stream_plays_its_segments_at_a_sane_request_rate(
    rig: Rig, hls: HlsStation
) -> None:
    rig.hosts.append(f"127.0.0.1:{hls.web.port}")
    start = time.monotonic()
    positions = relay_for(rig, hls.url, 10)
    assert positions[-1] > positions[-3] > 0, positions
    requests = [r for r in hls.web.requests if r.mono >= start]
    elapsed = time.monotonic() - start
    segments = [r for r in requests if r.path.endswith(".ts")]
    assert segments, requests  # it really fetched media, not only the playlist
    assert len(requests) / elapsed < 5, f"{len(requests)} requests in {elapsed:.1f} s"
    rig.player.stop()
    assert heard(rig) == 1000.0


# --- bad input -------------------------------------------------------------------------------


def fails_within(rig: Rig, url: str, timeout_s: float) -> str:
    rig.player.play(7, url, 100, live=True)
    event = rig.events.next(timeout_s)
    assert isinstance(event, PlaybackFailed) and event.token == 7, event
    return event.detail


def test_a_web_page_is_refused_with_one_request(rig: Rig, web: WebServer) -> None:
    rig.hosts.append(f"127.0.0.1:{web.port}")
    url = web.route("/radio", answer(200, "text/html; charset=utf-8", b"<html>Radio</html>"))
    assert "web page" in fails_within(rig, url, 5)
    assert [r.path for r in web.requests] == ["/radio"]


def test_a_redirect_loop_is_refused_after_a_few_redirects(rig: Rig, web: WebServer) -> None:
    rig.hosts.append(f"127.0.0.1:{web.port}")
    url = web.route("/a", redirect("/b"))
    web.route("/b", redirect("/a"))
    assert "redirect" in fails_within(rig, url, 5)
    assert len(web.requests) == 4


def test_a_redirect_off_the_allowlist_is_refused_without_following_it(
    rig: Rig, web: WebServer
) -> None:
    rig.hosts.append(f"127.0.0.1:{web.port}")
    url = web.route("/away", redirect("http://127.0.0.2:9/live.mp3"))
    assert "not on the allowlist" in fails_within(rig, url, 5)


def test_a_playlist_naming_itself_is_refused(rig: Rig, web: WebServer) -> None:
    rig.hosts.append(f"127.0.0.1:{web.port}")
    url = web.url("/self.m3u")
    web.route("/self.m3u", answer(200, "audio/x-mpegurl", f"{url}\n".encode()))
    assert "itself" in fails_within(rig, url, 5)
    assert len(web.requests) == 1


def test_a_playlist_pointing_off_the_allowlist_is_refused(rig: Rig, web: WebServer) -> None:
    rig.hosts.append(f"127.0.0.1:{web.port}")
    pls = b"[playlist]\nNumberOfEntries=1\nFile1=http://radio.example/live.mp3\n"
    url = web.route("/radio.pls", answer(200, "audio/x-scpls", pls))
    assert "not on the allowlist" in fails_within(rig, url, 5)
    assert len(web.requests) == 1


def test_a_server_trickling_a_byte_a_second_fails_on_time(rig: Rig, web: WebServer) -> None:
    rig.hosts.append(f"127.0.0.1:{web.port}")
    url = web.route("/slow.mp3", trickle(1.0, limit_s=RESOLVE_DEADLINE_S + 5))
    start = time.monotonic()
    assert "too slow" in fails_within(rig, url, RESOLVE_DEADLINE_S + 3)
    assert time.monotonic() - start < RESOLVE_DEADLINE_S + 2


def test_stopping_while_a_server_trickles_hangs_up_at_once(rig: Rig, web: WebServer) -> None:
    rig.hosts.append(f"127.0.0.1:{web.port}")
    url = web.route("/slow.mp3", trickle(0.2, limit_s=RESOLVE_DEADLINE_S + 5))
    rig.player.play(7, url, 100, live=True)
    connected = time.monotonic() + 10.0
    while web.serving != 1 and time.monotonic() < connected:
        time.sleep(0.02)
    assert web.serving == 1  # the resolver is reading the trickle
    rig.player.stop()
    # The server sees the hang-up at its second write after it (0.4 s here): 3 s allows a
    # loaded machine, and is still far below the resolve's deadline and the trickle's end.
    deadline = time.monotonic() + 3.0
    while web.serving and time.monotonic() < deadline:
        time.sleep(0.02)
    assert web.serving == 0, "the resolver still holds the connection after stop()"
    with pytest.raises(AssertionError):
        rig.events.next(1.0)  # superseded: nothing is reported for its token


def test_a_server_that_hangs_up_before_any_audio_is_refused_without_a_storm(
    rig: Rig, web: WebServer
) -> None:
    # With Icecast's headers libVLC would ask such a server again about a thousand times a
    # second (test_player_stream.py shows it), with no event.
    rig.hosts.append(f"127.0.0.1:{web.port}")
    url = web.route("/live.mp3", answer(200, "audio/mpeg", b"", icy_name="gone", icy_br="128"))
    assert "closed the stream before sending audio" in fails_within(rig, url, 5)
    time.sleep(1.0)
    # The probe, and what libVLC asked in the moment it ran before the probe saw the hang-up.
    print(f"\nrequests to a server hanging up at once: {len(web.requests)}")
    assert 1 <= len(web.requests) <= 10, web.requests


# --- a station that breaks in the middle of a relay -------------------------------------------

MP3_BITRATE = 128_000


@pytest.fixture(scope="module")
def tone_mp3(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """20 s of a 440 Hz tone as MP3 at 128 kbit/s."""
    return mp3_tone(tmp_path_factory.mktemp("mp3") / "tone.mp3", 440.0, 20.0)


def busiest_second(times: list[float]) -> int:
    """The most requests within any one second."""
    ordered = sorted(times)
    return max((sum(1 for t in ordered if s <= t < s + 1.0) for s in ordered), default=0)


def test_a_station_that_hangs_up_mid_relay_gets_no_request_storm_and_the_item_ends(
    rig: Rig, web: WebServer, tone_mp3: bytes
) -> None:
    # Icecast's headers put libVLC 3 on its legacy http access, which reconnects whenever a
    # read ends, without a pause: once the station hangs up every connection at once, it was
    # asked about a thousand times a second, with no event, until stop().
    rig.hosts.append(f"127.0.0.1:{web.port}")
    url = web.route("/live.mp3", plays_then_hangs_up(tone_mp3, MP3_BITRATE, audio_s=4.0))
    rig.player.play(1, url, 100, live=True)
    assert rig.events.next(20) == PlaybackStarted(1)
    try:
        ended = rig.events.next(15)
    finally:
        requests = web.requests
        busiest = busiest_second([r.mono for r in requests])
        print(f"\nrequests to the station: {len(requests)}, in its busiest second: {busiest}")
    assert busiest <= 5, f"{len(requests)} requests, {busiest} in one second"
    assert isinstance(ended, PlaybackEnded | PlaybackFailed) and ended.token == 1, ended
    ended_at = time.monotonic()
    sound = wait_for_final_wav(rig.wav)  # afile finishes its WAV a little after the end
    # the audio before the break was relayed
    assert dominant_of(trim_silence(sound.samples), sound.rate, (440.0, 1000.0)) == 440.0
    time.sleep(1.0)
    assert web.serving == 0, "the player still holds a connection to the station"
    size = rig.wav.stat().st_size
    time.sleep(1.5)
    assert rig.wav.stat().st_size == size, "the WAV still grows after the item ended"
    assert [r for r in web.requests if r.mono > ended_at + 0.5] == []


@pytest.fixture(scope="module")
def radio_mp3(tmp_path_factory: pytest.TempPathFactory) -> Stream:
    folder = tmp_path_factory.mktemp("radio")
    wav = write_programme(folder / "tone.wav", 440.0, 8.0)
    return mp3_stream(encode(wav, folder / "tone.mp3", "mp3"))


def wait_until_moved(rig: Rig, past_ms: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while rig.player.position_ms() <= past_ms:
        assert time.monotonic() < deadline, f"the position did not pass {past_ms} ms"
        time.sleep(0.1)


def test_through_the_gate_a_hiccup_is_rejoined_silently_and_a_gone_source_ends(
    rig: Rig, radio_mp3: Stream
) -> None:
    with StreamServer({"/tone.mp3": radio_mp3}) as server:  # Icecast's headers and pacing
        rig.hosts.append(f"127.0.0.1:{server.port}")
        rig.player.play(1, server.url("/tone.mp3"), 100, live=True)
        assert rig.events.next(20) == PlaybackStarted(1)
        wait_until_moved(rig, 1000)
        opened = server.connections
        assert opened == 2  # the resolver's probe, then the gate's request

        server.set_mode("close", connection=opened)  # one hang-up; the station stays up
        wait_until_moved(rig, rig.player.position_ms() + 2000)
        assert server.connections == opened + 1  # asked once again, and it plays on
        assert rig.events.queue.empty()  # no event: as libVLC alone rejoins

        server.set_mode("gone")  # the source has left: hang-up, then 404
        assert rig.events.next(15) == PlaybackEnded(1)
        assert server.connections == opened + 2  # one more request, then the item ended
