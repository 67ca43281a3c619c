"""The media engine in a child process: libVLC can crash or wedge, the daemon must not.

:class:`ProcessPlayer` has :class:`receiver.player.Player`'s API (``play``, ``stop``,
``set_volume``, ``position_ms``, ``close``, and any other public method the player grows: calls
are forwarded by name) and runs the real ``Player`` in a child process
(``python -I -m receiver.player_child``: it loads the player and python-vlc, nothing else of the
daemon), talking to it over a socket pair (:class:`receiver.player_child.Channel`: pickles, both
ends ours). The daemon keeps every decision; the child only plays, and sends the player's events
and log lines back as they come.

Supervision:

* **Crash.** When the child dies (a libVLC thread's general-protection fault, a kill), the
  reader thread sees the socket close and reports :class:`~receiver.core.events.PlayerCrashed`
  at once. The core then ends the item that was sounding ``failed`` ``playback_failed`` and
  switches the amplifier off without the tail.
* **Wedge.** While an item is live, a watchdog thread pings the child every
  :data:`PING_EVERY_S`; a call or ping unanswered for :data:`ANSWER_TIMEOUT_S` means the child is
  stuck (a libVLC call that never returns): it is killed (SIGKILL), which is then a crash as
  above. A wedge is thus reported within ``PING_EVERY_S + ANSWER_TIMEOUT_S`` (under 1 s).
* The next ``play`` starts a new child (its libVLC start-up is then part of that item's start).

What it costs is measured by ``bench/relay.py`` and ``bench/latency.py`` (a round trip over the
socket pair per call: well under a millisecond) and ``bench/footprint.py`` (a second Python
interpreter holding libVLC; the daemon itself no longer loads libVLC).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import structlog

from receiver.config_model import MediaConfig, PlayerConfig
from receiver.core.events import Event, PlaybackFailed, PlayerCrashed
from receiver.errors import PlayerError, VlcArgsRefusedError
from receiver.player_child import Channel, child_settings, playback_event

__all__ = ["ANSWER_TIMEOUT_S", "PING_EVERY_S", "ProcessPlayer"]

PING_EVERY_S: Final = 0.25
ANSWER_TIMEOUT_S: Final = 0.6
START_TIMEOUT_S: Final = 20.0  # the child imports python-vlc and starts libVLC


class ProcessPlayer:
    """``receiver.player.Player`` in a supervised child process. Call it from one thread."""

    def __init__(
        self,
        config: PlayerConfig,
        on_event: Callable[[Event], None],
        *,
        media: MediaConfig | None = None,
    ) -> None:
        """``media``: the allowlist for the stream resolver (None: no resolver)."""
        self._settings = child_settings(config, media)
        self._on_event = on_event
        self._log: Any = structlog.get_logger(component="player_process")
        self._child_log: Any = structlog.get_logger(component="player")
        self._lock = threading.Lock()  # the connection's send side and the reply slots
        self._replies: dict[int, tuple[str, Any]] = {}
        # Calls posted without waiting: seq -> (method, what to do with its error, if anything).
        self._unawaited: dict[int, tuple[str, Callable[[str], None] | None]] = {}
        self._answered = threading.Condition(self._lock)
        self._seq = 0
        # Media bytes (sent, received): of the children that ended, and of the current one.
        self._media_ended = (0, 0)
        self._media_current = (0, 0)
        self._child: subprocess.Popen[bytes] | None = None
        self._conn: Channel | None = None
        self._live = False  # an item was started and not stopped: the watchdog pings
        self._closed = False
        self._stop_watchdog = threading.Event()
        self._start_child()
        threading.Thread(target=self._watchdog, name="player-watchdog", daemon=True).start()

    # --- the player's API ---------------------------------------------------------------------

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
        """``at``: the child starts it itself at that ``time.monotonic()`` instant (the clock
        is machine-wide), so the hop to the child is not between the instant and the sound.

        Posted, not waited for: the loop goes on while the child starts the sound (its start
        is reported as ever); a play the child refuses is reported ``PlaybackFailed`` for its
        token, with the child's reason. A wedged child is found by the watchdog's pings."""
        if self._conn is None:
            self._start_child()

        def refused(reason: str) -> None:
            self._on_event(PlaybackFailed(token, reason))

        self._post("play", token, media, volume, start_ms, live=live, at=at, on_error=refused)
        self._live = True

    def preroll(self, token: int, media: str, volume: int, start_ms: int = 0) -> None:
        """Posted, not waited for: a file that cannot be opened is reported for its token, and
        the ``play`` after it opens the file itself; a refused call is logged."""
        if self._conn is None:
            self._start_child()
        self._post("preroll", token, media, volume, start_ms)

    def drop_preroll(self, token: int) -> None:
        """Posted, not waited for (a refused call is logged)."""
        if self._closed or self._conn is None:
            return
        self._post("drop_preroll", token)

    def stop(self) -> None:
        if self._closed or self._conn is None:
            return
        self._live = False
        self._call("stop")

    def set_volume(self, level: int) -> None:
        if self._conn is None:
            self._start_child()
        self._call("set_volume", level)

    def position_ms(self) -> int:
        if self._conn is None:
            return -1
        result: int = self._call("position_ms")
        return result

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_watchdog.set()
        with contextlib.suppress(Exception):
            if self._conn is not None:
                self._call("close")
        self._end_child()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        """Any other public method of the player (added later) is forwarded as it is."""
        if name.startswith("_"):
            raise AttributeError(name)

        def forward(*args: Any, **kwargs: Any) -> Any:
            if self._conn is None:
                self._start_child()
            return self._call(name, *args, **kwargs)

        return forward

    def media_bytes(self) -> tuple[int, int]:
        """Bytes (sent, received) the media engine's connections moved, over all its children
        (running totals, for the traffic meter; the child reports them every second)."""
        with self._lock:
            return (
                self._media_ended[0] + self._media_current[0],
                self._media_ended[1] + self._media_current[1],
            )

    @property
    def child_pid(self) -> int | None:
        child = self._child
        return child.pid if child is not None and child.poll() is None else None

    # --- the child ----------------------------------------------------------------------------

    def _start_child(self) -> None:
        ours, theirs = socket.socketpair()
        child = subprocess.Popen(  # our own interpreter and package, isolated from the environment
            [sys.executable, "-I", "-m", "receiver.player_child", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        conn = Channel(ours)
        try:
            conn.send(self._settings)
            if not conn.poll(START_TIMEOUT_S):
                raise PlayerError(f"the media engine did not start in {START_TIMEOUT_S:g} s")
            kind, detail = conn.recv()
        except (OSError, EOFError) as exc:
            child.kill()
            child.wait()
            raise PlayerError(f"the media engine did not start ({exc})") from None
        except PlayerError:
            child.kill()
            child.wait()
            raise
        if kind == "refused_args":
            child.wait()
            raise VlcArgsRefusedError(str(detail))
        if kind != "ready":
            child.wait()
            raise PlayerError(str(detail))
        with self._lock:
            self._child, self._conn = child, conn
            self._replies.clear()
            self._unawaited.clear()
            self._media_ended = (
                self._media_ended[0] + self._media_current[0],
                self._media_ended[1] + self._media_current[1],
            )
            self._media_current = (0, 0)
        threading.Thread(
            target=self._read, args=(child, conn), name="player-reader", daemon=True
        ).start()
        self._log.info("media_engine_started", pid=child.pid)

    def _end_child(self) -> None:
        with self._lock:
            child, conn = self._child, self._conn
            self._child = self._conn = None
        if conn is not None:
            conn.shutdown()  # its reader thread closes it (Channel.shutdown says why)
        if child is not None:
            try:
                child.wait(timeout=2)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def _read(self, child: subprocess.Popen[bytes], conn: Channel) -> None:
        """The reader thread: events, log lines and replies from the child, until it goes."""
        try:
            while True:
                message = conn.recv()
                if message[0] == "playback":
                    self._on_event(playback_event(*message[1:]))
                    continue
                if message[0] == "event":
                    self._on_event(message[1])
                    continue
                if message[0] == "log":
                    _, level, event, fields = message
                    getattr(self._child_log, level)(event, **fields)
                    continue
                if message[0] == "traffic":
                    with self._lock:
                        if self._child is child:
                            self._media_current = (message[1], message[2])
                    continue
                _, seq, kind, value = message
                with self._lock:
                    posted = self._unawaited.pop(seq, None)
                    if posted is None:
                        self._replies[seq] = (kind, value)
                        self._answered.notify_all()
                if posted is not None and kind != "ok":
                    method, on_error = posted
                    self._log.warning("media_engine_call_failed", call=method, error=value)
                    if on_error is not None:
                        on_error(str(value))
        except (EOFError, OSError):
            pass
        except Exception:
            self._log.exception("media_engine_reader_failed")
        self._lost(child)
        conn.close()  # here, by the one thread that reads it

    def _lost(self, child: subprocess.Popen[bytes]) -> None:
        with self._lock:
            if self._child is not child:
                return  # closed or replaced on purpose
            self._child = None
            conn, self._conn = self._conn, None
            self._answered.notify_all()
        if conn is not None:
            conn.shutdown()  # closed by its reader, which is this thread
        child.kill()
        code = child.wait()
        self._live = False
        if self._closed:
            return
        why = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        self._log.error("media_engine_lost", pid=child.pid, why=why)
        self._on_event(PlayerCrashed(f"the media engine stopped ({why})"))

    def _post(
        self,
        method: str,
        *args: Any,
        on_error: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        """Send a call and go on; its answer is only logged if it is an error, and handed to
        ``on_error`` (from the reader thread: it must only queue)."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise PlayerError("the media engine is not running")
            self._seq += 1
            self._unawaited[self._seq] = (method, on_error)
            try:
                conn.send(("call", self._seq, method, args, kwargs))
            except OSError:
                self._unawaited.pop(self._seq, None)
                raise PlayerError("the media engine is not running") from None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            conn, child = self._conn, self._child
            if conn is None or child is None:
                raise PlayerError("the media engine is not running")
            self._seq += 1
            seq = self._seq
            try:
                conn.send(("call", seq, method, args, kwargs))
            except OSError:
                raise PlayerError("the media engine is not running") from None
            deadline = time.monotonic() + ANSWER_TIMEOUT_S
            while seq not in self._replies and self._child is child:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._answered.wait(left)
            reply = self._replies.pop(seq, None)
        if reply is None:
            if self._child is child:
                self._log.error("media_engine_wedged", pid=child.pid, call=method)
                child.kill()  # the reader sees the socket close and reports the crash
            raise PlayerError(f"the media engine did not answer {method}()")
        kind, value = reply
        if kind == "ok":
            return value
        if kind == "value_error":
            raise ValueError(value)
        raise PlayerError(value)

    def _watchdog(self) -> None:
        while not self._stop_watchdog.wait(PING_EVERY_S):
            if self._live and self._conn is not None:
                with contextlib.suppress(Exception):
                    self._call("ping")
