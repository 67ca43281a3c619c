"""A live radio stream for tests: real MP3 and Ogg/Vorbis, paced at real time like Icecast.

:class:`StreamServer` serves ``/tone.mp3`` and ``/tone.ogg`` on 127.0.0.1 (or another address)
from a :class:`tests.lab.web.LabServer`. Each is a few seconds of a test tone, encoded at test time
by libVLC's own transcoder (:func:`encode`: its ``avcodec`` encoder, i.e. FFmpeg's LAME, for
MP3, and its ``vorbis`` encoder, all in ``vlc-plugin-base``: no extra Debian package), looped for
ever:

* The answer is what Icecast 2.4 sends: ``HTTP/1.0 200 OK``, a ``Content-Type``, ``icy-*`` and
  no-cache headers, no ``Content-Length``, then the body until the connection closes.
* The stream is "on air" from the server's start: a listener joins at the current position
  (an Ogg listener first gets the current link's header pages, as Icecast sends them), after a
  burst of ``burst_s`` seconds of the recent past (Icecast's ``burst-size``).
* MP3 is cut at frame boundaries into ~100 ms chunks; Ogg is sent page by page; each chunk or
  page leaves when the stream's clock reaches the start of its audio.
* Each loop of the Ogg is a new link of a chained stream (its own serial number, BOS to EOS),
  as a playlist source such as ices or liquidsoap sends it; the MP3 simply goes on.

Behaviour is switched at runtime with :meth:`StreamServer.set_mode`, for all connections or for
one (connections are numbered from 1 in the order they were accepted):

* ``healthy``: keep sending. A connection that was stalled resumes where it stopped.
* ``stall``: keep the connection open, send nothing (a new request still gets its headers).
* ``close``: close the connection (an open one at its next chunk, a new one right after its
  headers, with nothing of the body).
* ``gone``: close like ``close``, and answer new requests ``404``, as Icecast does once the
  source of a mount has left.

:attr:`StreamServer.connections` counts the requests for a stream, so a test sees reconnects.
"""

from __future__ import annotations

import contextlib
import math
import random
import socket
import struct
import sys
import threading
import time
import wave
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Literal

from tests.lab.web import LabServer, QuietHttpServer

__all__ = [
    "Mode",
    "Stream",
    "StreamServer",
    "encode",
    "mp3_stream",
    "ogg_stream",
    "write_programme",
]

Mode = Literal["healthy", "stall", "close", "gone"]
MODES: tuple[Mode, ...] = ("healthy", "stall", "close", "gone")

TICK_S = 0.02  # the sender's clock resolution
FULL_SCALE = 32767
MP3_CHUNK_S = 0.1  # Icecast passes on what the source sends; sources send about this often


# --- the programme: a tone, encoded with libVLC ----------------------------------------------


def write_programme(
    path: Path,
    freq_hz: float = 440.0,
    duration_s: float = 8.0,
    *,
    amplitude: float = 0.5,
    noise: float = 0.01,
    rate: int = 44100,
) -> Path:
    """A stereo 16-bit WAV of a sine tone with a little white noise under it.

    The noise (1 % of full scale by default, 34 dB under the tone) makes the encoders work at
    their nominal bitrate, as with a real programme: a pure tone compresses to ~20 kbit/s of
    Vorbis in Ogg pages of 1.5 s each, which is not what a radio sends.
    """
    rnd = random.Random(440)  # noqa: S311 - test noise, not a secret
    step = 2.0 * math.pi * freq_hz / rate
    frames = array("h")
    for i in range(round(duration_s * rate)):
        value = round(FULL_SCALE * (amplitude * math.sin(step * i) + noise * rnd.uniform(-1, 1)))
        frames.extend((value, value))
    if sys.byteorder != "little":
        frames.byteswap()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames.tobytes())
    return path


