"""Which media URLs a receiver may fetch or play: the technician's scheme and host allowlist.

One rule for the core (before a command is accepted) and for the fetcher (again for every
redirect), so the two can never disagree. An allowlist entry ``host`` allows any port,
``host:port`` only that port (a URL without a port means the scheme's default), and an IPv6
address is written in brackets: ``[2001:db8::1]:443``. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final
from urllib.parse import urlsplit

from receiver.core import reasons
from receiver.core.record import record

MAX_URL_CHARS: Final = 2048
_HOSTNAME: Final = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class UrlRefused(ValueError):  # noqa: N818 - a refusal is an outcome, not a program error
    """The URL may not be used: ``reason`` is a reason code (``policy`` or ``bad_body``)."""

    def __init__(self, reason: reasons.Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@record
class Target:
    """Where one HTTP request goes: a URL that passed :func:`check_url`."""

    scheme: str  # "http" | "https"
    host: str  # lowercase, no trailing dot, no brackets around an IPv6 address
    port: int
    path: str  # path and query, as sent in the request line; the fragment is dropped


def check_url(url: str, allowed_schemes: tuple[str, ...], allowed_hosts: tuple[str, ...]) -> Target:
    """Check ``url`` against the allowlist; raise :class:`UrlRefused` if refused.

    ``bad_body`` for a URL that cannot be a URL (control characters, over 2048 characters, bad
    port, no host), ``policy`` for a scheme or host that is not allowed or credentials in the URL.
    """
    if not url or len(url) > MAX_URL_CHARS:
        raise UrlRefused(
            reasons.BAD_BODY, f"URL is empty or longer than {MAX_URL_CHARS} characters"
        )
    if not (url.isascii() and url.isprintable()) or " " in url:
        raise UrlRefused(reasons.BAD_BODY, "URL has spaces, control or non-ASCII characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(reasons.BAD_BODY, "URL cannot be parsed (bad host or port)") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or scheme not in {s.lower() for s in allowed_schemes}:
        shown = scheme[:16] if scheme else "(none)"
        raise UrlRefused(reasons.POLICY, f"URL scheme {shown!r} is not allowed")
    if "@" in parts.netloc:
        raise UrlRefused(reasons.POLICY, "credentials in the URL are not allowed")
    host = _normalise_host(parts.hostname or "")
    if host is None:
        raise UrlRefused(reasons.BAD_BODY, "URL has no valid host")
    if port == 0:
        raise UrlRefused(reasons.BAD_BODY, "URL has port 0")
    port = port or _DEFAULT_PORTS[scheme]
    if not host_allowed(host, port, allowed_hosts):
        raise UrlRefused(reasons.POLICY, f"host {host} port {port} is not on the allowlist")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(scheme, host, port, path)


def host_allowed(host: str, port: int, allowed_hosts: tuple[str, ...]) -> bool:
    """Whether ``host`` (as returned in :class:`Target`) on ``port`` matches an allowlist entry.

    Entries: ``name``, ``name:port``, ``1.2.3.4``, ``1.2.3.4:port``, ``::1``, ``[::1]``,
    ``[::1]:port``. An entry that cannot be parsed matches nothing.
    """
    for entry in allowed_hosts:
        parsed = _parse_allowed_host(entry)
        if parsed is not None and parsed[0] == host and parsed[1] in (None, port):
            return True
    return False


def _normalise_host(host: str) -> str | None:
    """``host`` lowercase without a trailing dot, if it is a DNS name or an IP address."""
    host = host.lower()
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            return None
    host = host.removesuffix(".")
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):
        return None
    return host


def _parse_allowed_host(entry: str) -> tuple[str, int | None] | None:
    text = entry.strip().lower()
    port_text: str | None = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host = text
    normalised = _normalise_host(host)
    if normalised is None:
        return None
    if port_text is None:
        return normalised, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return normalised, int(port_text)
