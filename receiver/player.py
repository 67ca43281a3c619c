"""The libVLC adapter: plays one item at a time and reports what happened to it.

Owns the only ``vlc.Instance``, its only ``vlc.MediaPlayer`` and the ``vlc.Media`` of the current
item (it runs in the supervised child of :mod:`receiver.player_process`). Called from one thread;
libVLC's callbacks only copy fields and hand a plain event to ``on_event``. Per token: at most one
``PlaybackStarted``, then one ``PlaybackEnded`` or ``PlaybackFailed`` unless a ``stop``,
``close`` or new ``play`` supersedes it. The events contract, live streams, volume and libVLC's
pitfalls are in ``docs/adapters.md``.
"""

from __future__ import annotations

import ctypes
import importlib
import math
import os
import threading
import time

from receiver.errors import PlayerError, VlcArgsRefusedError

# What the idle player's child does without is imported by the first call that needs it: the
# core's events (and dataclasses) by the first play or preroll (never in the child: see
# Player._report), the stream resolver and gate (sockets, HTTP, TLS) by the first relay or URL.
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, Protocol

    from receiver.core.events import Event
    from receiver.stream_gate import StreamGate
    from receiver.streams import Resolved

    # receiver.streams.resolve with the allowlist bound: (url, cancelled) -> Resolved
    Resolver = Callable[[str, Callable[[], bool]], Resolved]

    class PlayerSettings(Protocol):
        """What the player reads of its configuration: ``receiver.config_model.PlayerConfig``,
        or the plain copy the player's child process builds (it does not load the config
        classes)."""

        @property
        def output(self) -> str: ...
        @property
        def alsa_device(self) -> str | None: ...
        @property
        def wav_file(self) -> str | os.PathLike[str] | None: ...
        @property
        def vlc_args(self) -> tuple[str, ...]: ...


# (PlayerSettings and Resolver, for type checkers only, are not in __all__: they do not exist
# at run time.)
__all__ = ["ANY_TOKEN", "Player", "PlayerError", "instance_args"]

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

# preroll()'s token for a file opened before its play is named: the play adopts it. The same as
# receiver.ports.ANY_TOKEN (not imported: the player's child process does without the ports).
ANY_TOKEN = 0

# A start at an instant (``play(at=...)``): the thread sleeps until this long before it, then
# sleeps to the instant itself; it waits this long for libVLC's Playing to say how late it was.
START_AT_PRECISE_S = 0.005
START_AT_REPORT_S = 2.0

# VLC's equalizer with flat bands scales by 0.25 (-12.04 dB); the preamp range is +-20 dB.
_EQ_UNITY_DB = 20.0 * math.log10(4.0)
_EQ_PREAMP_MIN_DB = -20.0
_EQ_PREAMP_MAX_DB = 20.0


class _EsChanged(ctypes.Structure):
    """``libvlc_event_t.u.media_player_es_changed``, which python-vlc's EventUnion lacks."""

    _fields_ = (("i_type", ctypes.c_int), ("i_id", ctypes.c_int))


class _Item:
    """One ``play()``: its token, its Media, and what its callbacks have seen (under the lock).
    A plain class: a dataclass would load :mod:`dataclasses` into the idle child."""

    __slots__ = (
        "audio_seen",
        "closed",
        "events",
        "gate",
        "media",
        "playing",
        "playing_mono",
        "position",
        "prerolled",
        "raw_time",
        "started",
        "token",
    )

    def __init__(self, token: int, media: Any, events: Any, prerolled: str | None = None) -> None:
        self.token = token
        self.media = media  # vlc.Media; ours until released (None while a URL is resolved)
        self.events = events  # the Media's EventManager: python-vlc keeps our callback in it
        self.audio_seen = False
        self.started = False
        self.closed = False  # terminal event sent, or superseded: report nothing more
        self.raw_time = -1  # the last get_time() that position_ms() saw (loop thread only)
        self.position = 0  # what position_ms() reports: monotonic (loop thread only)
        self.prerolled = prerolled  # opened paused by preroll() (media and offset), not resumed
        self.gate: StreamGate | None = None  # a live stream's gate, closed on release
        self.playing_mono: float | None = None  # when libVLC said Playing for the start
        self.playing = threading.Event()  # set with playing_mono


