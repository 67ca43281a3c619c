"""The operator tool's MQTT connection: connect, publish, subscribe, each failure one sentence.

Every way a broker can fail an operator (nothing listening, unknown host, TLS refused, a login
refused, no answer in time, an ACL refusing a publish or a subscription) becomes a
:class:`BrokerError` whose message says the cause and what to check; ``receiver-admin`` prints
it on one line and exits with :data:`EXIT_BROKER`. paho's own network loop keeps a long-lived
connection (``watch``, ``collect``, ``fleet --watch``) reconnecting after a broker restart;
:class:`Connection` subscribes again on every reconnect. It does not reconnect once the broker
dropped it because another client connected with its client id ("Session taken over"): coming
back would take the session from that one, which would come back in turn, for ever. A broker
that only closes the older connection (Mosquitto before 2.0.15) cannot be told from a network
that keeps dropping: :class:`Connection` counts the connections that end right after they began
(:meth:`Connection.kept_closing`), for its caller to warn.
"""

from __future__ import annotations

import argparse
import signal
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from receiver.central.inputs import InputError, why
from receiver.core.record import record

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # the tool ran but what was asked did not happen (see the subcommand)
EXIT_INPUT: Final = 2  # bad input: usage, a document or command that would be refused, a key file
EXIT_BROKER: Final = 3  # the broker: unreachable, TLS, login, timeout, ACL, not acknowledged

DEFAULT_TIMEOUT_S: Final = 10.0
SESSION_EXPIRY_S: Final = 7 * 86400  # a collector's queued events survive a week away
SESSION_TAKEN_OVER: Final = 0x8E  # MQTT 5: the broker dropped us for a client of the same id
# Two clients of one id on a broker that just closes the older connection take the session from
# each other at every reconnect: each connection ends about one reconnect delay (1 s, paho's
# backoff starting again at each CONNACK) after its CONNACK. A broker restart or a dropped link
# ends a connection once, and mostly one that had been up for longer than this.
SHORT_LIVED_S: Final = 10.0
SHORT_LIVED_WARN: Final = 3  # so many short-lived connections in a row: say a second client?


class ShortLived:
    """Counts the connections in a row that ended, not by this client, within
    :data:`SHORT_LIVED_S` of their CONNACK; one that lasted longer starts the count again."""

    def __init__(self) -> None:
        self.count = 0
        self._since: float | None = None  # the CONNACK of the connection that is up
        self._told = False

    def connected(self, now: float) -> None:
        self._since = now

    def disconnected(self, now: float, *, clean: bool) -> None:
        since, self._since = self._since, None
        if since is None or clean:  # a failed connect, or this client's own disconnect
            return
        self.count = self.count + 1 if now - since < SHORT_LIVED_S else 0

    def news(self) -> int | None:
        """The count, the first time it reaches :data:`SHORT_LIVED_WARN`; else None (a run
        warns once, not at every connection after)."""
        if self._told or self.count < SHORT_LIVED_WARN:
            return None
        self._told = True
        return self.count


class BrokerError(Exception):
    """A broker failure, said in one line an operator can act on."""


MessageHandler = Callable[[mqtt.MQTTMessage], None]


@record
class BrokerOptions:
    host: str
    port: int
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    username: str | None = None
    password_file: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BrokerOptions:
        return cls(
            host=args.host,
            port=args.port,
            cafile=args.cafile,
            certfile=args.certfile,
            keyfile=args.keyfile,
            username=args.username,
            password_file=args.password_file,
            timeout_s=getattr(args, "broker_timeout", DEFAULT_TIMEOUT_S),
        )

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def _password(options: BrokerOptions) -> str | None:
    if not options.password_file:
        return None
    try:
        # utf-8-sig: Windows Notepad begins a UTF-8 file with a byte order mark, which is no
        # part of the password (sent, the broker refuses the login).
        password = Path(options.password_file).read_text(encoding="utf-8-sig").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(
            f"--password-file {options.password_file}: cannot read it ({why(exc)})"
        ) from exc
    if not password:
        raise InputError(
            f"--password-file {options.password_file}: empty; write the password of "
            f"{'user ' + repr(options.username) if options.username else 'the user'} in it"
        )
    return password


