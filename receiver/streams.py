"""What a live-relay URL really is, found out before libVLC opens it.

A station publishes its relay as one of:

* an Icecast/HTTP stream (``audio/mpeg``, ``application/ogg`` …): libVLC reads it directly;
* an HLS live stream (an ``.m3u8`` playlist with ``#EXT-X-`` tags): libVLC's adaptive demux
  fetches the playlist and its segments, and must *not* get ``:http-continuous`` (with it libVLC
  re-asks for the playlist hundreds of times a second and never plays a segment);
* a ``.m3u`` or ``.pls`` playlist naming the stream (Icecast serves one for every mount): libVLC
  would open it as a one-item playlist and end, and with ``:http-continuous`` reopen it in a
  loop. We read it ourselves and play the first entry on the allowlist.

:func:`resolve` asks the server (one ``GET`` per URL, following at most :data:`MAX_REDIRECTS`
redirects, each target checked against the allowlist by :func:`receiver.core.urls.check_url`,
the rule the core applied to the first URL) and returns a :class:`Resolved`: the URL to give
libVLC (after redirects and playlists) and its :data:`StreamKind`. For a stream it reads the
headers, and then (:attr:`Resolved.confirm`, while libVLC starts) the first bytes, and hangs
up: a server that answers and hangs up at once is refused, since libVLC would re-ask it in a
tight loop. Playlists are read up to
:data:`MAX_PLAYLIST_BYTES`, nested at most :data:`MAX_DEPTH` deep, and an entry already
visited (a playlist naming itself) is refused.
Every URI an HLS playlist names must pass the allowlist too: its variant playlists and
segments, and the ``URI="…"`` of its tags (keys, renditions, maps). The variant playlists of a
master playlist (at most :data:`MAX_HLS_VARIANTS`) are read and checked the same way. What a live
variant adds after the relay has started is fetched by libVLC and not checked again.

Everything has one deadline (:data:`RESOLVE_DEADLINE_S`): a server trickling a byte a second
fails on time, and so does a name server gone silent (:func:`lookup`, which waits
:data:`LOOKUP_TIMEOUT_S` at most). A stop calls every step off within :data:`POLL_S`: the
lookup, the connect, the TLS handshake and each read. :func:`connect`, :func:`get_head` and
:class:`Deadline` serve the stream gate too. Failures raise :class:`StreamRefused` whose
``detail`` is built from our own words, numbers and hosts that passed validation, never from
server-supplied text.

:func:`media_options` gives the libVLC options for each kind. The module does network I/O; it
is called from the player's resolver thread, never from the daemon's loop.
"""

from __future__ import annotations

import errno
import re
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import field
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias
from urllib.parse import urljoin, urlsplit

from receiver.core import urls
from receiver.core.record import record

if TYPE_CHECKING:
    from receiver.config_model import MediaConfig

__all__ = [
    "LOOKUP_TIMEOUT_S",
    "MAX_DEPTH",
    "MAX_HLS_VARIANTS",
    "MAX_PENDING_LOOKUPS",
    "MAX_PLAYLIST_BYTES",
    "MAX_REDIRECTS",
    "NETWORK_CACHING_MS",
    "RESOLVE_DEADLINE_S",
    "Address",
    "Deadline",
    "Resolved",
    "StreamKind",
    "StreamRefused",
    "connect",
    "get_head",
    "guess_kind",
    "lookup",
    "media_options",
    "parse_playlist",
    "resolve",
    "stream_resolver",
]

StreamKind = Literal["stream", "hls"]
#: One address of a host, as ``socket.socket()`` and ``connect()`` take it: (family, type,
#: protocol, socket address).
Address: TypeAlias = tuple[socket.AddressFamily, socket.SocketKind, int, Any]

