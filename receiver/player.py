"""The libVLC adapter: plays one item at a time and reports what happened to it.

This module owns the daemon's only ``vlc.Instance`` and its only ``vlc.MediaPlayer`` (creating
players per item leaks in libVLC 3), and the ``vlc.Media`` of the current item (the previous one is
released as soon as the next one replaces it). It is called from the loop thread only; libVLC calls
it back on its own threads, and those callbacks only copy fields and hand a plain event to
``on_event`` (the daemon's inbox: it must not block and must not call back into the player).

Events contract, per token (``play(token, ...)``):

* ``PlaybackStarted(token)``: libVLC opened the item and is playing it. At most once. For a
  network stream this comes before any audio is heard; it need not precede ``PlaybackFailed``.
* then exactly one terminal event, unless the item is superseded first (below):

  - ``PlaybackEnded(token)``: the item reached its end (a stream: the server closed it and
    libVLC's one reconnect failed; see "Live streams" below).
  - ``PlaybackFailed(token, detail)``: libVLC could not open it (missing file, refused or failed
    connection: libVLC's ``Error`` state) or it held no audio track at all. libVLC 3 "plays" a
    text file or random bytes happily (``Playing``, then ``EndReached``, no error); the adapter
    tells that apart by the audio elementary stream libVLC announces (``MediaPlayerESAdded``)
    before ``Playing`` for anything it can decode, and reports an item that never had one as
    failed instead of as a silent success.

* ``stop()``, ``close()`` and a new ``play()`` supersede the current item: once they return,
  nothing more is reported for its token (a terminal event that was already sent stays sent).
  The caller asked for the stop, so it knows; the states libVLC gives a stopped or replaced
  Media (``Stopped``, ``NothingSpecial``) are not reported.

Attribution: each Media gets its own ``MediaStateChanged`` listener that carries its token, so a
late ``EndReached`` of the previous item can never be reported under the new token. The one
player-level listener (``ESAdded``) marks the current item; libVLC 3 joins the old input thread
inside ``set_media``, so no player event of an old item arrives after it returns.

``play`` and ``set_volume`` raise :class:`PlayerError` when libVLC refuses something synchronously
(no Media could be made, the volume could not be applied, ``play`` returned -1); nothing starts and
no event follows for that token. Out-of-range volumes raise ``ValueError`` (the core caps them).

Volume: ``audio_set_volume`` 0-100, applied before ``play`` so no audio leaves at the previous
level. libVLC's software volume (ALSA, and the core's mixer) is cubic: 50 is 0.125 in amplitude
(-18 dB), 100 is 0 dB.

Position: ``position_ms()`` is -1 when no item is live, else libVLC's ``get_time()`` made
monotonic (see the method): it moves exactly when libVLC's does, and never goes back. For a file
started with ``start_ms`` it counts from the file's start. ``play(..., start_ms=)`` is the
``:start-time`` media option: libVLC starts at the demuxer's block at or before the offset (for
a WAV, 50 ms blocks: measured 0 or 50 ms early); an offset past the end gives ``Started`` then
``Ended``.

Live streams (``play(token, url, volume, live=True)``), measured with libVLC 3.0.24 against
``tests/streamserver.py`` (Icecast's headers, pacing and 4 s burst-on-connect; the tests are in
``tests/adapters/test_player_stream.py``):

* **The source stalls** (connection open, no bytes): **no event at all** (none in 100 s);
  libVLC stays ``Playing`` and never reconnects. ``get_time()`` freezes 0.5-1 s after
  the last byte (once the input has demuxed what it had; the buffered audio plays on). If bytes
  come again it moves on at once after a short stall, or after a re-buffer of
  ``NETWORK_CACHING_MS`` once the buffer ran dry (measured 3.2 s; 1.3 s with libVLC's default
  1000), still without an event. So a stall shows only to polling: ``position_ms()`` unchanged
  for some seconds. A healthy stream also holds it between two polls now and then (it moves per
  demuxed block: up to ~1 s for an Ogg page), and it is 0 until the first audio, so a stall
  timeout of 5-10 s fits (the core's is 8). The same rule catches a server that accepts and
  never answers (the item stays ``Opening``: no event, position 0) and the loop below.
* **The server closes the connection**: libVLC reconnects once, silently. If the server answers
  (a hiccup), the relay goes on with no event. If the reconnect is refused or answered 404 (the
  source has left the mount), ``EndReached`` follows, reported as ``PlaybackEnded``, once the
  buffered audio has been read (measured 2.4 s after the close for Ogg, 6.2 s for MP3). But a
  server that answers 200 and hangs up at once is re-asked in a tight loop (thousands of requests
  a second) with no event and a frozen position, until ``stop()``. Why: an Icecast answer carries
  ``icy-*`` headers, which libVLC 3's newer ``https`` access refuses (each stream so opens with
  **two** requests), and its legacy ``http`` access reconnects whenever a read ends, whatever
  ``:http-reconnect`` says. A plain-HTTP stream (no ``icy-*``) stays with the newer access, which
  ends at the first close unless ``live=True`` adds ``:http-continuous``: then it too reconnects
  once per close, and ends when that fails or brings nothing.
* **The stream is unreachable** (refused, HTTP 404, unknown host): ``PlaybackFailed``, with no
  ``PlaybackStarted`` before it.
* ``get_time()`` of an Ogg stream is the stream's own timestamp (where the broadcast was when we
  joined, not 0); it runs on across chained links (one per track), and goes back when a
  reconnect rejoins earlier (the burst: measured 0.8 s back). MP3 counts from 0 when joining and
  only grows. ``position_ms()`` hides the jumps.
* What a live URL is (Icecast/HTTP stream, HLS, an ``.m3u``/``.pls`` playlist) is found out by
  the resolver (:mod:`receiver.streams`) on a thread of its own before libVLC opens it, and the
  options are chosen per kind. Measured against FFmpeg's HLS and Icecast's ``.m3u`` before
  that, with ``:http-continuous`` on every live URL: libVLC asked for the ``.m3u8`` 1338 times
  in 6 s and never fetched a segment, and for the ``.m3u`` about 1000 times (the playlist demux
  ends at once, and the continuous access reopens it). HLS now goes to libVLC's adaptive demux
  without ``:http-continuous``: one playlist reload per target duration, and its segments.
* URLs get ``:network-caching=NETWORK_CACHING_MS``. ``stop()`` returns at once (under 10 ms)
  even while libVLC is blocked reading a stalled or silent server.

Facts about libVLC 3.0.24 found by experiment (see ``tests/adapters/test_player.py``):

* afile restarts (and so truncates) its WAV whenever libVLC restarts the audio output: for each
  item, and within a live stream at each Ogg link and after a stall.

* ``--aout=afile`` (output ``file``) writes 16-bit PCM WAV by default (``audiofile-wav`` on,
  ``audiofile-format`` s16, channels as the source); we pass both explicitly. It opens the file
  with ``wb`` each time the audio output starts, i.e. for each item: a second item **overwrites**
  the WAV, it does not append. The header's sizes are written when the output stops: a moment
  *after* ``EndReached`` (when the input thread dies), or inside our ``stop()``. An item with no
  audio never starts the output and leaves the previous file untouched. afile paces itself at
  about real time after running ~1 s ahead, so a 1.5 s clip "ends" after ~0.4 s. (Its RIFF size
  field is 4 bytes too large; readers that check only the data chunk do not mind.)
* afile implements **no volume control**: ``audio_set_volume`` returns 0 and changes nothing. So
  that output ``file`` still shows the level a speaker would get, the adapter reproduces the
  cubic software-volume law there with the equalizer's preamp (flat bands: VLC's equalizer is
  then a plain gain of 0.25, so a +12.04 dB preamp is unity). The preamp bottoms out at -20 dB,
  so in ``file`` mode every volume below about 29 sounds like 29 (-32 dB), 0 included.
* With no usable sound card, ALSA output still "plays" (no error event, ``EndReached`` at the
  end): a missing device is silent success as far as libVLC's events go. ``audio_set_volume``
  returns -1 when no audio output module loaded at all (e.g. ``--aout=pulse,none`` without a
  server); we treat that as a failure to start rather than play at an unknown level.
* ``libvlc_media_player_stop()`` destroys the audio output as well as the input; until the next
  item has created a new output, ``audio_set_volume`` returns -1, so that item could not get its
  volume before its first sample (ALSA happens to restore the last level from its ``alsa-gain``
  setting; nothing promises that for other outputs). ``stop()`` and ``close()`` therefore use
  ``set_media(None)``, which stops and joins the input and keeps the output and its volume.
  Either way, stopping gives the Media the ``Stopped`` (or ``NothingSpecial``) state, never
  ``EndReached``.
* ``vlc.Instance(bad_args)`` returns None (and prints to stderr); we raise :class:`PlayerError`.
"""

