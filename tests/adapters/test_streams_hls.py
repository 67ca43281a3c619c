"""The stream resolver on HLS playlists that name something off the allowlist: a variant's
segments, an ``EXT-X-KEY`` key, an ``EXT-X-MEDIA`` rendition. Each is refused before libVLC
opens anything, with one request per playlist read; an HLS station wholly on the allowlist still
resolves (the real one, made by FFmpeg, plays in ``test_player_relay.py``)."""

from __future__ import annotations

import time
from http.server import SimpleHTTPRequestHandler

import pytest

from receiver.streams import MAX_HLS_VARIANTS, StreamRefused, resolve
from tests.lab.stations import WebServer, answer

HLS = "application/vnd.apple.mpegurl"
OFF = "http://127.0.0.2:9"  # a host that is not on the allowlist


def media(*segments: str, key: str | None = None) -> bytes:
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:7"]
    if key is not None:
        lines.append(f'#EXT-X-KEY:METHOD=AES-128,URI="{key}",IV=0x1')
    for segment in segments:
        lines += ["#EXTINF:2.0,", segment]
    return ("\n".join(lines) + "\n").encode()


def master(*variants: str, rendition: str | None = None) -> bytes:
    lines = ["#EXTM3U"]
    if rendition is not None:
        lines.append(f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="vi",URI="{rendition}"')
    for variant in variants:
        lines += ["#EXT-X-STREAM-INF:BANDWIDTH=64000", variant]
    return ("\n".join(lines) + "\n").encode()


def resolve_on(web: WebServer, url: str) -> str:
    resolved = resolve(url, ("http",), (f"127.0.0.1:{web.port}",), deadline_s=5.0)
    return resolved.kind


def refusal(web: WebServer, url: str) -> str:
    with pytest.raises(StreamRefused) as refused:
        resolve_on(web, url)
    return refused.value.detail


def test_a_station_wholly_on_the_allowlist_resolves_as_hls(web: WebServer) -> None:
    web.route("/low.m3u8", answer(200, HLS, media("seg7.ts", "seg8.ts", key="/keys/1")))
    url = web.route("/live.m3u8", answer(200, HLS, master("low.m3u8")))
    assert resolve_on(web, url) == "hls"
    assert [r.path for r in web.requests] == ["/live.m3u8", "/low.m3u8"]


def test_a_variant_whose_segments_are_off_the_allowlist_is_refused(web: WebServer) -> None:
    web.route("/low.m3u8", answer(200, HLS, media(f"{OFF}/seg7.ts")))
    url = web.route("/live.m3u8", answer(200, HLS, master("low.m3u8")))
    detail = refusal(web, url)
    assert "not on the allowlist" in detail and "variant" in detail, detail
    assert [r.path for r in web.requests] == ["/live.m3u8", "/low.m3u8"]


def test_a_key_off_the_allowlist_is_refused(web: WebServer) -> None:
    url = web.route("/live.m3u8", answer(200, HLS, media("seg7.ts", key=f"{OFF}/key")))
    assert "not on the allowlist" in refusal(web, url)
    assert len(web.requests) == 1


def test_a_rendition_off_the_allowlist_is_refused(web: WebServer) -> None:
    web.route("/low.m3u8", answer(200, HLS, media("seg7.ts")))
    url = web.route("/live.m3u8", answer(200, HLS, master("low.m3u8", rendition=f"{OFF}/a.m3u8")))
    assert "not on the allowlist" in refusal(web, url)
    assert len(web.requests) == 1


def test_a_variant_that_is_not_a_media_playlist_is_refused(web: WebServer) -> None:
    web.route("/low.m3u8", answer(200, "text/html", b"<html>gone</html>"))
    url = web.route("/live.m3u8", answer(200, HLS, master("low.m3u8")))
    assert "web page" in refusal(web, url)


def test_a_master_naming_too_many_variants_is_refused_without_reading_them(
    web: WebServer,
) -> None:
    names = [f"v{i}.m3u8" for i in range(MAX_HLS_VARIANTS + 1)]
    url = web.route("/live.m3u8", answer(200, HLS, master(*names)))
    assert "variants" in refusal(web, url)
    assert len(web.requests) == 1


# Playlists where a naive reading and libVLC's disagree: libVLC takes an unquoted URI, parses a
# quoted "URI=" inside another attribute as that attribute's value, treats a STREAM-INF without
# a colon as a variant, uses a STREAM-INF's own URI, and splits lines only on "\n".
BYPASSES = {
    "unquoted key URI": media("seg7.ts").replace(
        b"#EXTINF", f"#EXT-X-KEY:METHOD=AES-128,URI={OFF}/k\n#EXTINF".encode(), 1
    ),
    "URI= inside another value": media("seg7.ts").replace(
        b"#EXTINF", f'#EXT-X-KEY:KEYFORMAT="URI=",URI="{OFF}/k"\n#EXTINF'.encode(), 1
    ),
    "session key unquoted": b"#EXTM3U\n#EXT-X-SESSION-KEY:METHOD=AES-128,URI="
    + f"{OFF}/k".encode()
    + b"\n#EXT-X-STREAM-INF:BANDWIDTH=1\nlow.m3u8\n",
    "STREAM-INF without a colon": b"#EXTM3U\n#EXT-X-STREAM-INF\nlow-off.m3u8\n",
    "STREAM-INF with its own URI": b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1,URI="
    + f"{OFF}/v.m3u8".encode()
    + b"\n",
    "a URI line ending in a no-break space": b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n"
    + "low.m3u8\xa0".encode()
    + b"\n",
    "an attribute list that does not parse": media("seg7.ts").replace(
        b"#EXTINF", f'#EXT-X-KEY:METHOD=AES-128,URI="{OFF}/k\n#EXTINF'.encode(), 1
    ),
}


@pytest.mark.parametrize("name", sorted(BYPASSES))
def test_a_playlist_libvlc_reads_otherwise_is_refused(web: WebServer, name: str) -> None:
    web.route("/low.m3u8", answer(200, HLS, media("seg7.ts")))
    web.route("/low-off.m3u8", answer(200, HLS, media(f"{OFF}/seg7.ts")))
    url = web.route("/live.m3u8", answer(200, HLS, BYPASSES[name]))
    refusal(web, url)


@pytest.mark.parametrize("content_type", ["audio/mpeg", "application/octet-stream"])
def test_a_playlist_served_as_audio_is_read_as_a_playlist(
    web: WebServer, content_type: str
) -> None:
    # libVLC tells HLS by its first bytes, not by the type the server gives.
    web.route("/low-off.m3u8", answer(200, HLS, media(f"{OFF}/seg7.ts")))
    url = web.route("/live", answer(200, content_type, master("low-off.m3u8")))
    assert "not on the allowlist" in refusal(web, url)


def test_a_crlf_playlist_on_the_allowlist_still_resolves(web: WebServer) -> None:
    web.route("/low.m3u8", answer(200, HLS, media("seg7.ts").replace(b"\n", b"\r\n")))
    body = master("low.m3u8", rendition="low.m3u8").replace(b"\n", b"\r\n")
    url = web.route("/live.m3u8", answer(200, HLS, body))
    assert resolve_on(web, url) == "hls"


def test_a_live_answer_typed_as_audio_that_turns_out_a_playlist_is_refused(
    web: WebServer,
) -> None:
    # No length (a live stream's answer) and the first bytes late: libVLC is already opening
    # it when they come, and the confirmation stops it.
    def late_playlist(handler: SimpleHTTPRequestHandler) -> int:
        handler.send_response(200)
        handler.send_header("Content-Type", "audio/mpeg")
        handler.end_headers()
        handler.wfile.flush()
        time.sleep(0.3)
        handler.wfile.write(master(f"{OFF}/v.m3u8"))
        return 200

    url = web.route("/live", late_playlist)
    resolved = resolve(url, ("http",), (f"127.0.0.1:{web.port}",), deadline_s=5.0)
    assert resolved.kind == "stream" and resolved.confirm is not None
    with pytest.raises(StreamRefused) as refused:
        resolved.confirm()
    assert "playlist or text as audio" in refused.value.detail
