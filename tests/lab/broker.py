"""A real Mosquitto for tests, and a small paho subscriber that collects what it receives.

:class:`MosquittoBroker` writes its own configuration into a directory of its own: one listener on
loopback, anonymous access allowed (Mosquitto 2 turns it off as soon as a listener is configured),
``user root`` when the tests run as root (otherwise Mosquitto drops to user ``mosquitto``, which
cannot write our temporary directory), persistence in its own directory (so :meth:`restart` keeps
sessions and retained messages, as a real broker restart does) and a log file whose tail is shown
when it fails to start. Extra configuration lines (TLS files, ``password_file``, ``acl_file``) can
be passed in.

The port is chosen once, when the object is made, and kept across :meth:`~MosquittoBroker.stop` /
:meth:`~MosquittoBroker.start`: a client under test keeps reconnecting to the same address
(:func:`tests.lab.tools.pick_port`). A missing ``mosquitto`` fails the test, never skips it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from receiver.central.reports import REPORT_TYPES
from tests.lab.ca import CertFiles, TestCa
from tests.lab.tools import MissingToolError, need, pick_port

_SEARCH_PATH = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")


class BrokerError(RuntimeError):
    """Mosquitto did not come up (the message carries the tail of its log)."""


def find_mosquitto() -> str:
    """The mosquitto executable, or a failed test that says how to install it."""
    return need(
        "mosquitto",
        package="mosquitto",
        also=_SEARCH_PATH,
        why="these tests need a real MQTT broker (it need not run as a service)",
    )


class MosquittoBroker:
    """A Mosquitto process on loopback with its own config, data and log in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_config: Sequence[str] = (),
        start_timeout_s: float = 10.0,
        max_packet_size: int | None = 32768,
        max_queued_messages: int | None = 100_000,
    ) -> None:
        self.executable = find_mosquitto()
        self.max_packet_size = max_packet_size
        self.max_queued_messages = max_queued_messages
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self._port_fixed = port is not None
        self.port = port if port is not None else pick_port(host)
        self.extra_config = tuple(extra_config)
        self.start_timeout_s = start_timeout_s
        self.config_file = self.workdir / "mosquitto.conf"
        self.log_file = self.workdir / "mosquitto.log"
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self._stderr_file = self.workdir / "stderr.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._started_once = False

    # -------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start Mosquitto and wait until its port accepts connections."""
        if self.running:
            return
        attempts = 1 if (self._started_once or self._port_fixed) else 3
        for attempt in range(attempts):
            try:
                self._start_once()
            except BrokerError as exc:
                # Only on the very first start may we move to another port: someone else took
                # ours between picking and binding. After that the port is part of the test.
                if attempt + 1 < attempts and "Address already in use" in str(exc):
                    self.port = pick_port(self.host)
                    continue
                raise
            self._started_once = True
            return

    def stop(self) -> None:
        """Stop Mosquitto (SIGTERM: it saves sessions and retained messages to disk)."""
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def kill(self) -> None:
        """Kill Mosquitto without letting it save anything (a power cut)."""
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)

    def restart(self) -> None:
        """Stop and start again on the same port; persistent sessions survive."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -------------------------------------------------------------- helpers

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for path in (self.log_file, self._stderr_file):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()
                if text:
                    parts.append(f"--- {path.name} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts) or "(mosquitto wrote no log)"

    def _write_config(self) -> None:
        lines = [
            "# written by tests/lab/broker.py",
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            f"log_dest file {self.log_file}",
            "log_type all",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
            "set_tcp_nodelay true",
        ]
        if self.max_queued_messages is not None:
            # As docs/operations.md asks of a receivers' broker: Mosquitto 2.0.11's default of
            # 1000 lets a flood of junk on a device's topic strand the QoS 1 command sent after
            # it until the device reconnects; with room to queue, the device sheds the junk.
            lines.append(f"max_queued_messages {self.max_queued_messages}")
        if self.max_packet_size is not None:
            # As docs/operations.md asks of a receivers' broker: no packet larger than the
            # receivers accept (Mosquitto 2.0.11 otherwise leaks an in-flight slot for every
            # message it drops for a client's Maximum Packet Size, until the client is cut off).
            lines.append(f"max_packet_size {self.max_packet_size}")
        if os.geteuid() == 0:
            lines.append("user root")
        lines.extend(self.extra_config)
        self.config_file.write_text("\n".join(lines) + "\n")

    def _start_once(self) -> None:
        self._write_config()
        with self._stderr_file.open("ab") as stderr:
            process = subprocess.Popen(
                [self.executable, "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if process.poll() is not None:
                raise BrokerError(
                    f"mosquitto exited with status {process.returncode} on start "
                    f"(port {self.port}):\n{self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                process.kill()
                process.wait(timeout=10)
                raise BrokerError(
                    f"mosquitto did not accept connections on {self.host}:{self.port} "
                    f"within {self.start_timeout_s} s:\n{self.log_tail()}"
                )
            time.sleep(0.02)
        self._process = process


def report_json(payload: bytes) -> bytes:
    """The JSON inside a device report's envelope; any other payload unchanged."""
    if not payload.startswith(b'{"payloadType":"application/vnd.loa.'):
        return payload
    try:
        envelope = json.loads(payload)
        if envelope["payloadType"] not in REPORT_TYPES:
            return payload
        return base64.b64decode(envelope["payload"], validate=True)
    except (ValueError, KeyError, TypeError):
        return payload


