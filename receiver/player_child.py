"""The player's child process, and the small wire protocol it speaks with the daemon.

Run as ``python -I -m receiver.player_child FD`` by :class:`receiver.player_process.ProcessPlayer`
(isolated: no environment variables, user site or working directory decide what it imports).
It holds one :class:`receiver.player.Player` and nothing else of the daemon: python-vlc, the
player and this module. No structlog, no MQTT, no YAML, no cryptography, no core: every import
here stays resident for the daemon's life, next to libVLC (what that costs is measured by
``bench/footprint.py``). What only playing needs is imported by the first call that needs it:
the stream resolver and its gate (sockets, HTTP, TLS) and the traffic meter by the first call
that names a URL (a live relay); the core's playback events never (the child reports plain
fields, the daemon makes the events); nothing here imports :mod:`typing`, :mod:`socket` or
:mod:`pickle` at run time. Together about 2 MiB the idle child does without;
``tests/adapters/test_player_process.py`` keeps it so.

The protocol (:class:`Channel`): over a socket pair, each message is a 4-byte big-endian length
and a body: ``m`` and a marshal of plain values, or ``p`` and a pickle of anything else (both
ends are ours, started from the same installation and interpreter). The daemon sends
``(settings)`` once, then ``("call", seq, method, args, kwargs)``; the child answers
``("ready", pid)`` or ``("failed", reason)`` once, then ``("reply", seq, kind, value)``, and at
any time ``("playback", kind, token, detail)`` for the player's events (:func:`playback_event`
makes the core's event of them; ``("event", event)`` would carry any other event whole),
``("log", level, event, fields)`` for its log lines, which the daemon writes through its own
logger (so they look like its own), and
``("traffic", sent, received)``: the bytes its connections moved, for the daemon's traffic meter.
"""

from __future__ import annotations

# _socket: the C module under ``socket``, which builds its enums at import; the idle child needs
# none of that (and the daemon's ``socket.socket`` objects are ``_socket.socket`` ones too).
import _socket
import contextlib
import marshal
import os
import select
import signal
import struct
import sys
import threading
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, Final

    from receiver.core.events import Event

__all__ = ["Channel", "child_settings", "decode", "encode", "playback_event"]

_HEADER: Final = struct.Struct("!I")
# The first byte of a message says how the rest is encoded: marshal for plain values (every
# message the two ends exchange today; marshal is built in, pickle would cost the idle child
# about 0.3 MiB), pickle for anything else (an object, a Path), imported when first needed.
_MARSHALLED: Final = b"m"
_PICKLED: Final = b"p"


def encode(message: Any) -> bytes:
    """``message`` as a channel message's body: marshalled if it is made of plain values only
    (exactly str, bytes, int, float, bool, None, tuple, list, dict, set), else pickled."""
    try:
        return _MARSHALLED + marshal.dumps(message)
    except ValueError:  # "unmarshallable object": a class instance somewhere in it
        import pickle

        return _PICKLED + pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def decode(body: bytes) -> Any:
    """What :func:`encode` made ``body`` of."""
    kind, data = body[:1], memoryview(body)[1:]
    if kind == _MARSHALLED:
        return marshal.loads(data)  # noqa: S302 - our own child, our own messages
    if kind == _PICKLED:
        import pickle

        return pickle.loads(data)  # noqa: S301 - our own child, our own messages
    raise ValueError(f"not a channel message (it starts with {bytes(kind)!r})")


TRAFFIC_EVERY_S: Final = 1.0  # how often the child reports the bytes its connections moved
GIL_SWITCH_S: Final = 0.0005  # as the daemon's (receiver.runtime.GIL_SWITCH_S)