def encode(wav: Path, dest: Path, kind: Literal["mp3", "ogg"], kbps: int = 128) -> Path:
    """Encode ``wav`` to ``dest`` (MP3 or Ogg/Vorbis) with libVLC's transcoder; return ``dest``.

    Cached: an existing non-empty ``dest`` is returned as it is.
    """
    if dest.exists() and dest.stat().st_size > 0:
        return dest
    import vlc  # lazy: the rest of this module works without libVLC

    codec, mux = ("mp3", "raw") if kind == "mp3" else ("vorb", "ogg")
    partial = dest.with_name(dest.name + ".part")
    sout = f"#transcode{{acodec={codec},ab={kbps}}}:std{{access=file,mux={mux},dst={partial}}}"
    instance = vlc.Instance(["--intf=dummy", "--no-video", "--quiet"])
    if instance is None:
        raise RuntimeError("libVLC refused its arguments")
    player = instance.media_player_new()
    media = instance.media_new_path(str(wav))
    media.add_option(f":sout={sout}")
    player.set_media(media)
    try:
        if player.play() != 0:
            raise RuntimeError(f"libVLC would not transcode {wav}")
        deadline = time.monotonic() + 30.0
        while player.get_state() not in (vlc.State.Ended, vlc.State.Error):
            if time.monotonic() > deadline:
                raise RuntimeError(f"libVLC did not finish transcoding {wav} in 30 s")
            time.sleep(0.02)
        if player.get_state() == vlc.State.Error:
            raise RuntimeError(f"libVLC failed to transcode {wav} to {kind}")
    finally:
        player.stop()  # closes the muxer: the file is complete after this
        media.release()
        player.release()
        instance.release()
    if not partial.exists() or partial.stat().st_size == 0:
        raise RuntimeError(f"libVLC wrote nothing for {dest}")
    partial.replace(dest)
    return dest


# --- streams: bytes cut into timed units -----------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """Bytes to send when the stream's clock reaches ``at_s`` (seconds into the loop)."""

    at_s: float
    data: bytes


@dataclass(frozen=True)
class Stream:
    """One loop of a stream: headers sent to every new listener, then timed units."""

    content_type: str
    duration_s: float  # one loop
    units: tuple[Unit, ...]
    kbps: int  # nominal, for icy-br
    chained_ogg: bool = False  # each loop is a new Ogg link: serial numbers are rewritten
    headers: bytes = b""  # Ogg: the link's header pages, sent first when joining mid-link
    _links: dict[int, tuple[bytes, tuple[Unit, ...]]] = field(
        default_factory=dict, compare=False, repr=False
    )  # Ogg links made so far, by loop index (the CRCs take a while in Python)

    def loop(self, index: int) -> tuple[bytes, tuple[Unit, ...]]:
        """The headers and units of loop ``index`` (Ogg: with that link's serial number)."""
        if not self.chained_ogg:
            return self.headers, self.units
        link = self._links.get(index)
        if link is None:
            serial = 0x10C0_0000 + index
            link = (
                _reserial_pages(self.headers, serial),
                tuple(Unit(u.at_s, _reserial_pages(u.data, serial)) for u in self.units),
            )
            self._links[index] = link  # a race only makes the same link twice
        return link


_MP3_BITRATES_V1_L3 = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MP3_RATES_V1 = (44100, 48000, 32000)


def _mp3_frames(data: bytes) -> Iterator[tuple[int, int, int]]:
    """``(offset, length, sample_rate)`` of each MPEG-1 Layer III frame in ``data``."""
    offset = 0
    while offset + 4 <= len(data):
        header = int.from_bytes(data[offset : offset + 4], "big")
        sync, version, layer = header >> 21, (header >> 19) & 3, (header >> 17) & 3
        bitrate_index, rate_index = (header >> 12) & 15, (header >> 10) & 3
        if sync != 0x7FF or version != 3 or layer != 1 or not 0 < bitrate_index < 15:
            raise ValueError(f"not an MPEG-1 Layer III frame at byte {offset}")
        rate = _MP3_RATES_V1[rate_index]
        length = 144_000 * _MP3_BITRATES_V1_L3[bitrate_index] // rate + ((header >> 9) & 1)
        yield offset, length, rate
        offset += length


def mp3_stream(path: Path) -> Stream:
    """A looped MP3 file, cut at frame boundaries into chunks of about 100 ms."""
    data = path.read_bytes()
    units: list[Unit] = []
    start, start_s, t, kbps = 0, 0.0, 0.0, 0
    for offset, length, rate in _mp3_frames(data):
        if t - start_s >= MP3_CHUNK_S:
            units.append(Unit(start_s, data[start:offset]))
            start, start_s = offset, t
        kbps = length * 8 * rate // 1152 // 1000
        t += 1152 / rate
    units.append(Unit(start_s, data[start:]))
    return Stream("audio/mpeg", t, tuple(units), kbps)


_CRC_TABLE = []
for _i in range(256):
    _r = _i << 24
    for _ in range(8):
        _r = ((_r << 1) ^ 0x04C11DB7) if _r & 0x80000000 else _r << 1
    _CRC_TABLE.append(_r & 0xFFFFFFFF)


def _ogg_crc(page: bytes) -> int:
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC_TABLE[(crc >> 24) ^ byte]
    return crc