MAX_REDIRECTS: Final = 3
MAX_DEPTH: Final = 3  # a playlist naming a playlist naming a stream
MAX_PLAYLIST_BYTES: Final = 64 * 1024
MAX_HLS_VARIANTS: Final = 16  # variant playlists and renditions a master playlist may name
MAX_HEADER_BYTES: Final = 16 * 1024
RESOLVE_DEADLINE_S: Final = 10.0
CONNECT_TIMEOUT_S: Final = 5.0
POLL_S: Final = 0.25  # how often a blocked read asks whether it was cancelled
FIRST_BYTES_S: Final = 2.0  # how long a stream's first bytes are waited for
# How long a station's name is waited for, at most (within the deadline). glibc asks again after
# 5 s when a query or its answer was lost: 6.5 s lets that second try answer over 4G, and ends
# before the daemon's stall watchdog (player.stall_timeout_s, 8 s by default) restarts a relay
# that has not started, so that the relay fails saying why ("cannot look up …").
LOOKUP_TIMEOUT_S: Final = 6.5
# Name lookups given up on (deadline, stop) but still waiting for the name server, at most: past
# that, a lookup is refused at once rather than leave one more thread waiting (see lookup()).
MAX_PENDING_LOOKUPS: Final = 4

# How much a URL's input buffers before it plays: the audio a stream hiccup can last without a
# gap. libVLC's default is 1000 ms; Wi-Fi on a Pi and a distant Icecast deserve more. It does not
# delay the start of a stream from Icecast, whose burst-on-connect fills it at once.
NETWORK_CACHING_MS: Final = 3000

_PLAYLIST_TYPES: Final = frozenset(
    {
        "application/vnd.apple.mpegurl",
        "application/x-mpegurl",
        "audio/mpegurl",
        "audio/x-mpegurl",
        "audio/x-scpls",
        "application/pls+xml",
        "audio/scpls",
    }
)
_PLAYLIST_SUFFIXES: Final = (".m3u8", ".m3u", ".pls")
_AUDIO_PREFIXES: Final = ("audio/", "video/")
_AUDIO_TYPES: Final = frozenset({"application/ogg", "application/octet-stream"})


