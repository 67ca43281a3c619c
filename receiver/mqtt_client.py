"""The MQTT link: one paho-mqtt 2.x client, driven by our own network thread.

Owns the broker connection (MQTT 5 persistent session, will, TLS, reconnect with backoff and
jitter, failover between several brokers and the move back to the first, the packet size we
accept) and the map from message ids to acknowledgement callbacks
that tells the outbox which events the broker has. Incoming messages become
:class:`~receiver.core.events.MessageReceived` and link changes
:class:`~receiver.core.events.LinkChanged`, handed to callables that only queue them; no message
is interpreted here. The threading, acknowledgement and failover contract is in
``docs/adapters.md``.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypedDict

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from receiver.config_model import BrokerConfig, TlsConfig
from receiver.core.events import LinkChanged, MessageReceived
from receiver.core.record import record
from receiver.errors import LinkError, TlsFilesError

__all__ = [
    "CAUSES",
    "LinkError",
    "LinkStatus",
    "MqttLink",
    "Subscription",
    "TlsFilesError",
    "backoff_delay",
    "describe_connect_error",
    "next_address",
]

_P = ParamSpec("_P")

#: Messages paho keeps for us (in flight plus waiting for a connection) before it drops new ones.
DEFAULT_MAX_QUEUED = 1000
#: A connection must stay up this long before the reconnect backoff starts again from the minimum.
DEFAULT_STABLE_AFTER_S = 30.0
#: TCP connect plus TLS handshake (paho's ``connect_timeout``).
DEFAULT_CONNECT_TIMEOUT_S = 10.0
#: After the socket is up: CONNACK and SUBACK must arrive within this, or we drop and retry.
DEFAULT_HANDSHAKE_TIMEOUT_S = 10.0
#: How long :meth:`MqttLink.stop` waits for the broker to acknowledge the final message.
DEFAULT_FINAL_TIMEOUT_S = 2.0
#: MQTT 5 Maximum Packet Size we announce: the broker sends us nothing bigger (commands, schedules
#: and trust documents are at most 16 KiB, protocol §4; the rest is room for topic and header).
DEFAULT_MAX_PACKET_SIZE = 32 * 1024
#: The largest value the property may take (MQTT 5, 3.1.2.11.4: the largest packet there is).
_MQTT_MAX_PACKET_SIZE = 268_435_460
#: How long the failback probe waits for the preferred broker's TCP handshake.
_FAILBACK_PROBE_TIMEOUT_S = 3.0
#: ``select()`` timeout of one ``loop()`` turn; publishing and stopping wake it at once anyway.
_LOOP_TIMEOUT_S = 1.0
# What one socket read takes at most, and how many of paho's reads from what is already in hand
# a loop turn makes before it looks at the socket again (writes, keepalive, stop).
_READ_CHUNK = 64 * 1024
_BUFFERED_READS_PER_TURN = 512

#: What :attr:`LinkStatus.cause` may be (``receiver status`` says each in words).
CAUSES: tuple[str, ...] = (
    "refused_credentials",  # CONNACK: bad user name or password, bad authentication method
    "refused_not_authorised",  # CONNACK: not authorised (Mosquitto 2: a wrong password too)
    "refused",  # CONNACK: any other refusal
    "dns",  # the broker's name does not resolve
    "tcp_refused",  # nothing listens on the broker's port
    "timeout",  # no answer to the TCP connect or the TLS handshake
    "unreachable",  # any other network error
    "tls_verify",  # the broker's certificate was not accepted
    "tls",  # the TLS handshake failed otherwise
    "no_answer",  # no CONNACK or SUBACK in time
    "refused_later",  # a subscription or a publish the broker refused
    "lost",  # an established connection ended
)

_CONNACK_REASONS: dict[int, str] = {
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client id rejected",
    0x86: "bad credentials (user name or password)",
    0x87: "not authorised",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8C: "bad authentication method",
    0x90: "will topic name invalid",
    0x95: "packet too large",
    0x97: "quota exceeded",
    0x99: "payload format invalid",
    0x9A: "retain not supported",
    0x9B: "QoS not supported",
    0x9C: "use another server",
    0x9D: "server moved",
    0x9F: "connection rate exceeded",
}


class LinkStatus(TypedDict):
    """:attr:`MqttLink.status`: the link, as the device reports it in its state message."""

    #: True from an accepted CONNACK until that connection is gone.
    up: bool
    #: ``time.monotonic()`` when the link entered its current state (up: the CONNACK; down: the
    #: end of the connection, or :meth:`MqttLink.start`); None before start().
    since: float | None
    #: Why the link last failed; kept after it recovers (None if it never failed).
    last_error: str | None
    #: Accepted connections after the first one: how often the link came back.
    reconnects: int
    #: Attempts that failed since the link was last up (or since :meth:`MqttLink.start`).
    attempts: int
    #: ``last_error`` as one of :data:`CAUSES`, for ``receiver status`` to say in words.
    cause: str | None
    #: ``host:port`` of the broker in use (or being tried): with ``broker.failover``, which one.
    broker: str


@record
class Subscription:
    """One topic filter the link subscribes to (QoS 1) on every connect.

    ``ignore_retained`` is for command topics: the broker must not hand us a retained message
    when we subscribe (MQTT 5 retain-handling 2), and a retained publish made while we are
    subscribed keeps its retain flag (retain-as-published) so the core can refuse it.
    """

    topic: str
    ignore_retained: bool


def backoff_delay(rounds: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Seconds to wait before the next attempt; ``rounds`` counts failed rounds since the link
    last held (0: it has just dropped after holding, or the daemon has just started).

    Round 0: ``uniform(0, min_s)``, pure spread: a fleet that lost its broker at the same
    instant comes back over ``min_s`` seconds, not at once, and a short broker restart costs
    little. After that full jitter above a floor: ``uniform(min_s, min(max_s, min_s *
    2**rounds))``; the floor keeps a refusing broker from being hit faster than ``min_s``.
    """
    low = max(0.0, min_s)
    if rounds <= 0:
        return rng.uniform(0.0, low)
    high = max(low, min(max_s, low * 2.0 ** min(rounds, 32)))
    return rng.uniform(low, high)