@dataclass(frozen=True)
class _Page:
    raw: bytes
    granule: int
    packets_ended: int
    first_packet: bytes  # the payload of the page (only used for the first page)


def _ogg_pages(data: bytes) -> Iterator[_Page]:
    offset = 0
    while offset < len(data):
        if data[offset : offset + 4] != b"OggS":
            raise ValueError(f"no Ogg page at byte {offset}")
        granule = struct.unpack_from("<q", data, offset + 6)[0]
        nsegs = data[offset + 26]
        lacing = data[offset + 27 : offset + 27 + nsegs]
        body = offset + 27 + nsegs
        end = body + sum(lacing)
        yield _Page(data[offset:end], granule, sum(1 for v in lacing if v < 255), data[body:end])
        offset = end


def _reserial_pages(pages: bytes, serial: int) -> bytes:
    """``pages`` with every page's serial number set to ``serial`` (and its CRC redone)."""
    out = bytearray()
    for page in _ogg_pages(pages):
        raw = bytearray(page.raw)
        struct.pack_into("<I", raw, 14, serial)
        struct.pack_into("<I", raw, 22, 0)
        struct.pack_into("<I", raw, 22, _ogg_crc(bytes(raw)))
        out += raw
    return bytes(out)


def ogg_stream(path: Path) -> Stream:
    """A looped Ogg/Vorbis file: a chained stream of links, sent page by page."""
    pages = list(_ogg_pages(path.read_bytes()))
    ident = pages[0].first_packet
    if ident[:7] != b"\x01vorbis":
        raise ValueError(f"{path} is not Ogg/Vorbis")
    rate = struct.unpack_from("<I", ident, 12)[0]
    nominal = struct.unpack_from("<i", ident, 20)[0]
    headers = b""
    packets = 0
    index = 0
    while packets < 3:  # identification, comment, setup: audio starts on a fresh page
        headers += pages[index].raw
        packets += pages[index].packets_ended
        index += 1
    units: list[Unit] = []
    start_s = 0.0
    for page in pages[index:]:
        units.append(Unit(start_s, page.raw))
        if page.granule >= 0:
            start_s = page.granule / rate
    return Stream(
        "application/ogg",
        start_s,
        tuple(units),
        nominal // 1000,
        chained_ogg=True,
        headers=headers,
    )


# --- the server ------------------------------------------------------------------------------


@dataclass
class _Connection:
    number: int
    path: str
    sock: socket.socket
    mode: Mode | None = None  # None: follow the server's mode
    sent: int = 0
    ended: bool = False  # the server stopped serving it (the listener or the server hung up)


@dataclass
class _State:
    mode: Mode = "healthy"
    connections: list[_Connection] = field(default_factory=list)
    future: dict[int, Mode] = field(default_factory=dict)  # modes set before they connected


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        owner = self.server.owner
        stream = owner.streams.get(self.path.split("?", 1)[0])
        if stream is None:
            self.send_error(404, "The file you requested could not be found")
            return
        conn = owner._accept(self.path, self.connection)
        if owner._mode_of(conn) == "gone":
            self.send_error(404, "The file you requested could not be found")
            owner._end(conn)
            return
        self.send_response(200)
        self.send_header("Content-Type", stream.content_type)
        self.send_header("Cache-Control", "no-cache, no-store")
        self.send_header("Expires", "Mon, 26 Jul 1997 05:00:00 GMT")
        self.send_header("Pragma", "no-cache")
        if owner.icy:
            self.send_header("icy-name", "loa test tone")
            self.send_header("icy-br", str(stream.kbps))
            self.send_header("icy-pub", "0")
        self.end_headers()
        try:
            with contextlib.suppress(OSError):  # the listener hung up: that is its business
                owner._send(conn, stream, self.wfile)
        finally:
            owner._end(conn)

    def version_string(self) -> str:
        return "Icecast 2.4.4"

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HttpServer(QuietHttpServer):
    owner: StreamServer


