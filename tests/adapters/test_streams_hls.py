"""The stream resolver on HLS playlists that name something off the allowlist: a variant's
segments, an ``EXT-X-KEY`` key, an ``EXT-X-MEDIA`` rendition. Each is refused before libVLC
opens anything, with one request per playlist read; an HLS station wholly on the allowlist still
resolves (the real one, made by FFmpeg, plays in ``test_player_relay.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver.streams import MAX_HLS_VARIANTS, StreamRefused, resolve
from tests.stations import WebServer, answer

HLS = "application/vnd.apple.mpegurl"
OFF = "http://127.0.0.2:9"  # a host that is not on the allowlist


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    (tmp_path / "www").mkdir()
    server = WebServer(tmp_path / "www")
    yield server
    server.close()


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