from __future__ import annotations

import ctypes
import importlib
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from receiver.config_model import PlayerConfig
from receiver.core.events import Event, PlaybackEnded, PlaybackFailed, PlaybackStarted
from receiver.errors import PlayerError
from receiver.streams import NETWORK_CACHING_MS, Resolved, StreamRefused, guess_kind, media_options

__all__ = ["NETWORK_CACHING_MS", "Player", "PlayerError", "Resolver", "instance_args"]

# receiver.streams.resolve with the allowlist bound: (url, cancelled) -> Resolved
Resolver = Callable[[str, Callable[[], bool]], Resolved]

# libvlc_state_t (MediaStateChanged's new_state)
_NOTHING_SPECIAL, _OPENING, _BUFFERING, _PLAYING, _PAUSED, _STOPPED, _ENDED, _ERROR = range(8)
_STATE_NAMES = (
    "NothingSpecial",
    "Opening",
    "Buffering",
    "Playing",
    "Paused",
    "Stopped",
    "Ended",
    "Error",
)
_TRACK_AUDIO = 0  # libvlc_track_type_t: libvlc_track_audio

# VLC's equalizer with flat bands scales by 0.25 (-12.04 dB); the preamp range is +-20 dB.
_EQ_UNITY_DB = 20.0 * math.log10(4.0)
_EQ_PREAMP_MIN_DB = -20.0
_EQ_PREAMP_MAX_DB = 20.0