class StreamServer:
    """Live streams on ``host`` (loopback unless told), for ``with`` or :meth:`start`/:meth:`stop`.

    ``streams`` maps a path (``/tone.mp3``) to its :class:`Stream`.
    """

    def __init__(
        self,
        streams: dict[str, Stream],
        *,
        burst_s: float = 4.0,
        icy: bool = True,
        host: str = "127.0.0.1",
    ) -> None:
        self.streams = dict(streams)
        self.burst_s = burst_s
        self.icy = icy
        self._lock = threading.Condition()
        self._state = _State()
        self._web = LabServer(_Handler, host=host, server_class=_HttpServer, start=False)
        assert isinstance(self._web.httpd, _HttpServer)
        self._web.httpd.owner = self
        self._on_air = time.monotonic()
        self._stopping = False

    # --- control (the test's thread) ---

    @property
    def port(self) -> int:
        return self._web.port

    def url(self, path: str) -> str:
        return self._web.url(path)

    def start(self) -> StreamServer:
        self._on_air = time.monotonic()
        self._web.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
            conns = list(self._state.connections)
        for conn in conns:
            _hang_up(conn.sock)
        self._web.close()

    def __enter__(self) -> StreamServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_mode(self, mode: Mode, *, connection: int | None = None) -> None:
        """Switch every connection (and new ones), or only connection number ``connection``.

        A connection given its own mode keeps it whatever the server's mode becomes. A number
        not yet seen applies when that connection comes (``set_mode("gone", connection=3)``:
        the third request will be answered 404).
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        with self._lock:
            if connection is None:
                self._state.mode = mode
            elif connection < 1:
                raise ValueError(f"connections are numbered from 1, not {connection}")
            elif connection <= len(self._state.connections):
                self._state.connections[connection - 1].mode = mode
            else:
                self._state.future[connection] = mode
            self._lock.notify_all()

    @property
    def mode(self) -> Mode:
        with self._lock:
            return self._state.mode

    @property
    def connections(self) -> int:
        """How many requests for a stream were made so far."""
        with self._lock:
            return len(self._state.connections)

    @property
    def open_connections(self) -> int:
        """How many stream connections are still being served (a write that failed ends one:
        a listener that hung up is seen at the next chunk, within ~0.1 s)."""
        with self._lock:
            return sum(1 for conn in self._state.connections if not conn.ended)

    def bytes_sent(self, connection: int) -> int:
        """How many body bytes connection number ``connection`` has sent so far."""
        with self._lock:
            return self._state.connections[connection - 1].sent

    # --- the handler threads ---

    def _accept(self, path: str, sock: socket.socket) -> _Connection:
        with self._lock:
            number = len(self._state.connections) + 1
            conn = _Connection(number, path, sock, self._state.future.pop(number, None))
            self._state.connections.append(conn)
            return conn

    def _end(self, conn: _Connection) -> None:
        with self._lock:
            conn.ended = True
            self._lock.notify_all()

    def _mode_of(self, conn: _Connection) -> Mode:
        with self._lock:
            if self._stopping:
                return "close"
            return conn.mode or self._state.mode

    def _send(self, conn: _Connection, stream: Stream, out: Any) -> None:
        """Send ``stream`` to ``conn`` in real time, minding the modes, until it must close."""
        if self._mode_of(conn) in ("close", "gone"):
            _hang_up(conn.sock)
            return
        # The listener's stream clock: where the broadcast is now, minus the burst. It advances
        # only while the connection is healthy, so a stalled listener resumes where it stopped.
        clock = max(0.0, time.monotonic() - self._on_air - self.burst_s)
        loop_index, position = divmod(clock, stream.duration_s)
        loop = int(loop_index)
        headers, units = stream.loop(loop)
        index = next((i for i, u in enumerate(units) if u.at_s >= position), None)
        if index is None:  # past the last unit's start: join at the next loop
            loop, index = loop + 1, 0
            headers, units = stream.loop(loop)
            position -= stream.duration_s
        pending = headers  # sent before the first unit (Ogg: the link's header pages)
        # Seconds of stream time we may send now: the burst, less the bit skipped to join at a
        # unit's start. It grows with the wall clock only while the connection is healthy.
        ahead = self.burst_s - (units[index].at_s - position)
        last = time.monotonic()
        while True:
            mode = self._mode_of(conn)
            now = time.monotonic()
            if mode in ("close", "gone"):
                _hang_up(conn.sock)
                return
            if mode == "stall":
                last = now
                with self._lock:
                    self._lock.wait(TICK_S)
                continue
            ahead += now - last
            last = now
            chunk = bytearray(pending)
            pending = b""
            while ahead > 0:
                if index >= len(units):
                    loop += 1
                    headers, units = stream.loop(loop)
                    chunk += headers if stream.chained_ogg else b""
                    index = 0
                    continue
                unit = units[index]
                next_at = units[index + 1].at_s if index + 1 < len(units) else stream.duration_s
                chunk += unit.data
                ahead -= next_at - unit.at_s
                index += 1
            if chunk:
                out.write(bytes(chunk))
                out.flush()
                with self._lock:
                    conn.sent += len(chunk)
            with self._lock:
                self._lock.wait(TICK_S)


def _hang_up(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already gone
        sock.shutdown(socket.SHUT_RDWR)
