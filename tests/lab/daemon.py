"""The receiver as a separate process, for end-to-end tests and benchmarks: its config
(:func:`write_config`), :class:`Daemon` (start, JSON log lines, stop, kill), signed envelopes
made by hand (:func:`envelope`), and :func:`read_stream_lines` for any child's output."""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Self

from receiver.central.signing import SigningKey

DEVICE = "e2e-dev-01"
GROUP = "commune-e2e"


def write_config(
    path: Path,
    *,
    broker_port: int,
    media_port: int,
    keys: list[tuple[SigningKey, list[str], list[str]]],
    wav: Path,
    state_dir: Path,
    cache_dir: Path,
    thresholds: Mapping[str, int] | None = None,
) -> Path:
    """The daemon's YAML config; ``thresholds`` (e.g. ``{"root": 2}``) goes under ``trust``."""
    key_lines = "".join(
        f"    - id: {key.id}\n      ed25519: {key.public_b64}\n"
        f"      roles: [{', '.join(roles)}]\n      scopes: {json.dumps(scopes)}\n"
        for key, roles, scopes in keys
    )
    if thresholds:
        key_lines += "  thresholds:\n" + "".join(
            f"    {role}: {int(value)}\n" for role, value in thresholds.items()
        )
    path.write_text(
        f"""device_id: {DEVICE}
env: lab
groups: [{GROUP}]
broker:
  host: 127.0.0.1
  port: {broker_port}
  reconnect_min_s: 0.2
  reconnect_max_s: 2.0
trust:
  keys:
{key_lines}player:
  output: file
  wav_file: {wav}
  default_volume: 100
gpio:
  pin_factory: mock
  warm_up_s: 0.3
  tail_s: 0.5
media:
  allowed_schemes: [http]
  allowed_hosts: ["127.0.0.1:{media_port}"]
storage:
  state_dir: {state_dir}
  cache_dir: {cache_dir}
logging:
  level: debug
  format: json
clock:
  trust_system_clock: always
""",
        encoding="utf-8",
    )
    return path


@dataclass
class Daemon:
    """``receiver run`` in a child process; its JSON log lines are collected as they come."""

    config: Path
    lines: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    process: subprocess.Popen[str] | None = None

    def command(self) -> list[str]:
        """The command line that runs the receiver (a subclass may wrap it, e.g. in a network
        namespace)."""
        return [sys.executable, "-m", "receiver.cli", "run", "--config", str(self.config)]

    def start(self) -> Self:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        return self

    def _pump(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        with self.process.stdout:  # closed at EOF: no ResourceWarning when the test ends
            for line in self.process.stdout:
                self.raw.append(line)
                text = line.strip()
                if text.startswith("<") and ">" in text[:4]:
                    text = text[text.index(">") + 1 :]
                try:
                    self.lines.append(json.loads(text))
                except ValueError:
                    continue

    def wait_log(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if predicate(line):
                    return line
            time.sleep(0.05)
        raise AssertionError("no such log line; the daemon said:\n" + "".join(self.raw[-40:]))

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == event]

    def stop(self, timeout: float = 15) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def envelope(payload_type: str, body: bytes, signatures: Sequence[tuple[str, bytes]]) -> bytes:
    """A DSSE envelope with exactly the signature entries given (forged, empty, ...)."""
    return json.dumps(
        {
            "payloadType": payload_type,
            "payload": base64.b64encode(body).decode("ascii"),
            "signatures": [
                {"keyid": keyid, "sig": base64.b64encode(sig).decode("ascii")}
                for keyid, sig in signatures
            ],
        }
    ).encode("utf-8")


def read_stream_lines(stream: IO[str], out: queue.Queue[str]) -> threading.Thread:
    """Copy a subprocess's text stream into a queue, line by line, in a daemon thread."""

    def pump() -> None:
        for line in stream:
            out.put(line.rstrip("\n"))

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


@contextmanager
def stopping(child: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """``child`` killed at the end of the block if it still runs, and its pipes closed."""
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