def next_address(current: int, count: int, was_up: bool) -> int:
    """The address to try next: the same one after a connection that was up (a restart is the
    common case), the next one (in a ring) after an attempt that failed."""
    if count <= 1 or was_up:
        return current
    return (current + 1) % count


def _address_answers(host: str, port: int, timeout_s: float) -> bool:
    """True if a TCP connection to ``host:port`` opens within ``timeout_s`` (closed at once)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def describe_connect_error(exc: BaseException, host: str, port: int) -> tuple[str, str]:
    """A technician-readable reason for an exception raised while opening the connection, and
    the :data:`CAUSES` member it is (``receiver status`` says that one in the board's language)."""
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or str(exc)
        return f"TLS verification failed for {where}: {detail}", "tls_verify"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {where} failed: {exc.reason or exc}", "tls"
    if isinstance(exc, ConnectionRefusedError):
        return f"unreachable: connection refused by {where} (is the broker running?)", "tcp_refused"
    if isinstance(exc, socket.gaierror):
        return f"unreachable: cannot resolve {host!r} ({exc.strerror or exc})", "dns"
    if isinstance(exc, TimeoutError):
        return f"unreachable: no answer from {where} (timed out)", "timeout"
    if isinstance(exc, OSError):
        return f"unreachable: {where}: {exc.strerror or exc}", "unreachable"
    return f"cannot connect to {where}: {exc!r}", "unreachable"


def _connack_cause(reason: ReasonCode) -> str:
    if reason.value in (0x86, 0x8C):
        return "refused_credentials"
    return "refused_not_authorised" if reason.value == 0x87 else "refused"


def _connack_reason(reason: ReasonCode) -> str:
    text = _CONNACK_REASONS.get(reason.value, reason.getName())
    return f"refused by broker: {text} ({reason.getName()}, 0x{reason.value:02x})"


def _check_topic(topic: str) -> None:
    encoded = topic.encode("utf-8")
    if not encoded or len(encoded) > 65535 or b"+" in encoded or b"#" in encoded:
        raise LinkError(f"cannot publish to {topic!r}: not a valid MQTT topic name")
    if b"\x00" in encoded:
        raise LinkError(f"cannot publish to {topic!r}: contains a NUL character")


def _connect_properties(config: BrokerConfig, max_packet_size: int) -> Properties:
    """The CONNECT properties sent on every (re)connect: session expiry, Maximum Packet Size."""
    if not 1 <= max_packet_size <= _MQTT_MAX_PACKET_SIZE:
        raise LinkError(
            f"max_packet_size {max_packet_size} is not an MQTT packet size "
            f"(1 to {_MQTT_MAX_PACKET_SIZE})"
        )
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = config.session_expiry_s
    properties.MaximumPacketSize = max_packet_size
    return properties


def _tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """Server verification always on; the system store when no CA file is configured."""
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH,
            cafile=str(tls.ca_file) if tls.ca_file is not None else None,
        )
        if tls.cert_file is not None:
            # Without a password callback OpenSSL would ask for a passphrase on the terminal.
            context.load_cert_chain(
                str(tls.cert_file),
                str(tls.key_file) if tls.key_file is not None else None,
                password=_no_passphrase,
            )
    except (OSError, ssl.SSLError, _PassphraseAskedError) as exc:
        reason = str(exc) or "the key is protected by a passphrase"
        raise TlsFilesError(f"cannot load TLS files: {reason}") from exc
    if not context.check_hostname or context.verify_mode != ssl.CERT_REQUIRED:
        raise LinkError("TLS context does not verify the server")  # pragma: no cover
    return context


class _PassphraseAskedError(Exception):
    """OpenSSL asked for the passphrase of an encrypted key, which the daemon cannot give."""


def _no_passphrase() -> str:
    raise _PassphraseAskedError


class LightProperties(Properties):
    """paho's MQTT 5 properties, without paho's cost of making one.

    paho builds its three tables (the property names, the value types, the packets each property
    belongs to) afresh for every properties object, one per PUBLISH it reads, and before reading
    a packet's properties deletes each of the 27 names it knows, set or not: about 10 µs a
    message, half of what paho spends on one in a flood (bench/junk part c). Here the tables are
    paho's own, built once and shared (paho only reads them), clearing deletes only what is set,
    and a packet with no properties, as central's commands come, is read as paho reads it, the
    one length byte of 0, without more. Everything else, checks included, is paho's own code.
    """

    _tables = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    types = _tables.types
    names = _tables.names
    properties = _tables.properties

    def __init__(self, packetType: int) -> None:  # noqa: N803 - paho's name for it
        object.__setattr__(self, "packetType", packetType)

    def clear(self) -> None:
        for name in [name for name in vars(self) if name != "packetType"]:
            delattr(self, name)

    def unpack(self, buffer: bytes | bytearray) -> tuple[Properties, int]:
        if buffer[:1] == b"\x00":  # a properties length of 0, in its one byte
            self.clear()
            return self, 1
        return super().unpack(buffer)  # type: ignore[no-any-return,no-untyped-call]