class _EsChanged(ctypes.Structure):
    """``libvlc_event_t.u.media_player_es_changed``, which python-vlc's EventUnion lacks."""

    _fields_ = (("i_type", ctypes.c_int), ("i_id", ctypes.c_int))


@dataclass(eq=False)
class _Item:
    """One ``play()``: its token, its Media, and what its callbacks have seen (under the lock)."""

    token: int
    media: Any  # vlc.Media; ours until released (None while a live URL is being resolved)
    events: Any  # the Media's EventManager: python-vlc keeps our callback alive in it
    audio_seen: bool = False
    started: bool = False
    closed: bool = False  # terminal event sent, or superseded: report nothing more
    raw_time: int = -1  # the last get_time() that position_ms() saw (loop thread only)
    position: int = 0  # what position_ms() reports: monotonic (loop thread only)


def instance_args(config: PlayerConfig) -> list[str]:
    """The ``vlc.Instance`` arguments for ``config``: output selection, then ``vlc_args``."""
    args = ["--intf=dummy", "--no-video", "--quiet"]
    if config.output == "alsa":
        args.append("--aout=alsa")
        if config.alsa_device:
            args.append(f"--alsa-audio-device={config.alsa_device}")
    elif config.output == "pulse":
        args.append("--aout=pulse")
    elif config.output == "file":
        if config.wav_file is None:
            raise PlayerError("player.output is 'file' but player.wav_file is not set")
        args += [
            "--aout=afile",
            f"--audiofile-file={os.fspath(config.wav_file)}",
            "--audiofile-wav",
            "--audiofile-format=s16",
        ]
    else:
        raise PlayerError(f"unknown player.output {config.output!r} (alsa, pulse or file)")
    args.extend(config.vlc_args)
    return args