def _refusal(options: BrokerOptions, reason: ReasonCode) -> str:
    name = str(reason)
    # Mosquitto answers a wrong password with "Not authorized", not "Bad user name or password".
    if reason.value in (0x86, 0x87, 0x04, 0x05):
        if options.username:
            return (
                f"{options.where} refused the login of user {options.username!r} ({name}): "
                "bad user name or password? check --username and --password-file"
            )
        return (
            f"{options.where} refused an anonymous client: not authorized "
            "(give --username and --password-file)"
        )
    return f"{options.where} refused the connection: {name}"


def _connect_error(options: BrokerOptions, exc: BaseException) -> BrokerError:
    where = options.where
    if isinstance(exc, ssl.SSLCertVerificationError):
        return BrokerError(
            f"TLS with {where} failed: the broker's certificate is not trusted "
            f"({exc.verify_message}; is --cafile {options.cafile} the CA that signed it?)"
        )
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        return BrokerError(f"TLS with {where} failed: {reason} (is this port the TLS listener?)")
    if isinstance(exc, socket.gaierror):
        return BrokerError(f"cannot connect to {where}: unknown host {options.host!r}")
    if isinstance(exc, ConnectionRefusedError):
        return BrokerError(
            f"cannot connect to {where}: connection refused (is the broker running there?)"
        )
    if isinstance(exc, TimeoutError | socket.timeout):
        return BrokerError(f"cannot connect to {where}: no answer within {options.timeout_s:g} s")
    if isinstance(exc, OSError):
        return BrokerError(f"cannot connect to {where}: {exc.strerror or exc}")
    return BrokerError(f"cannot connect to {where}: {exc}")


def _start_without_stops(start: Callable[[], object]) -> None:
    """Runs ``start``, which starts a thread, with SIGINT and SIGTERM blocked in that thread.

    Python acts on signals in the main thread only; a thread that took one from the kernel
    would only pass it on. Given to the main thread alone, Ctrl-C and SIGTERM wait while it
    holds them back (``collect`` removing the database it made), then act.
    """
    before = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM))
        start()  # the new thread takes this thread's mask
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)  # one that came meanwhile acts here