def _read_packets_with_light_properties() -> None:
    """Let paho's packet reader make :class:`LightProperties` (paho 2.2 reads packets in its
    ``_packet`` module; an older paho 2 keeps its own, slower, way)."""
    reader = getattr(mqtt, "_packet", None)
    if reader is not None and getattr(reader, "Properties", None) is Properties:
        reader.Properties = LightProperties


_read_packets_with_light_properties()


#: What :func:`cut_publish` hands on: the topic, the payload, the retain flag, the packet id and
#: the QoS of one PUBLISH.
PublishCut = tuple[str, bytes, bool, int, int]


def cut_publish(chunk: bytes, at: int) -> tuple[int, PublishCut] | None:
    """The PUBLISH packet that starts at ``chunk[at]`` and ends within ``chunk``, read as paho
    reads it, with where it ends; None for anything else, left to paho's own reader.

    Only the plain case is taken: QoS 0 or 1, no property (central's commands and every other
    document come so, and so does junk that costs nothing to send), a topic in UTF-8, the whole
    packet in hand. paho reads a packet in about 12 µs, this in about 2 (bench/junk part c):
    paho's reader asks for each piece of a packet in turn, builds a message object and a property
    object for it and matches its topic against a tree of callbacks, none of which the link uses.
    Everything else (a property, QoS 2, a truncated or malformed packet, another packet type) is
    paho's, which thus still decides every error.
    """
    end_of_chunk = len(chunk)
    if at + 5 > end_of_chunk:
        return None
    header = chunk[at]
    if header & 0xF0 != 0x30 or header & 0x06 > 0x02:  # PUBLISH, QoS 0 or 1
        return None
    length, multiplier, pos = 0, 1, at + 1
    for _ in range(4):  # the remaining length: at most four bytes
        byte = chunk[pos]
        pos += 1
        length += (byte & 0x7F) * multiplier
        multiplier *= 128
        if not byte & 0x80:
            break
        if pos >= end_of_chunk:
            return None
    else:
        return None
    end = pos + length
    qos = (header >> 1) & 0x03
    topic_end = pos + 2 + int.from_bytes(chunk[pos : pos + 2], "big")
    properties_at = topic_end + 2 * qos
    if end > end_of_chunk or properties_at >= end or chunk[properties_at] != 0:
        return None
    try:
        topic = chunk[pos + 2 : topic_end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    mid = int.from_bytes(chunk[topic_end:properties_at], "big")
    return end, (topic, chunk[properties_at + 1 : end], bool(header & 0x01), mid, qos)


class _ChunkedClient(mqtt.Client):
    """paho's client, reading its socket in large chunks.

    paho reads a packet in pieces (its type byte, each byte of its length, then the rest), one
    ``recv`` a piece: three or more system calls a message, and each lets go of the interpreter
    lock, which the link's thread must then win back from the loop thread. In a flood those
    hand-offs, not the parsing, set the link's pace (bench/junk). Here one ``recv`` takes what
    the socket holds (up to :data:`_READ_CHUNK` bytes) and paho's pieces are cut from it.
    :attr:`buffered` says how many bytes wait in hand, which ``select`` cannot see: the link
    hands them to paho before it waits on the socket again.
    """

    _chunk: bytes = b""
    _chunk_at: int = 0
    _held_error: Exception | None = None  # met by a read made ahead of paho: paho meets it next
    #: Set by the link: takes a PUBLISH that :func:`cut_publish` read, in paho's place.
    deliver_publish: Callable[[PublishCut], None] | None = None

    @property
    def buffered(self) -> int:
        """Bytes read from the socket that paho has not taken yet."""
        return len(self._chunk) - self._chunk_at

    def discard_buffered(self) -> None:
        """Forget what the last connection left unread (before a new one opens)."""
        self._chunk, self._chunk_at, self._held_error = b"", 0, None

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._held_error is not None:
            error, self._held_error = self._held_error, None
            raise error
        if self._chunk_at >= len(self._chunk):
            # paho's own read: its TLS and error handling stay as they are.
            self._chunk, self._chunk_at = super()._sock_recv(_READ_CHUNK), 0
        start = self._chunk_at
        self._chunk_at = min(start + bufsize, len(self._chunk))
        return self._chunk[start : self._chunk_at]  # b"" when the broker closed the connection

    def _packet_read(self) -> MQTTErrorCode:
        deliver = self.deliver_publish
        in_packet = self._in_packet
        if (
            deliver is not None
            and self._protocol == mqtt.MQTTv5  # the property block cut_publish reads
            # paho is between packets: a command byte of 0 (a reserved type) reads as none yet,
            # so what paho has read of its length says whether it is mid-way
            and not in_packet["command"]
            and not in_packet["have_remaining"]
            and not in_packet["remaining_count"]
        ):
            if self._chunk_at >= len(self._chunk) and self._held_error is None:
                try:
                    self._chunk, self._chunk_at = super()._sock_recv(_READ_CHUNK), 0
                except Exception as error:  # paho's own read, next, meets it as it would have
                    self._held_error = error
            cut = cut_publish(self._chunk, self._chunk_at)
            if cut is not None:
                self._chunk_at, publish = cut
                with self._msgtime_mutex:  # paho's keepalive reads it
                    self._last_bytes_received = time.monotonic()
                with self._in_callback_mutex:
                    deliver(publish)
                if publish[4] == 1 and not self._manual_ack:
                    return self._send_puback(publish[3])
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._packet_read()


class MqttLink:
    """The daemon's connection to the broker: subscribe, receive, publish, reconnect."""

    def __init__(  # noqa: PLR0917 - the positional signature is the daemon's contract
        self,
        config: BrokerConfig,
        client_id: str,
        subscriptions: Sequence[Subscription],
        will_topic: str,
        will_payload: bytes,
        on_message: Callable[[MessageReceived], None],
        on_link: Callable[[LinkChanged], None],
        on_connected_publish: Callable[[], None] | None = None,
        *,
        max_queued: int = DEFAULT_MAX_QUEUED,
        stable_after_s: float = DEFAULT_STABLE_AFTER_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
        final_timeout_s: float = DEFAULT_FINAL_TIMEOUT_S,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        manual_ack: bool = False,
    ) -> None:
        connect_properties = _connect_properties(config, max_packet_size)
        self._config = config
        self._client_id = client_id
        self._subscriptions = tuple(subscriptions)
        self._on_message_cb = on_message
        self._on_link_cb = on_link
        self._on_connected_publish_cb = on_connected_publish
        self._max_queued = max_queued
        self._stable_after_s = stable_after_s
        self._connect_timeout_s = connect_timeout_s
        self._handshake_timeout_s = handshake_timeout_s
        self._final_timeout_s = final_timeout_s
        # A lazy proxy: picks up the daemon's structlog configuration whenever that happens.
        self._log: Any = structlog.get_logger(component="mqtt", device=client_id)
        self._rng = random.SystemRandom()

        # Guarded by _lock: which thread may call client.publish()/disconnect() right now.
        self._lock = threading.Lock()
        self._holding = False  # reconnect() .. CONNACK: publishes wait in _pending
        self._pending: deque[tuple[str, bytes, bool, Callable[[], None] | None]] = deque()
        self._disconnect_requested = False
        self._disconnect_deadline = 0.0
        self._ack_callbacks: dict[int, Callable[[], None]] = {}  # mid -> on_ack
        # Appended by on_publish (inside paho's lock: no lock of ours), emptied by our thread.
        self._acked: deque[int] = deque()

        # Plain attributes; each written by one thread only (reads elsewhere are atomic).
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._up = False
        self._init_reasons()
        self._ready = False  # CONNACK accepted and SUBACK received in the current attempt
        self._up_since = 0.0
        self._ever_up = False
        self._sub_mid: int | None = None
        self._dropped = 0
        self._since: float | None = None
        self._reconnects = 0
        self._init_failover(config)

        _check_topic(will_topic)
        client = _ChunkedClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        client.max_queued_messages_set(max_queued)
        # With manual acks a QoS 1 command is acknowledged to the broker only once the daemon
        # has handled it (its replay floor on disk): a crash before that and the broker sends it
        # again after the reconnect, instead of it being lost in memory.
        client.manual_ack_set(manual_ack)
        self._manual_ack = manual_ack
        client.connect_timeout = connect_timeout_s
        if config.username is not None:
            client.username_pw_set(config.username, config.password)
        if config.tls is not None:
            client.tls_set_context(_tls_context(config.tls))
        client.will_set(will_topic, will_payload, qos=1, retain=True)
        self._set_callbacks(client)
        # Only stores the parameters; every reconnect() reuses them, properties included.
        self._connect_properties = connect_properties
        client.connect_async(
            config.host,
            config.port,
            keepalive=config.keepalive_s,
            clean_start=False,
            properties=connect_properties,
        )
        self._client = client

    def _init_reasons(self) -> None:
        """Why the link failed: written by the network thread, read by :attr:`status`."""
        self._last_error: str | None = None
        self._last_cause: str | None = None  # _last_error as one of CAUSES
        self._attempt_error: str | None = None  # reason the current attempt failed
        self._attempt_cause: str | None = None  # ... as one of CAUSES
        self._failed_attempts = 0  # since the link was last up
        self._paho_error: str | None = None  # paho's last error-level log line this attempt

    def _init_failover(self, config: BrokerConfig) -> None:
        """Failover state: the network thread writes it; _ack_lock guards the epoch for ack()."""
        self._addresses = config.addresses
        self._address_index = 0
        self._address_epoch = 0  # bumped whenever the link moves to another broker
        self._ack_lock = threading.Lock()
        # Unacknowledged (mid, message) -> the epoch it came in (the message alone compares
        # without its mid: two brokers' copies of one command are equal).
        self._received: dict[tuple[int, MessageReceived], int] = {}
        self._failback_due = False
        self._next_probe = 0.0

    def _set_callbacks(self, client: _ChunkedClient) -> None:
        client.on_connect = self._guard("on_connect", self._handle_connect)
        client.on_disconnect = self._guard("on_disconnect", self._handle_disconnect)
        client.on_subscribe = self._guard("on_subscribe", self._handle_subscribe)
        client.on_message = self._guard("on_message", self._handle_message)
        client.deliver_publish = self._guard("on_message", self._handle_cut_publish)
        client.on_publish = self._guard("on_publish", self._handle_publish)
        # Present only so that publish() from another thread never writes to the socket itself.
        client.on_socket_register_write = self._guard("on_socket_register_write", _ignore_socket)
        # paho's error lines through a logger that takes only those, not through on_log: paho
        # formats every line (each packet, with its properties) for on_log before it is called,
        # about a tenth of the link's time per message in a flood (bench/junk).
        client.enable_logger(_error_logger(self._note_paho_error))

    # ------------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        """True from an accepted CONNACK until that connection is gone."""
        return self._up

    @property
    def last_error(self) -> str | None:
        """Why the link last failed (kept after it recovers; None if it never failed)."""
        return self._last_error

    @property
    def broker(self) -> str:
        """``host:port`` of the broker the link is using (or trying) now."""
        host, port = self._addresses[self._address_index]
        return f"{host}:{port}"

    @property
    def status(self) -> LinkStatus:
        """A snapshot for the state message: up, since (monotonic), last_error, reconnects.

        Safe from any thread; the fields are read one by one, so a transition happening at the
        same moment may show in some of them only.
        """
        return LinkStatus(
            up=self._up,
            since=self._since,
            last_error=self._last_error,
            reconnects=self._reconnects,
            broker=self.broker,
            attempts=self._failed_attempts,
            cause=self._last_cause,
        )

    @property
    def socket_inode(self) -> int | None:
        """The inode of the broker connection's socket, or None: how the traffic meter
        (:class:`receiver.health.TrafficMeter`) tells the MQTT bytes from the media ones."""
        sock = self._client.socket()
        try:
            return os.fstat(sock.fileno()).st_ino if isinstance(sock, socket.socket) else None
        except OSError:
            return None

    def start(self) -> None:
        """Start the network thread; it connects, and keeps reconnecting until :meth:`stop`."""
        if self._thread is not None:
            raise LinkError("the MQTT link was already started; make a new MqttLink")
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-{self._client_id}", daemon=True
        )
        self._since = time.monotonic()
        self._thread.start()

    def ack(self, message: MessageReceived) -> None:
        """Acknowledge a handled QoS 1 message to the broker (with ``manual_ack``); thread-safe.

        If the link dropped since it arrived, the broker sends it again after the reconnect and
        the daemon answers that copy as a duplicate.
        """
        if not self._manual_ack or message.qos == 0:
            return
        with self._ack_lock:
            epoch = self._received.pop((message.mid, message), None)
            if epoch != self._address_epoch:
                # It came from another broker (or was acknowledged already): that broker sends
                # it again on our next visit and the daemon answers the copy as a duplicate.
                self._log.debug("mqtt_ack_skipped_other_broker", mid=message.mid)
                return
            try:
                self._client.ack(message.mid, message.qos)
            except Exception as exc:  # a closed socket: the broker will resend
                self._log.debug("mqtt_ack_failed", mid=message.mid, reason=str(exc))

    def publish(
        self,
        topic: str,
        payload: bytes,
        retain: bool = False,
        on_ack: Callable[[], None] | None = None,
    ) -> bool:
        """Queue a QoS 1 message; never blocks on the network. Safe from any thread.

        While the link is down the message is kept (at most ``max_queued`` messages in all)
        and sent after the next connect, in order; publishing before :meth:`start` is fine too.
        A full queue, or a link being stopped, drops the message with a warning and returns
        False; otherwise returns True. An invalid topic name raises :class:`LinkError`.

        ``on_ack`` is called once, from the link's network thread, when the broker has
        acknowledged the message (its PUBACK), also if that happens only after one or more
        reconnects. It must only queue (put an event on the daemon's inbox) and return. It is
        not called for a dropped message, nor if the link is stopped or the process ends before
        the PUBACK: see the module's notes on acknowledgements.
        """
        _check_topic(topic)
        if self._stopping.is_set():
            self._log.warning("mqtt_publish_after_stop", topic=topic)
            return False
        with self._lock:
            if self._holding:
                return self._hold_locked(topic, payload, retain, on_ack)
            info = self._publish_locked(topic, payload, retain, on_ack)
            return info.rc != MQTTErrorCode.MQTT_ERR_QUEUE_SIZE

    def stop(self, final_topic: str | None = None, final_payload: bytes | None = None) -> None:
        """Publish the final message (retained) if connected, disconnect cleanly, join the thread.

        A clean disconnect discards the will, so the daemon passes its offline state here. A
        ``final_topic`` without a payload publishes an empty retained message, which clears the
        retained message on that topic. Waits at most ``final_timeout_s`` for the broker's
        acknowledgement. Calling stop() again, or before start(), does nothing.
        """
        thread = self._thread
        if thread is None or self._stopping.is_set():
            self._stopping.set()
            return
        self._stopping.set()
        if final_topic is not None and self._up:
            self._publish_final(final_topic, final_payload if final_payload is not None else b"")
        with self._lock:
            self._disconnect_requested = True
            self._disconnect_deadline = time.monotonic() + self._final_timeout_s
            if not self._holding:
                self._client.disconnect()
        if thread is threading.current_thread():
            return  # called from one of our callbacks: the thread ends by itself
        thread.join(timeout=self._connect_timeout_s + self._final_timeout_s + 5.0)
        if thread.is_alive():
            self._log.error("mqtt_thread_did_not_stop")
        else:
            self._log.info("mqtt_stopped")

    # ------------------------------------------------------------------ publishing helpers

    def _publish_locked(
        self,
        topic: str,
        payload: bytes,
        retain: bool,
        on_ack: Callable[[], None] | None = None,
    ) -> mqtt.MQTTMessageInfo:
        """client.publish(); the caller holds ``_lock`` and the link is not holding messages.

        paho assigns the mid here, connected or not, and keeps it across reconnects; the
        callback is registered before ``_lock`` is released, and acknowledgements are matched
        only under ``_lock`` (:meth:`_deliver_acks`), so an early PUBACK cannot be missed.
        """
        try:
            info = self._client.publish(topic, payload, qos=1, retain=retain)
        except ValueError as exc:
            raise LinkError(f"cannot publish to {topic!r}: {exc}") from exc
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self._note_dropped(topic)
        elif on_ack is not None:
            self._ack_callbacks[info.mid] = on_ack
        return info

    def _hold_locked(
        self, topic: str, payload: bytes, retain: bool, on_ack: Callable[[], None] | None = None
    ) -> bool:
        if len(self._pending) >= self._max_queued:
            self._note_dropped(topic)
            return False
        self._pending.append((topic, payload, retain, on_ack))
        return True

    def _note_dropped(self, topic: str) -> None:
        self._dropped += 1
        self._log.warning(
            "mqtt_publish_dropped",
            topic=topic,
            reason=f"outgoing queue full ({self._max_queued} messages)",
            dropped_total=self._dropped,
        )

    def _publish_final(self, topic: str, payload: bytes) -> None:
        try:
            with self._lock:
                if self._holding:  # the CONNACK is being processed: sent right after it
                    self._hold_locked(topic, payload, True)
                    return
                info = self._publish_locked(topic, payload, True)
            # Not a paho callback and not paho's thread: waiting here is allowed.
            info.wait_for_publish(timeout=self._final_timeout_s)
            confirmed = info.is_published()
        except (LinkError, ValueError, RuntimeError) as exc:
            self._log.warning("mqtt_final_publish_failed", topic=topic, reason=str(exc))
            return
        if not confirmed:
            self._log.warning(
                "mqtt_final_publish_unconfirmed", topic=topic, timeout_s=self._final_timeout_s
            )

    # ------------------------------------------------------------------ network thread

    def _run(self) -> None:
        failures = 0  # failed attempts since the link last held
        while not self._stopping.is_set():
            try:
                up_for = self._attempt()
            except Exception as exc:  # never let the network thread die
                self._log.exception("mqtt_thread_error")
                self._attempt_error = self._attempt_error or f"internal error: {exc!r}"
                up_for = None
                self._set_down()
            if self._stopping.is_set():
                break
            if self._failback_due or (up_for is not None and up_for >= self._stable_after_s):
                failures = 0
            else:
                failures += 1
            cfg = self._config
            rounds = -(-failures // len(self._addresses))  # ceil: one round per address ring
            delay = backoff_delay(rounds, cfg.reconnect_min_s, cfg.reconnect_max_s, self._rng)
            reason = self._attempt_error or "connection closed"
            self._last_error = reason
            if up_for is None:
                self._failed_attempts += 1
            # Last: the loop writes the status file at once when the cause changes (runtime.py),
            # so the error and the count it reads with it are this attempt's.
            self._last_cause = self._attempt_cause or "lost"
            tried = self.broker
            self._address_index = (
                0
                if self._failback_due
                else next_address(self._address_index, len(self._addresses), up_for is not None)
            )
            self._failback_due = False
            self._log.warning(
                "mqtt_link_lost" if up_for is not None else "mqtt_connect_failed",
                reason=reason,
                broker=tried,
                up_for_s=None if up_for is None else round(up_for, 1),
                failures=failures,
                retry_in_s=round(delay, 2),
                next_broker=self.broker,
            )
            self._stopping.wait(delay)
        self._deliver_acks()
        self._close_socket()

    def _attempt(self) -> float | None:
        """One connection: open it, run it until it ends. Returns how long it was up, if it was."""
        self._attempt_error = None
        self._attempt_cause = None
        self._paho_error = None
        self._ready = False
        self._sub_mid = None
        with self._lock:
            self._holding = True
        host, port = self._addresses[self._address_index]
        try:
            if (host, port) != (self._client.host, self._client.port):
                self._move_to(host, port)
            self._client.discard_buffered()
            try:
                self._client.reconnect()
            except Exception as exc:
                self._attempt_error, self._attempt_cause = describe_connect_error(exc, host, port)
                return None
            self._disable_nagle()
            self._bound_silence()
            return self._run_session()
        finally:
            self._release_hold()

    def _move_to(self, host: str, port: int) -> None:
        """Point paho at another broker. Messages that came from the previous one can no longer
        be acknowledged (their ids are that broker's), so the epoch moves on under _ack_lock."""
        with self._ack_lock:
            self._address_epoch += 1
            self._received.clear()
            self._client.connect_async(
                host,
                port,
                keepalive=self._config.keepalive_s,
                clean_start=False,
                properties=self._connect_properties,
            )
        self._log.info("mqtt_broker_switch", broker=f"{host}:{port}")

    def _check_failback(self, now: float) -> None:
        """On a failover broker: probe the preferred one now and then; once it answers, end
        this connection cleanly (no will) and let :meth:`_run` move back to it."""
        if self._address_index == 0 or self._disconnect_requested or self._failback_due:
            return
        if now < self._next_probe:
            return
        # Jittered, so a fleet on the standby does not return at one instant.
        self._next_probe = now + self._config.failback_s * self._rng.uniform(0.5, 1.0)
        host, port = self._addresses[0]
        if not _address_answers(host, port, _FAILBACK_PROBE_TIMEOUT_S):
            return
        self._log.info("mqtt_failback", broker=f"{host}:{port}")
        self._failback_due = True
        self._attempt_error = f"moving back to the preferred broker {host}:{port}"
        with self._lock:
            self._client.disconnect()

    def _disable_nagle(self) -> None:
        """Send small packets at once: with Nagle's algorithm an event published right after a
        PUBACK waits for the broker's delayed ACK (up to 40 ms; measured by bench/latency)."""
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:
                self._log.debug("mqtt_nodelay_unavailable", reason=str(exc))

    def _bound_silence(self) -> None:
        """Let the kernel end a connection that went silent, well within 1.5 x the keepalive.

        paho alone takes up to 2 x the keepalive: it sends PINGREQ only once nothing was sent or
        received for a keepalive, and gives up a keepalive after that. A link that dies silently
        (a NAT forgets us, a cell goes dark: no RST) right after traffic is noticed that late,
        and commands meanwhile go into a dead connection. So, on our socket (TCP only, public
        socket options): TCP keepalive probes after ``keepalive/2`` without a packet from the
        broker, and ``TCP_USER_TIMEOUT`` of ``keepalive/2``: data (a probe, a PINGREQ, a
        publish) that stays unacknowledged that long ends the connection. Worst case, a link
        that dies at t is given up at about t + keepalive (a publish at t + keepalive/2, then
        keepalive/2 unanswered); a quiet one at t + keepalive/2 + one probe interval. paho then
        reads ETIMEDOUT and we reconnect. Measured over an emulated 4G link by tests/link.
        """
        sock = self._client.socket()
        if not isinstance(sock, socket.socket) or sock.type != socket.SOCK_STREAM:
            return
        keepalive = self._config.keepalive_s
        options = [
            (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
            (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), max(1, keepalive // 2)),
            (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), max(1, keepalive // 10)),
            (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 5),
            (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), keepalive * 500),
        ]
        for level, option, value in options:
            if option is None:
                continue  # not Linux: paho's own keepalive (up to 2 x) is all there is
            try:
                sock.setsockopt(level, option, value)
            except OSError as exc:
                self._log.debug("mqtt_sockopt_unavailable", option=option, reason=str(exc))

    def _release_hold(self) -> None:
        """Hand the held messages to paho (behind its re-sends); disconnect if stop() asked."""
        with self._lock:
            if not self._holding:
                return
            self._holding = False
            self._drain_pending_locked()
            if self._disconnect_requested:
                self._client.disconnect()

    def _drain_pending_locked(self) -> None:
        while self._pending:
            topic, payload, retain, on_ack = self._pending.popleft()
            try:
                self._publish_locked(topic, payload, retain, on_ack)
            except LinkError as exc:
                self._log.error("mqtt_publish_failed", topic=topic, reason=str(exc))

    def _run_session(self) -> float | None:
        handshake_deadline = time.monotonic() + self._handshake_timeout_s
        ready_handled = False
        try:
            while True:
                rc = self._client.loop(timeout=self._loop_timeout_s())
                rc = self._read_buffered(rc)
                self._deliver_acks()
                if self._holding and (self._up or self._disconnect_requested):
                    self._release_hold()
                if self._ready and not ready_handled:
                    # After CONNACK (paho has re-sent what was in flight) and SUBACK.
                    ready_handled = True
                    if self._on_connected_publish_cb is not None:
                        self._call_user("on_connected_publish", self._on_connected_publish_cb)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    if self._attempt_error is None:
                        self._attempt_error = f"connection lost ({mqtt.error_string(rc)})"
                    break
                now = time.monotonic()
                if ready_handled:
                    self._check_failback(now)
                if self._disconnect_requested:
                    if now > self._disconnect_deadline:
                        break  # the DISCONNECT could not be written; the socket is closed below
                elif not ready_handled and now > handshake_deadline:
                    self._attempt_cause = "no_answer"
                    self._attempt_error = (
                        "no answer from broker: "
                        f"{'SUBACK' if self._up else 'CONNACK'} not received within "
                        f"{self._handshake_timeout_s:g} s"
                    )
                    break
        finally:
            up_for = time.monotonic() - self._up_since if self._up else None
            self._set_down()
        return up_for

    def _loop_timeout_s(self) -> float:
        if self._client.buffered:
            return 0.0  # bytes in hand: paho's select would not see them
        # Short turns until the CONNACK: stop() must not wait long on a mute broker.
        return 0.1 if self._holding else _LOOP_TIMEOUT_S

    def _read_buffered(self, rc: MQTTErrorCode) -> MQTTErrorCode:
        """Hand paho the packets already read from the socket, a bounded number per turn (a
        burst costs one ``select`` per chunk, not one per message)."""
        reads = 0
        while (
            rc == MQTTErrorCode.MQTT_ERR_SUCCESS
            and self._client.buffered
            and reads < _BUFFERED_READS_PER_TURN
        ):
            rc = self._client.loop_read()
            reads += 1
        return rc

    def _deliver_acks(self) -> None:
        """Call the ``on_ack`` of every message acknowledged so far (our thread, no paho lock)."""
        if not self._acked:
            return
        ready: list[Callable[[], None]] = []
        with self._lock:
            while self._acked:
                callback = self._ack_callbacks.pop(self._acked.popleft(), None)
                if callback is not None:
                    ready.append(callback)
        for callback in ready:
            self._call_user("on_ack", callback)

    def _set_up(self, session_present: bool) -> None:
        """CONNACK accepted (called from on_connect, before any message of this connection)."""
        self._up = True
        self._up_since = time.monotonic()
        if self._address_index != 0:
            self._next_probe = self._up_since + self._config.failback_s * self._rng.uniform(
                0.5, 1.0
            )
        self._since = self._up_since
        self._failed_attempts = 0
        if self._ever_up:
            self._reconnects += 1
        self._log.info("mqtt_connected", session_present=session_present, broker=self.broker)
        if not session_present and self._ever_up:
            self._log.warning(
                "mqtt_session_lost",
                detail="the broker no longer had our session: "
                "commands sent to us while the link was down are lost",
            )
        self._ever_up = True
        self._call_user("on_link", self._on_link_cb, LinkChanged(up=True))

    def _set_down(self) -> None:
        if not self._up:
            return
        self._up = False
        self._since = time.monotonic()
        self._call_user("on_link", self._on_link_cb, LinkChanged(up=False))

    def _close_socket(self) -> None:
        """At thread exit: make sure no socket stays open (normally the DISCONNECT closed it)."""
        try:
            sock = self._client.socket()
            if sock is not None:
                sock.close()
        except Exception:
            self._log.exception("mqtt_close_failed")

    def _call_user(
        self, name: str, fn: Callable[_P, None], *args: _P.args, **kw: _P.kwargs
    ) -> None:
        try:
            fn(*args, **kw)
        except Exception:
            self._log.exception("mqtt_callback_failed", callback=name)

    def _guard(self, name: str, fn: Callable[_P, None]) -> Callable[_P, None]:
        """Wrap a paho callback: an exception is logged, never propagated into paho's loop."""

        def guarded(*args: _P.args, **kwargs: _P.kwargs) -> None:
            try:
                fn(*args, **kwargs)
            except Exception:
                self._log.exception("mqtt_callback_failed", callback=name)

        return guarded

    # ------------------------------------------------------------------ paho callbacks
    # All run in our network thread, inside client.loop() or client.reconnect().

    def _handle_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._attempt_error = _connack_reason(reason_code)
            self._attempt_cause = _connack_cause(reason_code)
            return
        self._set_up(flags.session_present)
        if not self._subscriptions:
            self._ready = True
            return
        topics = [
            (
                sub.topic,
                SubscribeOptions(
                    qos=1,
                    retainAsPublished=sub.ignore_retained,
                    retainHandling=(
                        SubscribeOptions.RETAIN_DO_NOT_SEND
                        if sub.ignore_retained
                        else SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE
                    ),
                ),
            )
            for sub in self._subscriptions
        ]
        rc, mid = client.subscribe(topics)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._attempt_error = f"subscribe failed: {mqtt.error_string(rc)}"
        self._sub_mid = mid

    def _handle_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties,
    ) -> None:
        if mid != self._sub_mid:
            return
        refused = []
        for sub, code in zip(self._subscriptions, reason_codes, strict=False):
            if code.is_failure:
                refused.append(f"{sub.topic} ({code.getName()})")
            elif code.value < 1:
                self._log.warning("mqtt_subscription_downgraded", topic=sub.topic, granted_qos=0)
        if refused:
            self._last_error = "subscription refused by broker: " + ", ".join(refused)
            self._last_cause = "refused_later"
            self._log.error("mqtt_subscription_refused", refused=refused)
        self._ready = True

    def _handle_message(
        self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage
    ) -> None:
        self._receive(
            MessageReceived(
                topic=message.topic,
                payload=bytes(message.payload),
                retained=bool(message.retain),
                mid=message.mid,
                qos=message.qos,
            )
        )

    def _handle_cut_publish(self, publish: PublishCut) -> None:
        """A PUBLISH the client read without paho (:func:`cut_publish`): as paho's would come."""
        topic, payload, retained, mid, qos = publish
        self._receive(MessageReceived(topic, payload, retained, mid, qos))

    def _receive(self, received: MessageReceived) -> None:
        if self._manual_ack and received.qos > 0:
            # Only this thread moves the epoch, so no lock is needed to read it here.
            self._received[received.mid, received] = self._address_epoch
        self._on_message_cb(received)

    def _handle_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        # Called inside paho's message lock: only note the mid (deque.append is thread-safe);
        # the callback runs from _deliver_acks once loop() has returned.
        self._acked.append(mid)
        if reason_code.is_failure:
            self._last_error = f"publish refused by broker: {reason_code.getName()}"
            self._last_cause = "refused_later"
            self._log.warning("mqtt_publish_refused", mid=mid, reason=reason_code.getName())

    def _handle_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._attempt_error is not None:
            return  # a better reason (refused CONNACK, ...) is already known
        if flags.is_disconnect_packet_from_server:
            self._attempt_error = f"disconnected by broker: {reason_code.getName()}"
        elif reason_code.value == 0:
            if not self._disconnect_requested:
                self._attempt_error = "disconnected"
        elif reason_code.getName() == "Keep alive timeout":
            self._attempt_error = "connection lost: no answer from broker within the keepalive"
        elif self._paho_error is not None:
            # e.g. a TLS alert from the broker after the handshake (TLS 1.3): an expired or
            # refused client certificate looks like a plain drop otherwise.
            self._attempt_error = f"connection lost: {self._paho_error}"
        else:
            self._attempt_error = "connection lost"

    def _note_paho_error(self, text: str) -> None:
        self._paho_error = text[:_MAX_PAHO_ERROR_CHARS]


_MAX_PAHO_ERROR_CHARS = 200


class _ErrorLines(logging.Handler):
    """Hands each error-level line paho logs to ``note`` (the network thread's)."""

    def __init__(self, note: Callable[[str], None]) -> None:
        super().__init__(logging.ERROR)
        self._note = note

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except (TypeError, ValueError):  # a line paho could not format: keep the generic reason
            return
        self._note(text)


def _error_logger(note: Callable[[str], None]) -> logging.Logger:
    """A logger of one link's own (outside the logging tree: nothing propagates to the root)
    that drops paho's debug lines unformatted, at the level check."""
    logger = logging.Logger("paho", logging.ERROR)
    logger.propagate = False
    logger.addHandler(_ErrorLines(note))
    return logger


def _ignore_socket(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """paho's on_socket_register_write: nothing to do, our thread's select() is woken by paho."""