def refused_vlc_args_line(vlc_args: Sequence[str]) -> str:
    """What to say of ``player.vlc_args`` that libVLC refuses (the option first: a log line is
    cut at 200 characters)."""
    return (
        f"player.vlc_args: libVLC refuses {list(vlc_args)!r} (it printed the reason on stderr); "
        "remove or correct the option"
    )


def vlc_args_refused(config: PlayerSettings) -> str | None:
    """:func:`refused_vlc_args_line` if libVLC refuses ``config``'s ``vlc_args``, else None:
    an instance is made with them and let go (``receiver check-config``; the daemon itself
    leaves libVLC to its player's process)."""
    if not config.vlc_args:
        return None
    instance = _import_vlc().Instance(instance_args(config))
    if instance is None:
        return refused_vlc_args_line(config.vlc_args)
    instance.release()
    return None


def instance_args(config: PlayerSettings) -> list[str]:
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
    options = []
    if start_ms:
        # A float option, parsed with libVLC's locale-independent us_atof: always a '.'.
        options.append(f":start-time={start_ms // 1000}.{start_ms % 1000:03d}")
    if live or "://" in media:
        from receiver.streams import NETWORK_CACHING_MS, guess_kind, media_options

        if live:
            return media_options(guess_kind(media))
        options.append(f":network-caching={NETWORK_CACHING_MS}")
    return options