class Connection:
    """One MQTT 5 client of the operator's tool, connected (CONNACK received) once made.

    ``subscriptions`` are (re)made on every connect; ``on_message`` runs in paho's thread.
    ``persistent``: a session with ``client_id`` that the broker keeps (and queues QoS 1 messages
    for) while this client is away; ``manual_ack``: a received message is acknowledged only
    by :meth:`ack`, so the broker sends it again if this client dies before storing it.
    """

    def __init__(
        self,
        options: BrokerOptions,
        *,
        client_id: str = "",
        persistent: bool = False,
        manual_ack: bool = False,
        subscriptions: Sequence[str] = (),
        on_message: MessageHandler | None = None,
    ) -> None:
        self.options = options
        self.subscriptions = tuple(subscriptions)
        self._on_message = on_message
        self._connected = threading.Event()
        self._taken_over = threading.Event()
        self._first_connack = threading.Event()
        self._refused: str | None = None
        self._subscribed = threading.Event()
        self._subscribe_mid: int | None = None
        self._subscribe_refused: list[str] = []
        self._acks: dict[int, ReasonCode] = {}
        self._acked = threading.Condition()
        self.reconnects = 0
        self._short_lived = ShortLived()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"receiver-admin-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5,
            manual_ack=manual_ack,
        )
        self._client.connect_timeout = options.timeout_s
        self._client.reconnect_delay_set(1, 10)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_subscribe = self._handle_subscribe
        self._client.on_publish = self._handle_publish
        self._client.on_message = self._handle_message
        self._open(persistent)

    def _open(self, persistent: bool) -> None:
        options = self.options
        password = _password(options)
        if options.cafile:
            for flag, path in (
                ("--cafile", options.cafile),
                ("--certfile", options.certfile),
                ("--keyfile", options.keyfile),
            ):
                if path and Path(path).is_dir():
                    raise InputError(f"{flag} {path}: a directory; give the file (PEM) in it")
                if path and not Path(path).is_file():
                    raise InputError(f"{flag} {path}: no such file")
            try:
                self._client.tls_set(
                    ca_certs=options.cafile, certfile=options.certfile, keyfile=options.keyfile
                )
            except (ssl.SSLError, OSError) as exc:
                raise InputError(f"--cafile {options.cafile}: not usable for TLS ({exc})") from exc
        if options.username:
            self._client.username_pw_set(options.username, password)
        properties = None
        if persistent:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
        try:
            self._client.connect(
                options.host,
                options.port,
                keepalive=30,
                clean_start=not persistent,
                properties=properties,
            )
        except (OSError, ValueError) as exc:
            raise _connect_error(options, exc) from exc
        try:
            _start_without_stops(self._client.loop_start)
            self._await_session()
        except BaseException:
            # Refused, no answer, or stopped (Ctrl-C, SIGTERM) while it waited: paho's thread
            # ends with it, not left connected behind a tool that is on its way out.
            self.close()
            raise

    def _await_session(self) -> None:
        options = self.options
        if not self._first_connack.wait(options.timeout_s):
            hint = "" if options.cafile else "; a TLS listener needs --cafile"
            raise BrokerError(
                f"{options.where} accepted the connection but gave no MQTT answer within "
                f"{options.timeout_s:g} s{hint}"
            )
        if self._refused is not None:
            raise BrokerError(self._refused)
        if self.subscriptions:
            self.wait_subscribed()

    # ----------------------------------------------------------------- paho's thread

    def _handle_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            if not self._first_connack.is_set():
                self._refused = _refusal(self.options, reason_code)
                self._first_connack.set()
            return
        if self._first_connack.is_set():
            self.reconnects += 1
        self._short_lived.connected(time.monotonic())
        self._connected.set()
        if self.subscriptions:
            self._subscribed.clear()
            _rc, self._subscribe_mid = client.subscribe(
                [(topic, SubscribeOptions(qos=1)) for topic in self.subscriptions]
            )
        self._first_connack.set()

    def _handle_disconnect(
        self,
        client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.value == SESSION_TAKEN_OVER:
            # Another client of this id holds the session now; paho would reconnect and take
            # it back. disconnect() ends paho's loop instead; the caller sees ``taken_over``
            # (set before ``connected`` clears: a caller that saw the loss sees why).
            self._taken_over.set()
            client.disconnect()
        # 0: a normal disconnect, this client's own (close()) or the broker's.
        self._short_lived.disconnected(time.monotonic(), clean=reason_code.value == 0)
        self._connected.clear()

    def _handle_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        if mid != self._subscribe_mid:
            return
        self._subscribe_refused = [
            f"{topic} ({code})"
            for topic, code in zip(self.subscriptions, reason_codes, strict=False)
            if code.is_failure
        ]
        self._subscribed.set()

    def _handle_publish(
        self,
        _client: mqtt.Client,
        _userdata: object,
        mid: int,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        with self._acked:
            self._acks[mid] = reason_code
            self._acked.notify_all()

    def _handle_message(
        self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage
    ) -> None:
        if self._on_message is not None:
            self._on_message(msg)

    # ----------------------------------------------------------------- the caller's thread

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def taken_over(self) -> bool:
        """The broker dropped this client for another of the same client id; it stays away."""
        return self._taken_over.is_set()

    def kept_closing(self) -> int | None:
        """How many connections in a row the broker (or the network) ended right after they
        began, once, when they reach :data:`SHORT_LIVED_WARN`: a second client of this client
        id, most likely; None before, and after it was said."""
        return self._short_lived.news()

    def wait_subscribed(self) -> None:
        if not self._subscribed.wait(self.options.timeout_s):
            raise BrokerError(
                f"{self.options.where} did not confirm the subscription within "
                f"{self.options.timeout_s:g} s"
            )
        if self._subscribe_refused:
            who = f"user {self.options.username!r}" if self.options.username else "anonymous"
            raise BrokerError(
                f"{self.options.where} refused to let {who} read "
                f"{', '.join(self._subscribe_refused)} (the broker's ACL)"
            )

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, expiry_s: int | None = None
    ) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK; refused or unanswered: BrokerError."""
        properties = None
        if expiry_s is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.MessageExpiryInterval = max(1, expiry_s)
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise BrokerError(f"cannot publish to {topic}: {mqtt.error_string(info.rc)}")
        with self._acked:
            answered = self._acked.wait_for(
                lambda: info.mid in self._acks, timeout=self.options.timeout_s
            )
            code = self._acks.pop(info.mid, None)
        if not answered or code is None:
            raise BrokerError(
                f"{self.options.where} did not acknowledge the message to {topic} within "
                f"{self.options.timeout_s:g} s; it may not have been delivered"
            )
        if code.is_failure:
            who = f"user {self.options.username!r}" if self.options.username else "anonymous"
            raise BrokerError(
                f"{self.options.where} refused the message to {topic} from {who}: {code} "
                "(the broker's ACL?)"
            )

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a received message (with ``manual_ack``: once it is safely stored)."""
        self._client.ack(mid, qos)

    def close(self) -> None:
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