def _import_vlc() -> Any:
    try:
        return importlib.import_module("vlc")
    except (ImportError, OSError, NotImplementedError) as exc:
        raise PlayerError(
            f"cannot load libVLC through python-vlc ({exc}); install libvlc5 and vlc-plugin-base"
        ) from exc


def _check_volume(level: int) -> None:
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 100:
        raise ValueError(f"volume must be an int 0..100, not {level!r}")


def _check_start(start_ms: int, *, live: bool) -> None:
    if isinstance(start_ms, bool) or not isinstance(start_ms, int) or start_ms < 0:
        raise ValueError(f"start_ms must be an int >= 0, not {start_ms!r}")
    if live and start_ms:
        raise ValueError("a live stream cannot start at an offset (start_ms must be 0)")


def _media_options(media: str, start_ms: int, *, live: bool) -> list[str]:
    """The per-item libVLC options: an offset for a file, buffering for anything from a URL,
    and for a live relay what its kind needs (:func:`receiver.streams.media_options`)."""
    if live:
        return media_options(guess_kind(media))
    options = []
    if start_ms:
        # A float option, parsed with libVLC's locale-independent us_atof: always a '.'.
        options.append(f":start-time={start_ms // 1000}.{start_ms % 1000:03d}")
    if "://" in media:
        options.append(f":network-caching={NETWORK_CACHING_MS}")
    return options


def _file_preamp_db(level: int) -> float:
    """Equalizer preamp that gives ``(level/100)**3`` in amplitude, VLC's software-volume law."""
    if level <= 0:
        return _EQ_PREAMP_MIN_DB
    db = _EQ_UNITY_DB + 60.0 * math.log10(level / 100.0)
    return max(_EQ_PREAMP_MIN_DB, min(_EQ_PREAMP_MAX_DB, db))