class StreamRefused(Exception):  # noqa: N818 - an outcome reported to central, not a bug
    """The URL cannot be relayed; ``detail`` says why in our own words."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@record
class Deadline:
    """When a resolve (or one request of the stream gate) must be done, and how to know that it
    was called off; every blocking step of :func:`lookup`, :func:`connect` and
    :func:`get_head` waits at most :data:`POLL_S` before asking :meth:`left` again."""

    at: float  # monotonic
    cancelled: Callable[[], bool]
    seconds: float = RESOLVE_DEADLINE_S  # the whole allowance, for the refusal's detail

    @classmethod
    def after(cls, seconds: float, cancelled: Callable[[], bool]) -> Deadline:
        """``seconds`` from now, called off once ``cancelled()`` says so."""
        return cls(time.monotonic() + seconds, cancelled, seconds)

    def left(self, host: str) -> float:
        """Seconds left; raise :class:`StreamRefused` if called off or if none are left (the
        detail blames ``host``, the server being asked)."""
        if self.cancelled():
            raise StreamRefused("stopped while asking the server")
        left = self.at - time.monotonic()
        if left <= 0:
            raise StreamRefused(f"{host} too slow: no answer in {self.seconds:g} s")
        return left


@record
class Resolved:
    """What libVLC should open, and how.

    ``confirm``, for a stream, waits (on the probe's connection, still open) for the stream's
    first bytes and raises :class:`StreamRefused` if the server hangs up first; call it once,
    after libVLC has been started (Icecast sends its first audio some 0.2 s after its headers:
    waiting for it before starting libVLC would delay every relay by as much).
    """

    url: str
    kind: StreamKind
    confirm: Callable[[], None] | None = field(default=None, compare=False)


def media_options(kind: StreamKind) -> list[str]:
    """The libVLC options for a live relay of ``kind``.

    A stream gets ``:http-continuous`` (a plain-HTTP stream then reconnects once when the
    server closes it, as an Icecast one does anyway). HLS must not: the adaptive demux asks for
    the playlist and its segments itself, at the pace the playlist's target duration sets.
    """
    options = [f":network-caching={NETWORK_CACHING_MS}"]
    if kind == "stream":
        options.append(":http-continuous")
    return options


def guess_kind(url: str) -> StreamKind:
    """The kind told by the URL alone (for a player without a resolver): ``.m3u8`` is HLS."""
    return "hls" if urlsplit(url).path.lower().endswith(".m3u8") else "stream"


def stream_resolver(media: MediaConfig) -> Callable[[str, Callable[[], bool]], Resolved]:
    """:func:`resolve` with the technician's allowlist bound, for the player."""

    def resolve_on_allowlist(url: str, cancelled: Callable[[], bool]) -> Resolved:
        return resolve(url, media.allowed_schemes, media.allowed_hosts, cancelled=cancelled)

    return resolve_on_allowlist


def resolve(
    url: str,
    allowed_schemes: tuple[str, ...],
    allowed_hosts: tuple[str, ...],
    *,
    deadline_s: float = RESOLVE_DEADLINE_S,
    cancelled: Callable[[], bool] = lambda: False,
) -> Resolved:
    """Find what ``url`` serves (see the module docstring); raise :class:`StreamRefused`.

    ``cancelled`` is asked between reads (at least every :data:`POLL_S`): once it says yes,
    the connection is dropped and :class:`StreamRefused` raised (the player stopped the item).
    """
    deadline = Deadline.after(deadline_s, cancelled)
    seen: set[str] = set()
    for _depth in range(MAX_DEPTH + 1):
        final, content_type, body = _get(url, allowed_schemes, allowed_hosts, deadline)
        seen.update((url, final))
        if not isinstance(body, bytes):
            return Resolved(final, "stream", body)
        text = body.decode("utf-8", errors="replace").lstrip("\ufeff")
        if _is_hls(text):
            playlists = _check_hls_uris(text, final, allowed_schemes, allowed_hosts)
            _check_hls_variants(playlists, allowed_schemes, allowed_hosts, deadline)
            return Resolved(final, "hls")
        entries = parse_playlist(text, final)
        if not entries:
            what = "a playlist" if content_type in _PLAYLIST_TYPES else "a text"
            raise StreamRefused(f"the server answered {what} with no stream in it")
        url = _first_allowed(entries, seen, allowed_schemes, allowed_hosts)
    raise StreamRefused(f"playlists nested deeper than {MAX_DEPTH}")


def parse_playlist(text: str, base: str) -> list[str]:
    """The entries of an M3U or PLS playlist, as absolute URLs, in order (pure)."""
    lines = [line.strip() for line in text.splitlines()]
    if lines and lines[0].lower() == "[playlist]":
        files = []
        for line in lines[1:]:
            key, sep, value = line.partition("=")
            if sep and key.strip().lower().startswith("file") and value.strip():
                files.append(urljoin(base, value.strip()))
        return files
    return [urljoin(base, line) for line in lines if line and not line.startswith("#")]


def _is_hls(text: str) -> bool:
    return text.startswith("#EXTM3U") and "#EXT-X-" in text


# RFC 8216 section 4.2: AttributeName=AttributeValue, comma-separated; a value is a quoted
# string (no quote, CR or LF inside) or runs to the next comma. Names are matched in any case
# (libVLC wants "URI"; taking "uri" too only refuses more).
_ATTRIBUTE: Final = re.compile(r'\s*([A-Za-z0-9-]+)\s*=\s*("[^"\r\n]*"|[^",]*?)\s*(?:,|$)')
_VARIANT_TAGS: Final = frozenset({"EXT-X-STREAM-INF"})
_PLAYLIST_URI_TAGS: Final = frozenset({"EXT-X-MEDIA", "EXT-X-I-FRAME-STREAM-INF"})


def _hls_lines(text: str) -> list[str]:
    """The playlist's lines as libVLC splits them: on LF only, a trailing CR dropped."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _tag_name(line: str) -> str:
    return line[1:].split(":", 1)[0]


def _attribute_uris(line: str, where: str) -> list[str]:
    """Every ``URI`` attribute of an ``#EXT-X-`` tag, quoted or not; refuse a list that does
    not parse (libVLC might read it otherwise)."""
    _name, colon, attributes = line.partition(":")
    if not colon or "=" not in attributes:
        return []
    uris, position = [], 0
    while position < len(attributes):
        match = _ATTRIBUTE.match(attributes, position)
        if match is None or match.end() == position:
            raise StreamRefused(f"{where} has a tag whose attributes cannot be read")
        if match.group(1).upper() == "URI":
            uris.append(match.group(2).strip('"'))
        position = match.end()
    return uris


def _check_hls_uris(
    text: str,
    base: str,
    allowed_schemes: tuple[str, ...],
    allowed_hosts: tuple[str, ...],
    where: str = "the HLS playlist",
) -> list[str]:
    """Check every URI ``text`` names; return those that are playlists (variants, renditions)."""
    playlists: list[str] = []
    variant_next = False
    for line in _hls_lines(text):
        if line.startswith("#"):
            tag = _tag_name(line)
            found = _attribute_uris(line, where) if tag.startswith("EXT-X-") else []
            if tag in _VARIANT_TAGS:
                if found:
                    raise StreamRefused(f"{where} names a variant inside its tag")
                variant_next = True
            elif tag in _PLAYLIST_URI_TAGS:
                playlists += (urljoin(base, uri) for uri in found)
        elif line:
            if line != line.strip() or not line.isprintable():
                raise StreamRefused(f"{where} has a URL with spaces or control characters")
            found = [line]
            if variant_next:
                playlists.append(urljoin(base, line))
            variant_next = False
        else:
            continue
        for uri in found:
            try:
                urls.check_url(urljoin(base, uri), allowed_schemes, allowed_hosts)
            except urls.UrlRefused as refused:
                raise StreamRefused(f"{where} names a URL refused: {refused.detail}") from None
    return playlists


def _check_hls_variants(
    playlists: list[str],
    allowed_schemes: tuple[str, ...],
    allowed_hosts: tuple[str, ...],
    deadline: Deadline,
) -> None:
    """Read each variant playlist of a master playlist and check what it names (one level)."""
    if len(playlists) > MAX_HLS_VARIANTS:
        raise StreamRefused(f"the HLS playlist names more than {MAX_HLS_VARIANTS} variants")
    for playlist in dict.fromkeys(playlists):
        final, _content_type, body = _get(
            playlist, allowed_schemes, allowed_hosts, deadline, playlist_only=True
        )
        if not isinstance(body, bytes):  # unreachable: playlist_only refuses a stream
            raise StreamRefused("an HLS variant is not a media playlist")
        text = body.decode("utf-8", errors="replace").lstrip("\ufeff")
        if not _is_hls(text) or any(
            line.startswith("#") and _tag_name(line) in _VARIANT_TAGS for line in _hls_lines(text)
        ):
            raise StreamRefused("an HLS variant is not a media playlist")
        _check_hls_uris(text, final, allowed_schemes, allowed_hosts, "an HLS variant")


def _first_allowed(
    entries: list[str],
    seen: set[str],
    allowed_schemes: tuple[str, ...],
    allowed_hosts: tuple[str, ...],
) -> str:
    refused: list[str] = []
    for entry in entries:
        if entry in seen:
            raise StreamRefused("the playlist names itself (a loop)")
        try:
            urls.check_url(entry, allowed_schemes, allowed_hosts)
        except urls.UrlRefused as why:
            refused.append(why.detail)
            continue
        return entry
    raise StreamRefused(f"no playlist entry may be played: {refused[0]}")


def _get(
    url: str,
    allowed_schemes: tuple[str, ...],
    allowed_hosts: tuple[str, ...],
    deadline: Deadline,
    *,
    playlist_only: bool = False,
) -> tuple[str, str, bytes | Callable[[], None] | None]:
    """GET ``url`` (redirects followed and checked): ``(final URL, content type, body)``.

    ``body`` is the playlist's bytes; for a stream, None if its first bytes came with the
    headers, else the :attr:`Resolved.confirm` that waits for them on the open connection.
    With ``playlist_only``, a stream is refused (and its connection closed).
    """
    for _ in range(MAX_REDIRECTS + 1):
        try:
            target = urls.check_url(url, allowed_schemes, allowed_hosts)
        except urls.UrlRefused as refused:
            raise StreamRefused(f"the URL is refused: {refused.detail}") from None
        sock = connect(target, deadline)
        kept = False
        try:
            status, headers, rest = get_head(sock, target, deadline)
            if status in (301, 302, 303, 307, 308):
                location = headers.get("location")
                if not location:
                    raise StreamRefused(f"HTTP {status} from {target.host} with no Location")
                url = urljoin(url, location)
                continue
            if status != 200:
                raise StreamRefused(f"{target.host} answered HTTP {status}")
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type == "text/html":
                raise StreamRefused(f"{target.host} answered a web page (HTML), not audio")
            path = target.path.split("?")[0].lower()
            if content_type in _PLAYLIST_TYPES or (
                path.endswith(_PLAYLIST_SUFFIXES)
                and not content_type.startswith(_AUDIO_PREFIXES)
                and content_type not in _AUDIO_TYPES
            ):
                return url, content_type, _read_body(sock, rest, target, deadline)
            if not rest and "content-length" in headers:
                # A file, not a live stream (those have no length): its first bytes follow at
                # once, and say what libVLC would take it for.
                rest = _recv(sock, target, deadline)
                if not rest:
                    raise StreamRefused(f"{target.host} closed the stream before sending audio")
            sniffed = _sniff(rest)
            if sniffed == "playlist":  # libVLC goes by the bytes, not the type
                return url, content_type, _read_body(sock, rest, target, deadline)
            if sniffed == "text":
                raise StreamRefused(f"{target.host} answered text, not audio")
            if playlist_only:
                raise StreamRefused("an HLS variant is not a media playlist")
            if content_type.startswith(("text/", "application/json", "application/xml")):
                raise StreamRefused(f"{target.host} answered text, not audio")
            if rest:
                return url, content_type, None
            kept = True
            return url, content_type, _confirmation(sock, target, deadline)
        finally:
            if not kept:
                sock.close()
    raise StreamRefused(f"more than {MAX_REDIRECTS} redirects (a redirect loop?)")


def lookup(host: str, port: int, deadline: Deadline) -> list[Address]:
    """The TCP addresses of ``host`` (``(family, type, proto, sockaddr)``), bounded by ``deadline``.

    ``getaddrinfo`` cannot be interrupted, and with a name server gone silent (a 4G link in a
    bad state) glibc waits its own timeouts: 5 s per try, per attempt, per server. So the
    lookup runs on a daemon thread of its own, and this waits for it at most
    :data:`LOOKUP_TIMEOUT_S` and never past the deadline, and gives up as soon as
    ``deadline.cancelled()`` says so, asking every :data:`POLL_S`. A lookup given up on is
    left to finish on its own (its answer is dropped); at most :data:`MAX_PENDING_LOOKUPS` may
    be pending at once, and past that a lookup is refused at once. An address literal needs no
    name server and is read on the caller's thread.
    """
    try:
        return _addresses(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=_NUMERIC))
    except socket.gaierror:
        pass  # a name, not an address literal
    deadline.left(host)  # stopped, or no time left: no lookup to start
    if not _pending_lookups.acquire(blocking=False):
        raise StreamRefused(
            f"cannot look up {host}: the name server has not answered the last "
            f"{MAX_PENDING_LOOKUPS} lookups yet"
        )
    outcome: list[list[Address] | OSError] = []
    done = threading.Event()

    def look_up() -> None:
        try:
            outcome.append(_addresses(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)))
        except OSError as exc:  # socket.gaierror: no such name, no name server, …
            outcome.append(exc)
        finally:
            _pending_lookups.release()
            done.set()

    threading.Thread(target=look_up, name="stream-lookup", daemon=True).start()
    start = time.monotonic()
    bound = Deadline(
        min(deadline.at, start + LOOKUP_TIMEOUT_S),
        deadline.cancelled,
        round(min(deadline.at - start, LOOKUP_TIMEOUT_S), 1),
    )
    while not done.wait(min(POLL_S, _lookup_left(bound, host))):
        pass  # _lookup_left() raises once the bound has passed or we were cancelled
    found = outcome[0]
    if isinstance(found, OSError) or not found:
        raise StreamRefused(f"cannot look up {host} (no such name, or no name server)")
    return found


_NUMERIC: Final = socket.AI_NUMERICHOST
_pending_lookups: Final = threading.BoundedSemaphore(MAX_PENDING_LOOKUPS)


def _addresses(infos: list[tuple[Any, Any, int, str, Any]]) -> list[Address]:
    return [(family, kind, proto, address) for family, kind, proto, _name, address in infos]


def _lookup_left(deadline: Deadline, host: str) -> float:
    if deadline.cancelled():
        raise StreamRefused(f"stopped while looking up {host}")
    left = deadline.at - time.monotonic()
    if left <= 0:
        raise StreamRefused(
            f"cannot look up {host}: the name server did not answer in {deadline.seconds:g} s"
        )
    return left


def connect(target: urls.Target, deadline: Deadline) -> socket.socket:
    """A TCP connection (TLS for ``https``, the certificate checked) to ``target``.

    Each step is bounded by ``deadline`` and gives up within :data:`POLL_S` of
    ``deadline.cancelled()``: the name lookup (:func:`lookup`), each address's connect (at most
    :data:`CONNECT_TIMEOUT_S` each, tried in turn as ``socket.create_connection`` does) and the
    TLS handshake. Raises :class:`StreamRefused`.
    """
    failed: StreamRefused | None = None
    for address in lookup(target.host, target.port, deadline):
        try:
            sock = _connect_to(address, target, deadline)
        except _Unreachable as unreachable:
            failed = unreachable
            continue
        if target.scheme == "https":
            return _tls(sock, target, deadline)
        return sock
    raise failed or _Unreachable(target)


class _Unreachable(StreamRefused):
    """No connection to one address of the target (the next one is tried)."""

    def __init__(self, target: urls.Target) -> None:
        super().__init__(f"cannot connect to {target.host} port {target.port}")


def _connect_to(address: Address, target: urls.Target, deadline: Deadline) -> socket.socket:
    """A non-blocking connect, waited for in steps of POLL_S (a blocking one cannot be called
    off: a link dropping every packet holds it for the whole timeout)."""
    deadline.left(target.host)  # a lookup that answered just as we were stopped goes no further
    family, kind, proto, sockaddr = address
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        code = sock.connect_ex(sockaddr)
        give_up = time.monotonic() + CONNECT_TIMEOUT_S
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        while code in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
            wait = min(POLL_S, deadline.left(target.host), give_up - time.monotonic())
            if wait <= 0:
                raise _Unreachable(target)
            if poller.poll(wait * 1000):
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                break
        if code != 0:
            raise _Unreachable(target)
        sock.setblocking(True)
        return sock
    except BaseException:
        sock.close()
        raise


def _tls(sock: socket.socket, target: urls.Target, deadline: Deadline) -> socket.socket:
    """``sock`` wrapped in TLS, the handshake done in steps of POLL_S (OpenSSL resumes a
    handshake that timed out waiting for the server)."""
    import ssl  # here: the player's child loads OpenSSL only for an https station

    try:
        wrapped = ssl.create_default_context().wrap_socket(
            sock, server_hostname=target.host, do_handshake_on_connect=False
        )
    except (OSError, ssl.SSLError):
        sock.close()
        raise StreamRefused(f"TLS with {target.host} failed") from None
    try:
        while True:
            wrapped.settimeout(min(POLL_S, deadline.left(target.host)))
            try:
                wrapped.do_handshake()
                return wrapped
            except TimeoutError:
                continue
    except (OSError, ssl.SSLError):
        wrapped.close()
        raise StreamRefused(f"TLS with {target.host} failed") from None
    except BaseException:
        wrapped.close()
        raise


def _recv(sock: socket.socket, target: urls.Target, deadline: Deadline) -> bytes:
    while True:
        sock.settimeout(min(POLL_S, deadline.left(target.host)))
        try:
            return sock.recv(4096)
        except TimeoutError:
            continue  # left() raises once the deadline has passed or we were cancelled
        except OSError:
            raise StreamRefused(f"the connection to {target.host} failed") from None


def get_head(
    sock: socket.socket, target: urls.Target, deadline: Deadline
) -> tuple[int, dict[str, str], bytes]:
    """Send ``GET`` for ``target`` on ``sock`` (from :func:`connect`) and read the answer's head:
    ``(status, headers with lowercase names, the first bytes of the body)``. Bounded by
    ``deadline``, a head over :data:`MAX_HEADER_BYTES` refused; raises :class:`StreamRefused`.
    """
    host = f"[{target.host}]" if ":" in target.host else target.host
    request = (
        f"GET {target.path} HTTP/1.0\r\nHost: {host}:{target.port}\r\n"
        "User-Agent: loa-receiver\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    try:
        sock.settimeout(deadline.left(target.host))
        sock.sendall(request.encode("ascii"))
    except OSError:
        raise StreamRefused(f"the connection to {target.host} failed") from None
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEADER_BYTES:
            raise StreamRefused(f"{target.host} sent headers over {MAX_HEADER_BYTES} bytes")
        chunk = _recv(sock, target, deadline)
        if not chunk:
            raise StreamRefused(f"{target.host} closed the connection without an answer")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith(("HTTP/", "ICY")) or not parts[1].isdigit():
        raise StreamRefused(f"{target.host} did not answer HTTP")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest


def _confirmation(
    sock: socket.socket, target: urls.Target, deadline: Deadline
) -> Callable[[], None]:
    """:attr:`Resolved.confirm` for a stream whose first bytes had not come with its headers.

    A server that hangs up first is refused: with Icecast's headers libVLC would ask it again
    in a tight loop (about a thousand requests a second, with no event). One still silent after
    :data:`FIRST_BYTES_S` passes: libVLC and the stall watchdog deal with that.
    """

    def confirm() -> None:
        wait = Deadline(
            min(deadline.at, time.monotonic() + FIRST_BYTES_S), deadline.cancelled, FIRST_BYTES_S
        )
        try:
            first = _recv(sock, target, wait)
            if not first:
                raise StreamRefused(f"{target.host} closed the stream before sending audio")
        except StreamRefused:
            if deadline.cancelled() or time.monotonic() >= wait.at:
                return  # stopped meanwhile, or silent so far: not for us to judge
            raise
        finally:
            sock.close()
        if _sniff(first) is not None:
            raise StreamRefused(f"{target.host} answered a playlist or text as audio")

    return confirm


def _sniff(first: bytes) -> Literal["playlist", "text"] | None:
    """What a body typed as audio really is, by its first bytes (libVLC looks at them too: a
    ``#EXTM3U`` goes to its HLS or playlist reader whatever the server says)."""
    start = first.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if start.startswith((b"#extm3u", b"[playlist]")):
        return "playlist"
    if start.startswith(b"<"):
        return "text"
    return None


def _read_body(sock: socket.socket, rest: bytes, target: urls.Target, deadline: Deadline) -> bytes:
    body = rest
    while len(body) <= MAX_PLAYLIST_BYTES:
        chunk = _recv(sock, target, deadline)
        if not chunk:
            return body
        body += chunk
    raise StreamRefused(f"the playlist from {target.host} is over {MAX_PLAYLIST_BYTES} bytes")
