"""The lab itself (:mod:`tests.lab`): what it promises beyond the tests that use it, and that the
benchmarks run without pytest (they share the tests' lab, not the test runner)."""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.lab.tools import MissingToolError, need, pick_port
from tests.lab.web import LabServer, MediaServer, RoutedServer, serve

ROOT = Path(__file__).resolve().parent.parent


def test_every_benchmark_imports_without_pytest() -> None:
    modules = ", ".join(
        f"bench.{path.stem}"
        for path in sorted((ROOT / "bench").glob("*.py"))
        if path.stem != "__main__"
    )
    script = (
        f"import sys\nsys.modules['pytest'] = None  # an import of it now fails\nimport {modules}\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_a_missing_program_fails_and_names_the_package_to_install() -> None:
    with pytest.raises(MissingToolError, match=r"apt-get install loa-nothing"):
        need("loa-no-such-program", package="loa-nothing")


def test_a_restartable_port_lies_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert pick_port() < low


def test_a_routed_server_answers_its_routes_and_records_every_request() -> None:
    with RoutedServer() as server:
        server.routes["/tone.wav"] = serve(b"RIFF", headers={"Content-Type": "audio/wav"})
        with urllib.request.urlopen(server.url("/tone.wav"), timeout=5) as answer:
            assert (answer.status, answer.read()) == (200, b"RIFF")
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(server.url("/missing"), timeout=5)
        assert server.requests == ["/tone.wav", "/missing"]


def test_a_media_server_serves_its_directory_and_logs_each_request(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(b"tone")
    with MediaServer(tmp_path) as media:
        with urllib.request.urlopen(media.url("a.wav"), timeout=5) as answer:
            assert answer.read() == b"tone"
        assert media.requests == ["GET /a.wav HTTP/1.1"]


def test_a_server_that_never_started_closes_at_once() -> None:
    never_started = LabServer(BaseHTTPRequestHandler, start=False)
    closing = threading.Thread(target=never_started.close, daemon=True)  # shutdown() would hang
    closing.start()
    closing.join(timeout=5)
    assert not closing.is_alive()