def _preroll_key(media: str, start_ms: int) -> str:
    """What a prerolled item must match to be resumed rather than opened again."""
    return f"{os.path.abspath(media) if '://' not in media else media}@{start_ms}"


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
        config: PlayerSettings,
        on_event: Callable[[Event], None],
        *,
        resolver: Resolver | None = None,
        log: Any = None,
    ) -> None:
        """``log``: a structlog-like logger (``info``, ``exception``); None: structlog's, bound
        to ``component="player"`` (the child process passes one that forwards to the daemon)."""
        args = instance_args(config)
        self._vlc = _import_vlc()
        self._on_event = on_event
        self._resolver = resolver
        # Held around every call that changes what libVLC plays: the loop thread's, and the
        # resolver thread's once it knows what to open. Never taken in a libVLC callback.
        self._vlc_lock = threading.RLock()
        self._file_output = config.output == "file"
        if log is None:
            import structlog  # here: the player's child process does without it

            log = structlog.get_logger(component="player")
        self._log: Any = log
        self._lock = threading.Lock()  # guards _item and the _Item flags; never held into libVLC
        self._item: _Item | None = None
        self._closed = False

        self._instance = self._vlc.Instance(args)
        if self._instance is None and config.vlc_args:
            raise VlcArgsRefusedError(refused_vlc_args_line(config.vlc_args))
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
        self,
        token: int,
        media: str,
        volume: int,
        start_ms: int = 0,
        *,
        live: bool = False,
        at: float | None = None,
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

        ``at`` (a ``time.monotonic()`` instant; local files only) starts it then rather than
        now: see :meth:`_start_at`.
        """
        self._check_open()
        _check_volume(volume)
        _check_start(start_ms, live=live)
        self._prepare_reports()
        if at is not None:
            if live or "://" in media:
                raise ValueError("only a local file can start at an instant, not a stream")
            self._start_at(token, media, volume, start_ms, at)
            return
        if live and self._resolver is not None and "://" in media:
            self._resolve_then_open(token, media, volume, self._resolver)
            return
        with self._vlc_lock:
            if self._resume(token, _preroll_key(media, start_ms), volume):
                return
            self._open(token, media, volume, _media_options(media, start_ms, live=live))

    def preroll(self, token: int, media: str, volume: int, start_ms: int = 0) -> None:
        """Open the file ``media`` now, paused at ``start_ms``, replacing any item, so that a
        later ``play()`` with the same token, media and offset only has to resume it.

        For a start at an instant (``start_at``, several receivers at once): opening a file
        (demuxer, decoder, audio output) takes libVLC some milliseconds, different on each
        board; resuming a paused one is under one. Nothing is reported for the token until
        that ``play()`` (libVLC passes through ``Playing`` on its way to ``Paused`` here; that
        is not the start), except ``PlaybackFailed`` if the file cannot be opened. ``stop()``,
        another ``play()`` or ``drop_preroll()`` lets it go. Files only: a live stream opened
        early would buffer a broadcast that has not begun.

        Token 0 (:data:`ANY_TOKEN`) opens it for whichever ``play()`` of that file and offset
        comes next, which then gives it its token: the daemon opens a cached file so while a
        command's durable writes are under way, before its core has named the play.
        """
        self._check_open()
        _check_volume(volume)
        _check_start(start_ms, live=False)
        self._prepare_reports()
        if "://" in media:
            raise ValueError("only a local file can be prerolled, not a URL")
        options = [*_media_options(media, start_ms, live=False), ":start-paused"]
        with self._vlc_lock:
            self._open(token, media, volume, options, prerolled=_preroll_key(media, start_ms))

    def drop_preroll(self, token: int) -> None:
        """Let go of the item ``preroll()`` opened for ``token``, if it is still waiting."""
        if self._closed:
            return
        with self._vlc_lock:
            with self._lock:
                item = self._item
                if item is None or item.token != token or item.prerolled is None:
                    return
            self._stop_and_release()

    def _start_at(self, token: int, media: str, volume: int, start_ms: int, at: float) -> None:
        """Have the file opened paused (it normally is: ``preroll()`` a second ahead) and resume
        it at ``at`` on a thread of its own: the caller (the daemon's loop, a process away) is
        then no longer between the instant and the sound.

        The daemon decides the instant; this only keeps it. ``stop()``, ``drop_preroll()``,
        ``close()`` or another ``play()`` or ``preroll()`` before the instant cancels the start:
        the thread checks, under the lock every one of those takes, that the item is still the
        one it was armed for and still paused, so a cancelled start can never sound, late or
        not. A ``play()`` without ``at`` for the same token resumes it at once instead.
        """
        key = _preroll_key(media, start_ms)
        with self._vlc_lock:
            with self._lock:
                item = self._item
                opened = (
                    item is not None
                    and not item.closed
                    and item.token == token
                    and item.prerolled == key
                )
            if opened:
                self._apply_volume(volume)  # now, so that at the instant only the resume is left
            else:
                options = [*_media_options(media, start_ms, live=False), ":start-paused"]
                self._open(token, media, volume, options, prerolled=key)
                with self._lock:
                    item = self._item
        if item is not None:
            threading.Thread(
                target=self._resume_at, args=(item, at), name="start-at", daemon=True
            ).start()

    def _resume_at(self, item: _Item, at: float) -> None:
        """The start-at thread: wait for ``at`` (a coarse sleep, then a precise one on the same
        monotonic clock), resume ``item`` if nothing cancelled it, and say how late it sounded."""
        try:
            coarse = at - START_AT_PRECISE_S - time.monotonic()
            if coarse > 0:
                time.sleep(coarse)
            left = at - time.monotonic()
            if left > 0:
                time.sleep(left)  # clock_nanosleep to an absolute instant: wakes right after it
            with self._vlc_lock:
                with self._lock:
                    if self._closed or item.closed or self._item is not item:
                        return  # cancelled: stopped, dropped, superseded or closed
                    if item.prerolled is None:
                        return  # started by a play() without ``at`` meanwhile
                    item.prerolled = None  # from here, its ``Playing`` is the start
                resumed = time.monotonic()
                self._mp.set_pause(0)
            started = item.playing_mono if item.playing.wait(START_AT_REPORT_S) else None
            self._log.info(
                "started_at_instant",
                token=item.token,
                at=round(at, 6),
                resume_late_ms=round((resumed - at) * 1000.0, 3),
                playing_mono=None if started is None else round(started, 6),
                late_ms=None if started is None else round((started - at) * 1000.0, 3),
            )
        except Exception:
            self._callback_failed(item)

    def _resume(self, token: int, key: str, volume: int) -> bool:
        """Start the prerolled item if it is this one; under ``_vlc_lock``."""
        with self._lock:
            item = self._item
            if item is None or item.closed or item.prerolled != key:
                return False
            if item.token not in (token, ANY_TOKEN):
                return False
            item.token = token  # its events carry the play's token from here
            item.prerolled = None  # from here, its ``Playing`` is the start
        try:
            self._apply_volume(volume)
            self._mp.set_pause(0)
        except PlayerError:
            with self._lock:
                item.closed = True
            raise
        return True

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
        from receiver.stream_gate import StreamGate
        from receiver.streams import StreamRefused, media_options

        current = item  # the placeholder, then the item _open makes: what "cancelled" asks about
        try:
            resolved = resolver(url, lambda: current.closed or self._closed)
            # A stream goes through a gate on loopback, so that a station hanging up at once
            # in mid-relay is not asked again in a tight loop (receiver.stream_gate).
            gate = StreamGate(resolved.url) if resolved.kind == "stream" else None
            with self._vlc_lock:
                with self._lock:
                    if item.closed or self._closed or self._item is not item:
                        if gate is not None:
                            gate.close()
                        return
                opened = resolved.url if gate is None else gate.url
                try:
                    self._open(item.token, opened, volume, media_options(resolved.kind))
                except PlayerError:
                    if gate is not None:
                        gate.close()
                    raise
                with self._lock:
                    if self._item is not None:
                        current = self._item
                        current.gate = gate
            self._log.info("stream_resolved", token=item.token, kind=resolved.kind)
            if resolved.confirm is not None:
                resolved.confirm()
        except StreamRefused as refused:
            self._abandon(current, f"not relayed: {refused.detail}")
        except PlayerError as exc:  # _open closed the item it made: report it here
            self._report("failed", item.token, str(exc))
        except Exception:
            self._callback_failed(item)

    def _abandon(self, item: _Item, detail: str) -> None:
        """Stop ``item`` if it is still the current one, and report it failed."""
        if item.media is not None:
            with self._vlc_lock:
                with self._lock:
                    if item.closed or self._item is not item:
                        return
                self._stop_and_release()
            self._report("failed", item.token, detail)
            return
        self._fail(item, detail)

    def _fail(self, item: _Item, detail: str) -> None:
        with self._lock:
            if item.closed:
                return
            item.closed = True
        self._report("failed", item.token, detail)

    def _open(
        self,
        token: int,
        media: str,
        volume: int,
        options: list[str],
        *,
        prerolled: str | None = None,
    ) -> None:
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
        item = _Item(token=token, media=vlc_media, events=events, prerolled=prerolled)
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

    # --- what is reported ----------------------------------------------------------------------

    def _prepare_reports(self) -> None:
        """Import the core's events now, in the loop thread (a play or preroll), so that the
        callbacks do not: an import in libVLC's thread would delay the start it reports."""
        import receiver.core.events
        import receiver.player_child  # noqa: F401 - for _report

    def _report(self, kind: str, token: int, detail: str = "") -> None:
        """Hand ``on_event`` the core's event: ``kind`` is ``started``, ``ended`` or ``failed``
        (with ``detail``). The player's child overrides this and :meth:`_prepare_reports`: it
        sends the three fields, and the daemon makes the event (the idle child then never
        loads the core's events, nor :mod:`dataclasses`)."""
        from receiver.player_child import playback_event

        self._on_event(playback_event(kind, token, detail))

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
        if item is not None and item.gate is not None:
            item.gate.close()
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
                    if item.prerolled is None and not item.started:
                        item.started = True
                        item.playing_mono = time.monotonic()
                        item.playing.set()
                        self._report("started", item.token)
                    return
                if state in (_OPENING, _BUFFERING, _PAUSED):
                    return
                item.closed = True
                self._report(*self._terminal(item, state))
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
    def _terminal(item: _Item, state: int) -> tuple[str, int, str]:
        """What to report of ``item`` that libVLC left in ``state``: ``_report``'s arguments."""
        if state == _ENDED:
            if item.audio_seen:
                return "ended", item.token, ""
            return "failed", item.token, "no audio track: not an audio file or stream"
        if state == _ERROR:
            return (
                "failed",
                item.token,
                "libVLC could not open or play it (missing file, unreachable URL, bad format)",
            )
        name = _STATE_NAMES[state] if 0 <= state < len(_STATE_NAMES) else str(state)
        return "failed", item.token, f"libVLC left the item unasked (state {name})"

    def _callback_failed(self, item: _Item) -> None:
        """Last resort inside a callback: log, and fail the item rather than go silent."""
        try:
            self._log.exception("player_callback_failed", token=item.token)
            with self._lock:
                if item.closed:
                    return
                item.closed = True
                self._report("failed", item.token, "internal error in the player callback")
        except Exception:  # noqa: S110 - nothing may escape into libVLC's thread
            pass