class Channel:
    """Length-prefixed messages (:func:`encode`) over a stream socket. ``send`` from any
    thread (serialised here); ``recv`` and ``poll`` from one thread."""

    def __init__(self, sock: _socket.socket) -> None:
        self._sock = sock
        self._send_lock = threading.Lock()

    def send(self, message: object) -> None:
        data = encode(message)
        with self._send_lock:
            self._sock.sendall(_HEADER.pack(len(data)) + data)

    def recv(self) -> Any:
        (size,) = _HEADER.unpack(self._exactly(_HEADER.size))
        return decode(self._exactly(size))

    def poll(self, timeout_s: float) -> bool:
        """Whether a message (or the end) can be read within ``timeout_s``."""
        readable, _, _ = select.select([self._sock], [], [], timeout_s)
        return bool(readable)

    def shutdown(self) -> None:
        """Ends the conversation from any thread: the peer reads the end, and so does a ``recv``
        under way or to come here; the socket keeps its descriptor until :meth:`close`.

        Only the thread that reads the channel closes it. A close from another thread frees the
        descriptor's number while the reader may be about to use it (CPython reads the number,
        lets go of the interpreter lock, then makes the system call), and the kernel gives the
        number to the next socket: the next engine's channel, whose messages the old reader
        would then take."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(_socket.SHUT_RDWR)

    def close(self) -> None:
        """Ends the conversation and frees the socket: from the thread that reads it (or when
        no thread does)."""
        self.shutdown()
        self._sock.close()

    def _exactly(self, size: int) -> bytes:
        chunks = []
        while size:
            chunk = self._sock.recv(min(size, 1 << 20))
            if not chunk:
                raise EOFError("the other end closed the channel")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)


def child_settings(player: Any, media: Any) -> dict[str, Any]:
    """What the child needs of the daemon's ``PlayerConfig`` and ``MediaConfig`` (None: no
    stream resolver), as plain values: the child never loads the configuration's classes."""
    settings: dict[str, Any] = {
        "output": player.output,
        "alsa_device": player.alsa_device,
        "wav_file": None if player.wav_file is None else os.fspath(player.wav_file),
        "vlc_args": list(player.vlc_args),
    }
    if media is not None:
        settings["media"] = {
            "allowed_schemes": list(media.allowed_schemes),
            "allowed_hosts": list(media.allowed_hosts),
        }
    return settings


def playback_event(kind: str, token: int, detail: str = "") -> Event:
    """The core's event for what the player reports: ``started``, ``ended`` or ``failed``
    (``receiver.player.Player._report``; the daemon calls this for its child's reports)."""
    from receiver.core.events import PlaybackEnded, PlaybackFailed, PlaybackStarted

    if kind == "started":
        return PlaybackStarted(token)
    if kind == "ended":
        return PlaybackEnded(token)
    if kind == "failed":
        return PlaybackFailed(token, detail)
    raise ValueError(f"unknown playback report {kind!r}")


class _Settings:
    """The child's copy of ``PlayerConfig``: what ``receiver.player.PlayerSettings`` asks (a
    plain class: a NamedTuple would import :mod:`typing`)."""

    __slots__ = ("alsa_device", "output", "vlc_args", "wav_file")

    def __init__(self, settings: dict[str, Any]) -> None:
        self.output: str = settings["output"]
        self.alsa_device: str | None = settings["alsa_device"]
        self.wav_file: str | None = settings["wav_file"]
        self.vlc_args: tuple[str, ...] = tuple(settings["vlc_args"])


class _LogForwarder:
    """The player's logger in the child: each line goes to the daemon, which writes it."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def _send(self, level: str, event: str, fields: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):  # a log line must never break playback
            self._channel.send(("log", level, event, fields))

    def info(self, event: str, **fields: Any) -> None:
        self._send("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._send("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._send("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        import traceback  # loaded by python-vlc already; here so that nothing else needs it

        self._send("error", event, {**fields, "exception": traceback.format_exc()})


def _resolver(media: dict[str, Any]) -> Any:
    """The stream resolver (``receiver.player.Resolver``) on the technician's allowlist;
    :mod:`receiver.streams` is imported by the first live relay (on the player's resolver
    thread), not while the child waits."""
    schemes = tuple(media["allowed_schemes"])
    hosts = tuple(media["allowed_hosts"])

    def resolve_on_allowlist(url: str, cancelled: Any) -> Any:
        from receiver.streams import resolve

        return resolve(url, schemes, hosts, cancelled=cancelled)

    return resolve_on_allowlist


def _names_a_url(args: tuple[Any, ...]) -> bool:
    return any(isinstance(arg, str) and "://" in arg for arg in args)


def _traffic_meter() -> Any:
    """The child's traffic meter (``receiver.health.TrafficMeter``, imported now)."""
    from receiver.health import TRAFFIC_LOOPBACK_ENV, TrafficMeter

    return TrafficMeter(lambda: None, loopback=os.environ.get(TRAFFIC_LOOPBACK_ENV) == "1")


