"""The link tier: the real daemon in its own network namespace, behind an emulated 4G link.

Run with ``make linktest`` (root: it makes network namespaces and TUN devices). It is not part
of ``make test``: its tests wait out keepalives and read timeouts over a slow link. Without
``LOA_LINK_TIER=1`` nothing here is collected, so a plain ``pytest`` stays quick; ``pytest
tests/link`` alone then collects nothing and fails (exit code 5), never passes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from receiver.central.signing import SigningKey, command_payload, sign_command
from tests.lab.broker import MosquittoBroker, Subscriber
from tests.lab.daemon import DEVICE, GROUP, Daemon
from tests.lab.web import LabServer
from tests.link.netns import CENTRAL_ADDR, LossyLink

if os.environ.get("LOA_LINK_TIER") != "1":
    collect_ignore_glob = ["test_*.py"]

KEEPALIVE_S = 10


class RangedFiles:
    """Files over HTTP on central's address, answering ``Range: bytes=N-`` with a 206.

    ``requests`` holds ``(path, range header or None, body bytes sent)`` per request, the last
    figure growing while the body is sent. Sends in 8 KiB writes, so a link that dies cuts a
    download in the middle.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.requests: list[list[Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = owner.directory / self.path.lstrip("/")
                body = path.read_bytes()
                asked = self.headers.get("Range")
                record: list[Any] = [self.path, asked, 0]
                owner.requests.append(record)
                first = int(asked.removeprefix("bytes=").split("-")[0]) if asked else 0
                self.send_response(206 if asked else 200)
                if asked:
                    self.send_header("Content-Range", f"bytes {first}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - first))
                self.end_headers()
                for start in range(first, len(body), 8192):
                    chunk = body[start : start + 8192]
                    try:
                        self.wfile.write(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        return  # the device gave up on this request
                    record[2] += len(chunk)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = LabServer(Handler, host=CENTRAL_ADDR)
        self.port = self.server.port

    def url(self, name: str) -> str:
        return self.server.url(f"/{name}")

    def close(self) -> None:
        self.server.close()


@dataclass
class LinkDaemon(Daemon):
    """The receiver started inside the device's namespace."""

    link: LossyLink | None = None

    def command(self) -> list[str]:
        assert self.link is not None
        return self.link.device_command(super().command())


@dataclass
class Field:
    """Central's side of one receiver in the field: broker, media, keys, the daemon's config."""

    root: Path
    link: LossyLink
    broker: MosquittoBroker
    files: RangedFiles
    operator: SigningKey
    config: Path
    wav: Path
    daemons: list[LinkDaemon] = field(default_factory=list)
    last_seq: int = 0

    events_topic = f"loa/v1/dev/{DEVICE}/events"
    state_topic = f"loa/v1/dev/{DEVICE}/state"
    cmd_topic = f"loa/v1/dev/{DEVICE}/cmd"

    def write_config(
        self,
        *,
        extra_hosts: tuple[str, ...] = (),
        player: str = "",
        keepalive_s: int = KEEPALIVE_S,
    ) -> None:
        hosts = ", ".join(f'"{h}"' for h in (f"{CENTRAL_ADDR}:{self.files.port}", *extra_hosts))
        self.config.write_text(
            f"""device_id: {DEVICE}
env: lab
groups: [{GROUP}]
broker:
  host: {CENTRAL_ADDR}
  port: {self.broker.port}
  keepalive_s: {keepalive_s}
  reconnect_min_s: 0.5
  reconnect_max_s: 2.0
trust:
  keys:
    - id: {self.operator.id}
      ed25519: {self.operator.public_b64}
      roles: [operator]
      scopes: ["*"]
player:
  output: file
  wav_file: {self.wav}
  default_volume: 100
{player}gpio:
  pin_factory: mock
  warm_up_s: 0.3
  tail_s: 0.5
media:
  allowed_schemes: [http]
  allowed_hosts: [{hosts}]
storage:
  state_dir: {self.root / "state"}
  cache_dir: {self.root / "cache"}
logging:
  level: debug
  format: json
clock:
  trust_system_clock: always
""",
            encoding="utf-8",
        )

    def start_daemon(self) -> LinkDaemon:
        daemon = LinkDaemon(self.config, link=self.link).start()
        self.daemons.append(daemon)
        return daemon

    def command(self, kind: str, body: dict[str, Any], message_id: str) -> bytes:
        # Each command a higher seq than the last, also two signed within one millisecond.
        self.last_seq = max(self.last_seq + 1, int(time.time() * 1000))
        payload = command_payload(
            kind,
            body,
            env="lab",
            aud=[f"dev:{DEVICE}"],
            message_id=message_id,
            seq=self.last_seq,
        )
        return sign_command(payload, [self.operator])

    def status(self) -> dict[str, Any]:
        """The daemon's last state, as it wrote it to its status file."""
        found: dict[str, Any] = json.loads((self.root / "state" / "status.json").read_text())
        return found


@pytest.fixture
def lossy(tmp_path: Path) -> Iterator[LossyLink]:
    link = LossyLink(tmp_path)
    try:
        yield link
    finally:
        link.close()


@pytest.fixture
def fieldsite(tmp_path: Path, lossy: LossyLink) -> Iterator[Field]:
    media = tmp_path / "media"
    media.mkdir()
    files = RangedFiles(media)
    try:
        with MosquittoBroker(tmp_path / "mosquitto", host=CENTRAL_ADDR) as broker:
            site = Field(
                root=tmp_path,
                link=lossy,
                broker=broker,
                files=files,
                operator=SigningKey.generate("op-link"),
                config=tmp_path / "receiver.yaml",
                wav=tmp_path / "out.wav",
            )
            site.write_config()
            try:
                yield site
            finally:
                for daemon in site.daemons:
                    daemon.kill()
                    print("".join(daemon.raw[-200:]))  # shown by pytest when the test failed
    finally:
        files.close()


@pytest.fixture
def central(fieldsite: Field) -> Iterator[Subscriber]:
    """Central's client: watches the device's events and state, publishes commands."""
    with Subscriber(fieldsite.broker, [fieldsite.events_topic, fieldsite.state_topic]) as sub:
        yield sub


def events(central: Subscriber) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in list(central.seen) if m.topic.endswith("/events")]


def wait_event(
    central: Subscriber, kind: str, ref: str | None = None, timeout: float = 30
) -> dict[str, Any]:
    def matches(message: Any) -> bool:
        if not message.topic.endswith("/events"):
            return False
        event = json.loads(message.payload)
        return bool(event["kind"] == kind and (ref is None or event.get("ref") == ref))

    found: dict[str, Any] = json.loads(central.wait_for(matches, timeout).payload)
    return found


def wait_online(central: Subscriber, timeout: float = 30) -> dict[str, Any]:
    def online(message: Any) -> bool:
        return bool(message.topic.endswith("/state") and json.loads(message.payload).get("online"))

    found: dict[str, Any] = json.loads(central.wait_for(online, timeout).payload)
    return found