class Player:
    """One libVLC player for the life of the daemon. Call it from one thread only."""

    def __init__(
        self,
        config: PlayerConfig,
        on_event: Callable[[Event], None],
        *,
        resolver: Resolver | None = None,
    ) -> None:
        args = instance_args(config)
        self._vlc = _import_vlc()
        self._on_event = on_event
        self._resolver = resolver
        # Held around every call that changes what libVLC plays: the loop thread's, and the
        # resolver thread's once it knows what to open. Never taken in a libVLC callback.
        self._vlc_lock = threading.RLock()
        self._file_output = config.output == "file"
        self._log: Any = structlog.get_logger(component="player")
        self._lock = threading.Lock()  # guards _item and the _Item flags; never held into libVLC
        self._item: _Item | None = None
        self._closed = False

        self._instance = self._vlc.Instance(args)
        if self._instance is None:
            raise PlayerError(
                f"libVLC refused its arguments {args!r}; check player.vlc_args "
                "(libVLC printed the reason on stderr)"
            )
        self._mp = self._instance.media_player_new()
        if self._mp is None:
            self._instance.release()
            raise PlayerError("libVLC could not create a media player")
        self._mp_events = self._vlc.libvlc_media_player_event_manager(self._mp)  # not memoized
        self._mp_events.event_attach(self._vlc.EventType.MediaPlayerESAdded, self._on_es_added)

    # --- the loop thread's API ---------------------------------------------------------------

    def play(
        self, token: int, media: str, volume: int, start_ms: int = 0, *, live: bool = False
    ) -> None:
        """Start ``media`` (a local path or an http(s) URL) at ``volume``, replacing any item.

        ``start_ms`` starts a file that far into it (to resume an interrupted item where it
        was). ``live`` says that ``media`` is a live stream rather than a file; it makes a
        plain-HTTP stream reconnect once when the server closes it, as an Icecast one does
        anyway (never pass it for a file served over HTTP: libVLC would replay it for ever).

        With a ``resolver``, a live URL is first resolved on a thread of its own (playlists
        read, redirects checked, HLS told from a stream: :mod:`receiver.streams`): the current
        item stops now, and the stream opens once resolved, unless superseded meanwhile. A URL
        that cannot be relayed gives ``PlaybackFailed`` with the resolver's reason.
        """
        self._check_open()
        _check_volume(volume)
        _check_start(start_ms, live=live)
        if live and self._resolver is not None and "://" in media:
            self._resolve_then_open(token, media, volume, self._resolver)
            return
        with self._vlc_lock:
            self._open(token, media, volume, _media_options(media, start_ms, live=live))

    def _resolve_then_open(self, token: int, url: str, volume: int, resolver: Resolver) -> None:
        with self._vlc_lock:
            self._stop_and_release()
            item = _Item(token=token, media=None, events=None)
            with self._lock:
                self._item = item
        threading.Thread(
            target=self._resolve, args=(item, url, volume, resolver), daemon=True
        ).start()

    def _resolve(self, item: _Item, url: str, volume: int, resolver: Resolver) -> None:
        """The resolver thread: find what ``url`` is, then open it if ``item`` is still current."""
        try:
            resolved = resolver(url, lambda: item.closed or self._closed)
            with self._vlc_lock:
                with self._lock:
                    if item.closed or self._closed or self._item is not item:
                        return
                self._open(item.token, resolved.url, volume, media_options(resolved.kind))
            self._log.info("stream_resolved", token=item.token, kind=resolved.kind)
        except StreamRefused as refused:
            self._fail(item, f"not relayed: {refused.detail}")
        except PlayerError as exc:  # _open closed the item it made: report it here
            self._on_event(PlaybackFailed(item.token, str(exc)))
        except Exception:
            self._callback_failed(item)

    def _fail(self, item: _Item, detail: str) -> None:
        with self._lock:
            if item.closed:
                return
            item.closed = True
        self._on_event(PlaybackFailed(item.token, detail))

    def _open(self, token: int, media: str, volume: int, options: list[str]) -> None:
        """Make ``media``'s Media with ``options`` and play it; under ``_vlc_lock``."""
        if "://" in media:
            vlc_media = self._instance.media_new_location(media)
        else:
            vlc_media = self._instance.media_new_path(os.path.abspath(media))
        if vlc_media is None:  # the current item, if any, plays on
            raise PlayerError(f"libVLC could not make a media of {media!r}")
        for option in options:
            vlc_media.add_option(option)
        self._supersede()
        # Not vlc_media.event_manager(): python-vlc memoizes that in a class-level dict, which
        # would keep every Media wrapper, its callbacks and its _Item alive for ever.
        events = self._vlc.libvlc_media_event_manager(vlc_media)
        item = _Item(token=token, media=vlc_media, events=events)
        item.events.event_attach(self._vlc.EventType.MediaStateChanged, self._on_media_state, item)
        # set_media stops the previous input and joins its thread: after it, the old item's
        # callbacks have all returned, and its Media can be released.
        self._mp.set_media(vlc_media)
        with self._lock:
            previous, self._item = self._item, item
        self._release(previous)
        try:
            self._apply_volume(volume)
            if self._mp.play() != 0:
                raise PlayerError(f"libVLC refused to start {media!r}")
        except PlayerError:
            with self._lock:
                item.closed = True
            raise

    def stop(self) -> None:
        """Stop the current item; nothing more is reported for its token. No-op when closed."""
        if self._closed:
            return
        with self._vlc_lock:
            self._stop_and_release()

    def set_volume(self, level: int) -> None:
        """Change the volume (0..100) now; it also stays for the next item."""
        self._check_open()
        _check_volume(level)
        with self._vlc_lock:
            self._apply_volume(level)

    def position_ms(self) -> int:
        """Where the live item is, in ms; -1 when nothing plays. Never goes backwards.

        It is libVLC's ``get_time()`` while that only grows (always, for a file: with
        ``start_ms``, it starts there). A live stream's ``get_time()`` can jump back (Ogg: it is
        the stream's own timestamp, and a reconnect that rejoins a little earlier sets it back
        by as much); then this goes on from where it was, by 1 ms for the jump and then by
        ``get_time()``'s own steps. So it moves exactly when ``get_time()`` moves: while audio
        arrives, and not while the stream is stalled. 0 until the first audio.
        """
        if self._closed:
            return -1
        raw = int(self._mp.get_time())
        with self._lock:
            item = self._item
            if item is None or item.closed:
                return -1
            if raw >= 0 and raw != item.raw_time:
                if item.raw_time < 0 or raw > item.raw_time:
                    item.position += raw - max(item.raw_time, 0)
                else:
                    item.position += 1
                item.raw_time = raw
            return item.position

    def close(self) -> None:
        """Stop and release the Media, the player and the instance. Idempotent."""
        if self._closed:
            return
        with self._vlc_lock:
            self._closed = True
            self._stop_and_release()
        self._mp_events.event_detach(self._vlc.EventType.MediaPlayerESAdded)
        self._mp.release()
        self._instance.release()

    # --- helpers (loop thread) ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise PlayerError("the player is closed")

    def _supersede(self) -> None:
        with self._lock:
            if self._item is not None:
                self._item.closed = True

    def _stop_and_release(self) -> None:
        # Not libvlc_media_player_stop(): in libVLC 3 that also destroys the audio output, and
        # until the next item has created a new one, audio_set_volume fails (-1), so that item
        # would start at whatever level the new output remembers. set_media(None) stops the input
        # (joining its thread, like stop) and keeps the output and its volume.
        self._supersede()
        self._mp.set_media(None)
        with self._lock:
            previous, self._item = self._item, None
        self._release(previous)

    def _release(self, item: _Item | None) -> None:
        if item is not None and item.media is not None:
            item.events.event_detach(self._vlc.EventType.MediaStateChanged)
            item.media.release()

    def _apply_volume(self, level: int) -> None:
        if self._mp.audio_set_volume(level) != 0:
            raise PlayerError(f"libVLC could not set the volume to {level} (no audio output?)")
        if self._file_output:
            equalizer = self._vlc.AudioEqualizer()
            try:
                equalizer.set_preamp(_file_preamp_db(level))
                failed = self._mp.set_equalizer(equalizer) != 0
            finally:
                equalizer.release()
            if failed:
                raise PlayerError(f"libVLC could not apply volume {level} to the file output")

    # --- libVLC callbacks (libVLC's threads, or ours inside set_media/stop) --------------------
    # Never call libVLC here; copy the fields, decide under the lock, hand over a plain event.

    def _on_media_state(self, event: Any, item: _Item) -> None:
        try:
            state = int(event.u.new_state)
            with self._lock:
                if item.closed:
                    return
                if state == _PLAYING:
                    if not item.started:
                        item.started = True
                        self._on_event(PlaybackStarted(item.token))
                    return
                if state in (_OPENING, _BUFFERING, _PAUSED):
                    return
                item.closed = True
                self._on_event(self._terminal(item, state))
        except Exception:
            self._callback_failed(item)

    def _on_es_added(self, event: Any) -> None:
        try:
            es = _EsChanged.from_address(ctypes.addressof(event.u))
            if es.i_type != _TRACK_AUDIO:
                return
            with self._lock:
                if self._item is not None and not self._item.closed:
                    self._item.audio_seen = True
        except Exception:
            self._log.exception("player_callback_failed", callback="es_added")

    @staticmethod
    def _terminal(item: _Item, state: int) -> Event:
        if state == _ENDED:
            if item.audio_seen:
                return PlaybackEnded(item.token)
            return PlaybackFailed(item.token, "no audio track: not an audio file or stream")
        if state == _ERROR:
            return PlaybackFailed(
                item.token,
                "libVLC could not open or play it (missing file, unreachable URL, bad format)",
            )
        name = _STATE_NAMES[state] if 0 <= state < len(_STATE_NAMES) else str(state)
        return PlaybackFailed(item.token, f"libVLC left the item unasked (state {name})")

    def _callback_failed(self, item: _Item) -> None:
        """Last resort inside a callback: log, and fail the item rather than go silent."""
        try:
            self._log.exception("player_callback_failed", token=item.token)
            with self._lock:
                if item.closed:
                    return
                item.closed = True
                self._on_event(PlaybackFailed(item.token, "internal error in the player callback"))
        except Exception:  # noqa: S110 - nothing may escape into libVLC's thread
            pass