def _report_traffic(channel: Channel, meter: Any) -> None:
    """The child's side of the traffic meter: its connections are libVLC's and the resolver's."""
    last = (0, 0)
    while True:
        time.sleep(TRAFFIC_EVERY_S)
        meter.sample()
        totals = meter.totals("media")
        if totals != last:
            try:
                channel.send(("traffic", *totals))
            except OSError:
                return  # the daemon is gone
            last = totals


def _serve(fd: int) -> int:
    channel = Channel(_socket.socket(fileno=fd))
    settings = channel.recv()
    # Imported only now, and only these: the player (python-vlc is loaded by Player()).
    from receiver.player import Player, PlayerError

    class ChildPlayer(Player):
        """Reports what it plays as plain fields (``("playback", kind, token, detail)``); the
        daemon makes the core's event of them, so this process never loads the core's events
        (nor :mod:`dataclasses`, about 0.5 MiB)."""

        def _prepare_reports(self) -> None:
            pass

        def _report(self, kind: str, token: int, detail: str = "") -> None:
            channel.send(("playback", kind, token, detail))

    try:
        resolver = _resolver(settings["media"]) if settings.get("media") is not None else None
        player = ChildPlayer(
            _Settings(settings),
            lambda event: channel.send(("event", event)),
            resolver=resolver,
            log=_LogForwarder(channel),
        )
    except PlayerError as exc:
        # "refused_args": the config's vlc_args, which no restart mends (the daemon exits 78).
        kind = "refused_args" if type(exc).__name__ == "VlcArgsRefusedError" else "failed"
        channel.send((kind, str(exc)))
        return 1
    channel.send(("ready", os.getpid()))
    metered = False
    while True:
        try:
            _, seq, method, args, kwargs = channel.recv()
        except (EOFError, OSError):
            player.close()
            return 0
        if method == "imported_modules":  # for the tests: what the child holds at this point
            channel.send(("reply", seq, "ok", sorted(sys.modules)))
            continue
        if not metered and _names_a_url((*args, *kwargs.values())):
            # Only a URL opens a connection (the daemon's files are local). The meter counts
            # the sockets open at each sample, from their start: begun before the call runs,
            # it sees every connection the child opens, as from the start. Its module is
            # imported here, before any thread of ours imports (dataclasses reads typing from
            # sys.modules: another thread's half-imported typing would break it).
            metered = True
            meter = _traffic_meter()
            threading.Thread(
                target=_report_traffic, args=(channel, meter), name="traffic", daemon=True
            ).start()
        try:
            value = None if method == "ping" else getattr(player, method)(*args, **kwargs)
            channel.send(("reply", seq, "ok", value))
        except ValueError as exc:
            channel.send(("reply", seq, "value_error", str(exc)))
        except Exception as exc:  # reported to the daemon, which decides
            channel.send(("reply", seq, "error", str(exc)))
        if method == "close":
            return 0


def _main(fd: int) -> int:
    try:
        return _serve(fd)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return 0  # the daemon went away (stopped while this process started): nothing to tell


if __name__ == "__main__":
    # The daemon decides when we stop: a Ctrl-C, a Ctrl-\ or a hang-up of the terminal it was
    # started from reaches this process too, and the daemon stops it in order.
    for ignored in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(ignored, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # A start at an instant (its thread) and libVLC's Playing (its callback) wait for the
    # interpreter lock whenever another thread holds it (the traffic meter's sample): at most
    # this long, not Python's default 5 ms, which is more than the whole start.
    sys.setswitchinterval(GIL_SWITCH_S)
    sys.exit(_main(int(sys.argv[1])))
