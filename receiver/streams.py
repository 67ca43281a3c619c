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
fails on time. Failures raise :class:`StreamRefused` whose ``detail`` is built from our own
words, numbers and hosts that passed validation, never from server-supplied text.

:func:`media_options` gives the libVLC options for each kind. The module does network I/O; it
is called from the player's resolver thread, never from the daemon's loop.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal
from urllib.parse import urljoin, urlsplit

from receiver.core import urls

if TYPE_CHECKING:
    from receiver.config_model import MediaConfig

__all__ = [
    "MAX_DEPTH",
    "MAX_HLS_VARIANTS",
    "MAX_PLAYLIST_BYTES",
    "MAX_REDIRECTS",
    "NETWORK_CACHING_MS",
    "RESOLVE_DEADLINE_S",
    "Resolved",
    "StreamKind",
    "StreamRefused",
    "guess_kind",
    "media_options",
    "parse_playlist",
    "resolve",
    "stream_resolver",
]

StreamKind = Literal["stream", "hls"]

MAX_REDIRECTS: Final = 3
MAX_DEPTH: Final = 3  # a playlist naming a playlist naming a stream
MAX_PLAYLIST_BYTES: Final = 64 * 1024
MAX_HLS_VARIANTS: Final = 16  # variant playlists and renditions a master playlist may name
MAX_HEADER_BYTES: Final = 16 * 1024
RESOLVE_DEADLINE_S: Final = 10.0
CONNECT_TIMEOUT_S: Final = 5.0
POLL_S: Final = 0.25  # how often a blocked read asks whether it was cancelled
FIRST_BYTES_S: Final = 2.0  # how long a stream's first bytes are waited for

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


@dataclass(frozen=True)
class _Deadline:
    at: float  # monotonic
    cancelled: Callable[[], bool]


@dataclass(frozen=True)
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
    deadline = _Deadline(time.monotonic() + deadline_s, cancelled)
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
    deadline: _Deadline,
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
    deadline: _Deadline,
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
        sock = _connect(target, deadline)
        kept = False
        try:
            status, headers, rest = _request(sock, target, deadline)
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


def _connect(target: urls.Target, deadline: _Deadline) -> socket.socket:
    try:
        sock = socket.create_connection(
            (target.host, target.port), timeout=min(CONNECT_TIMEOUT_S, _left(deadline, target))
        )
    except OSError:
        raise StreamRefused(f"cannot connect to {target.host} port {target.port}") from None
    if target.scheme == "https":
        import ssl  # here: the player's child loads OpenSSL only for an https playlist

        try:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=target.host)
        except (OSError, ssl.SSLError):
            sock.close()
            raise StreamRefused(f"TLS with {target.host} failed") from None
    return sock


def _left(deadline: _Deadline, target: urls.Target) -> float:
    if deadline.cancelled():
        raise StreamRefused("stopped while asking the server")
    left = deadline.at - time.monotonic()
    if left <= 0:
        raise StreamRefused(f"{target.host} too slow: no answer in {RESOLVE_DEADLINE_S:g} s")
    return left


def _recv(sock: socket.socket, target: urls.Target, deadline: _Deadline) -> bytes:
    while True:
        sock.settimeout(min(POLL_S, _left(deadline, target)))
        try:
            return sock.recv(4096)
        except TimeoutError:
            continue  # _left() raises once the deadline has passed or we were cancelled
        except OSError:
            raise StreamRefused(f"the connection to {target.host} failed") from None


def _request(
    sock: socket.socket, target: urls.Target, deadline: _Deadline
) -> tuple[int, dict[str, str], bytes]:
    host = f"[{target.host}]" if ":" in target.host else target.host
    request = (
        f"GET {target.path} HTTP/1.0\r\nHost: {host}:{target.port}\r\n"
        "User-Agent: loa-receiver\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    try:
        sock.settimeout(_left(deadline, target))
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
    sock: socket.socket, target: urls.Target, deadline: _Deadline
) -> Callable[[], None]:
    """:attr:`Resolved.confirm` for a stream whose first bytes had not come with its headers.

    A server that hangs up first is refused: with Icecast's headers libVLC would ask it again
    in a tight loop (about a thousand requests a second, with no event). One still silent after
    :data:`FIRST_BYTES_S` passes: libVLC and the stall watchdog deal with that.
    """

    def confirm() -> None:
        wait = _Deadline(min(deadline.at, time.monotonic() + FIRST_BYTES_S), deadline.cancelled)
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


def _read_body(sock: socket.socket, rest: bytes, target: urls.Target, deadline: _Deadline) -> bytes:
    body = rest
    while len(body) <= MAX_PLAYLIST_BYTES:
        chunk = _recv(sock, target, deadline)
        if not chunk:
            return body
        body += chunk
    raise StreamRefused(f"the playlist from {target.host} is over {MAX_PLAYLIST_BYTES} bytes")