@dataclass(frozen=True)
class Received:
    """A message as the test subscriber saw it (fields copied inside paho's callback).

    A device's signed report (protocol §14) arrives as a DSSE envelope: ``payload`` is then the
    report's JSON taken out of it, as a reader that only reads JSON does, and ``raw`` the
    envelope as sent (for the tests of the signatures themselves).
    """

    topic: str
    payload: bytes
    retain: bool
    qos: int
    raw: bytes = b""


class Subscriber:
    """A plain paho MQTT 5 client that subscribes to ``topics`` and queues what arrives.

    Also the tests' publisher: :meth:`publish` waits for the broker's PUBACK.
    """

    def __init__(
        self,
        broker: MosquittoBroker,
        topics: Sequence[str] = (),
        *,
        client_id: str | None = None,
        timeout_s: float = 5.0,
        persistent: bool = False,
    ) -> None:
        """``persistent``: an MQTT 5 session that outlives disconnects and broker restarts, so
        QoS 1 messages published while this subscriber was away are delivered when it is back."""
        self.broker = broker
        self.persistent = persistent
        self.topics = tuple(topics)
        self.timeout_s = timeout_s
        self.messages: queue.Queue[Received] = queue.Queue()
        self.seen: list[Received] = []
        self._subscribed = threading.Event()
        self._connected = threading.Event()
        self._sub_mid: int | None = None
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def start(self) -> Self:
        if self.persistent:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 600
            self._client.connect(
                self.broker.host,
                self.broker.port,
                keepalive=30,
                clean_start=False,
                properties=properties,
            )
        else:
            self._client.connect(self.broker.host, self.broker.port, keepalive=30)
        self._client.loop_start()
        if not self._connected.wait(self.timeout_s):
            self.close()
            raise AssertionError(f"test subscriber could not connect:\n{self.broker.log_tail()}")
        if self.topics and not self._subscribed.wait(self.timeout_s):
            self.close()
            raise AssertionError("test subscriber got no SUBACK")
        return self

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        qos: int = 1,
        properties: Properties | None = None,
    ) -> None:
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(timeout=self.timeout_s)
        if not info.is_published():
            raise AssertionError(f"publish to {topic} was not acknowledged")

    def wait_for(
        self, predicate: Callable[[Received], bool], timeout: float | None = None
    ) -> Received:
        """The first newly received message that satisfies ``predicate`` (others are skipped)."""
        deadline = time.monotonic() + (self.timeout_s if timeout is None else timeout)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no matching message within the timeout; received: {self.seen!r}"
                )
            try:
                message = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            if predicate(message):
                return message

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            return
        self._connected.set()
        if self.topics:
            _rc, self._sub_mid = client.subscribe(
                [(topic, SubscribeOptions(qos=1)) for topic in self.topics]
            )

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties,
    ) -> None:
        if mid == self._sub_mid:
            self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        raw = bytes(message.payload)
        received = Received(
            topic=message.topic,
            payload=report_json(raw),
            retain=bool(message.retain),
            qos=message.qos,
            raw=raw,
        )
        self.seen.append(received)
        self.messages.put(received)


def tls_listener_config(ca: TestCa, server: CertFiles, *, require_client_cert: bool) -> list[str]:
    """Lines for :class:`MosquittoBroker`'s ``extra_config``: TLS on its listener."""
    return [
        f"cafile {ca.cert_file}",
        f"certfile {server.cert}",
        f"keyfile {server.key}",
        f"require_certificate {'true' if require_client_cert else 'false'}",
    ]


def password_config(directory: Path, users: dict[str, str]) -> list[str]:
    """Lines for ``extra_config``: a password file made by ``mosquitto_passwd``, no anonymous."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not os.access(tool, os.X_OK):
        raise MissingToolError("mosquitto_passwd is not installed (`apt-get install mosquitto`)")
    password_file = Path(directory) / "passwords"
    password_file.write_text("")
    for user, password in users.items():
        subprocess.run([tool, "-b", str(password_file), user, password], check=True)
    return [f"password_file {password_file}", "allow_anonymous false"]
