"""MqttLink against a real Mosquitto (the lab's broker): no mocks stand in for paho or broker."""

from __future__ import annotations

import contextlib
import datetime as dt
import queue
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.exception import MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from receiver import mqtt_client
from receiver.config_model import BrokerConfig, TlsConfig
from receiver.core.events import LinkChanged, MessageReceived
from receiver.mqtt_client import LinkError, MqttLink, Subscription
from tests.lab.broker import MosquittoBroker, Subscriber, password_config, tls_listener_config
from tests.lab.ca import TestCa
from tests.lab.daemon import read_stream_lines

PREFIX = "loa/v1"
DEVICE = "dev-test-01"
CMD = f"{PREFIX}/dev/{DEVICE}/cmd"
GROUP_CMD = f"{PREFIX}/grp/commune-25-07873/cmd"
TRUST = f"{PREFIX}/trust"
STATE = f"{PREFIX}/dev/{DEVICE}/state"
EVENTS = f"{PREFIX}/dev/{DEVICE}/events"
ONLINE = b'{"online": true}'
OFFLINE = b'{"online": false}'
SUBSCRIPTIONS = (
    Subscription(CMD, ignore_retained=True),
    Subscription(GROUP_CMD, ignore_retained=True),
    Subscription(TRUST, ignore_retained=False),
)
TIMEOUT = 5.0


def wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.01)


def wait_subscribed(link: MqttLink, rec: Recorder) -> None:
    """Wait until ``link`` is up, has told ``rec`` so, and holds its subscriptions: only then
    is a command published by central delivered (``link.connected`` alone comes earlier)."""
    # on_link(up) runs on the link's thread before the SUBSCRIBE is sent, so it has run too.
    wait_until(lambda: link.connected and rec.subscribed.is_set(), what="subscribed")


class Recorder:
    """What the daemon's queue would receive from the link."""

    def __init__(self) -> None:
        self.messages: queue.Queue[MessageReceived] = queue.Queue()
        self.all: list[MessageReceived] = []  # everything, whatever the waits consumed
        self.links: list[bool] = []
        # Set once the link has its subscriptions (after SUBACK, from on_connected_publish).
        # ``link.connected`` is true from CONNACK, before on_link has run and before the
        # SUBSCRIBE has left: a command published then is not delivered (no subscription yet).
        self.subscribed = threading.Event()
        self._lock = threading.Lock()

    def on_message(self, event: MessageReceived) -> None:
        self.all.append(event)
        self.messages.put(event)

    def on_link(self, event: LinkChanged) -> None:
        with self._lock:
            self.links.append(event.up)

    def next_message(self, timeout: float = TIMEOUT) -> MessageReceived:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("the link delivered no message") from None

    def wait_message(
        self, predicate: Callable[[MessageReceived], bool], timeout: float = TIMEOUT
    ) -> MessageReceived:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                message = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if predicate(message):
                return message
            seen.append(message)
        raise AssertionError(f"no matching message; the link delivered {seen!r}")


def broker_config(broker: MosquittoBroker, **overrides: object) -> BrokerConfig:
    settings: dict[str, object] = {
        "host": broker.host,
        "port": broker.port,
        "keepalive_s": 5,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.3,
    }
    settings.update(overrides)
    return BrokerConfig(**settings)  # type: ignore[arg-type]


LinkFactory = Callable[..., tuple[MqttLink, Recorder]]


@pytest.fixture
def make_link() -> Iterator[LinkFactory]:
    """Builds started links; every link is stopped at teardown even if the test failed."""
    made: list[MqttLink] = []

    def factory(
        broker: MosquittoBroker,
        *,
        subscriptions: Sequence[Subscription] = SUBSCRIPTIONS,
        on_connected_publish: Callable[[MqttLink], None] | None = None,
        recorder: Recorder | None = None,
        start: bool = True,
        link_options: dict[str, Any] | None = None,
        **config: object,
    ) -> tuple[MqttLink, Recorder]:
        rec = recorder or Recorder()
        holder: list[MqttLink] = []

        def connected_publish(link: MqttLink, rec: Recorder) -> None:
            if on_connected_publish is not None:
                on_connected_publish(link)
            rec.subscribed.set()

        link = MqttLink(
            broker_config(broker, **config),
            DEVICE,
            subscriptions,
            STATE,
            OFFLINE,
            on_message=rec.on_message,
            on_link=rec.on_link,
            on_connected_publish=lambda: connected_publish(holder[0], rec),
            **(link_options or {}),
        )
        holder.append(link)
        made.append(link)
        if start:
            link.start()
        return link, rec

    yield factory
    for link in made:
        link.stop()


def publish_online(link: MqttLink) -> None:
    link.publish(STATE, ONLINE, retain=True)


def test_connects_subscribes_and_receives_commands(
    broker: MosquittoBroker, make_link: LinkFactory
) -> None:
    link, rec = make_link(broker)
    wait_subscribed(link, rec)
    assert rec.links == [True]

    with Subscriber(broker) as central:
        central.publish(CMD, b"for the device")
        central.publish(GROUP_CMD, b"for the group")
    first, second = rec.next_message(), rec.next_message()
    assert first == MessageReceived(CMD, b"for the device", retained=False)
    assert second == MessageReceived(GROUP_CMD, b"for the group", retained=False)


def test_paho_lines_below_error_are_never_formatted(
    broker: MosquittoBroker, make_link: LinkFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In a flood every packet counts: paho builds a debug line for each one it reads, with its
    # MQTT 5 properties spelt out, whenever on_log is set; the link wants only error lines.
    formatted = []
    original = Properties.__str__

    def counting_str(self: Properties) -> str:
        formatted.append(1)
        return str(original(self))  # type: ignore[no-untyped-call]

    monkeypatch.setattr(Properties, "__str__", counting_str)
    link, rec = make_link(broker)
    wait_subscribed(link, rec)
    with Subscriber(broker) as central:
        for i in range(20):
            central.publish(CMD, b"junk %d" % i)
    rec.wait_message(lambda m: m.payload == b"junk 19")
    assert formatted == []


class _CountingSocket:
    """The link's socket, counting its reads (everything else passes through)."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.reads = 0

    def recv(self, size: int) -> bytes:
        self.reads += 1
        return bytes(self._sock.recv(size))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_a_burst_is_read_in_chunks_not_a_socket_read_per_piece_of_each_message(
    broker: MosquittoBroker, make_link: LinkFactory
) -> None:
    # paho reads a packet in three or more pieces; each socket read lets go of the interpreter
    # lock, which the link must win back from the busy loop thread: in a flood those hand-offs
    # set the link's pace. A burst that waits in the socket is taken in a few large reads, and
    # every message of it still arrives, in order, the last one too (nothing left unseen in hand
    # while the link waits on a quiet socket).
    count = 400
    held = threading.Event()
    counting: list[_CountingSocket] = []

    class Holding(Recorder):
        def on_message(self, event: MessageReceived) -> None:
            if event.payload == b"first":
                # The link's own thread: the burst piles up in the socket meanwhile.
                client = link._client  # the test spies on the socket
                counting.append(_CountingSocket(client._sock))
                client._sock = counting[0]
                held.wait(TIMEOUT)
            super().on_message(event)

    link, rec = make_link(broker, recorder=Holding())
    wait_subscribed(link, rec)
    with Subscriber(broker) as central:
        central.publish(CMD, b"first")
        wait_until(lambda: bool(counting), what="the first message")
        for i in range(count):
            central.publish(CMD, b"burst %d" % i, qos=0)  # QoS 1 would come 20 at a time
        time.sleep(0.5)  # the burst reaches the link's socket
    held.set()
    rec.wait_message(lambda m: m.payload == b"burst %d" % (count - 1), timeout=3.0)
    assert [m.payload for m in rec.all] == [b"first"] + [b"burst %d" % i for i in range(count)]
    assert counting[0].reads < count / 10


def test_a_burst_does_not_make_paho_build_its_property_tables_for_each_message(
    broker: MosquittoBroker, make_link: LinkFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # paho builds its three tables of MQTT 5 property names and types afresh for every PUBLISH
    # it reads, and clears all 27 names before reading none: half of what it spends on a message
    # in a flood. The link's messages come with properties or without, exactly as before.
    built = []
    original = Properties.__init__

    def counting_init(self: Properties, packet_type: int) -> None:
        built.append(packet_type)
        original(self, packet_type)  # type: ignore[no-untyped-call]

    link, rec = make_link(broker)
    wait_subscribed(link, rec)
    monkeypatch.setattr(Properties, "__init__", counting_init)
    expiring = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    expiring.MessageExpiryInterval = 600
    expiring.UserProperty = ("from", "central")
    with Subscriber(broker) as central:
        for i in range(100):
            central.publish(CMD, b"burst %d" % i, properties=expiring if i % 10 == 0 else None)
    rec.wait_message(lambda m: m.payload == b"burst 99")
    assert [m.payload for m in rec.all] == [b"burst %d" % i for i in range(100)]
    assert len([t for t in built if t == PacketTypes.PUBLISH]) < 5


@pytest.mark.parametrize(
    "packet",
    [
        b"\x00payload",
        b"\x05\x02\x00\x00\x02\x58payload",  # Message Expiry Interval 600
        b"\x10\x26\x00\x04from\x00\x07centralpayload",  # a User Property
        b"\x10\x26\x00\x01a\x00\x01b\x26\x00\x01a\x00\x01c\x01\x01payload",  # two, and a format
    ],
)
def test_properties_read_the_link_s_way_are_paho_s(packet: bytes) -> None:
    theirs = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    their_length = theirs.unpack(packet)[1]  # type: ignore[no-untyped-call]
    ours = mqtt_client.LightProperties(PacketTypes.PUBLISH)
    our_length = ours.unpack(packet)[1]
    assert (our_length, ours.json(), str(ours)) == (their_length, theirs.json(), str(theirs))  # type: ignore[no-untyped-call]
    assert isinstance(ours, Properties)
    assert ours.isEmpty() == theirs.isEmpty()  # type: ignore[no-untyped-call]
    assert ours.pack() == theirs.pack()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("kind", [Properties, mqtt_client.LightProperties])
def test_light_properties_refuse_what_paho_refuses(kind: type[Properties]) -> None:
    properties = kind(PacketTypes.PUBLISH)
    with pytest.raises(MQTTException):
        properties.SessionExpiryInterval = 10  # a CONNECT property, not a PUBLISH one
    twice = b"\x0a\x02\x00\x00\x00\x01\x02\x00\x00\x00\x02"  # Message Expiry Interval twice
    with pytest.raises(MQTTException):
        properties.unpack(twice)  # type: ignore[no-untyped-call]


def test_retained_commands_are_not_delivered_but_retained_documents_are(
    broker: MosquittoBroker, make_link: LinkFactory
) -> None:
    with Subscriber(broker) as central:
        central.publish(CMD, b"stale retained command", retain=True)
        central.publish(TRUST, b"retained keyring", retain=True)

        link, rec = make_link(broker)
        # Retained messages come in subscription order, so a stale command would come first.
        assert rec.next_message() == MessageReceived(TRUST, b"retained keyring", retained=True)

        # Same topic, same publisher: order is kept, so the marker proves "stale" never came.
        central.publish(CMD, b"marker")
        assert rec.next_message() == MessageReceived(CMD, b"marker")

        # A retained publish made while subscribed keeps its flag (retain-as-published), so the
        # core can refuse it; on a non-command topic a live message arrives unretained.
        central.publish(CMD, b"retained live", retain=True)
        central.publish(TRUST, b"newer keyring", retain=True)
        assert rec.next_message() == MessageReceived(CMD, b"retained live", retained=True)
        assert rec.next_message() == MessageReceived(TRUST, b"newer keyring", retained=False)
    assert rec.messages.empty()
    assert all(m.payload != b"stale retained command" for m in rec.all)
    assert link.connected


def test_publish_reaches_the_broker_and_online_state_is_published_on_connect(
    broker: MosquittoBroker, make_link: LinkFactory
) -> None:
    with Subscriber(broker, [STATE, EVENTS]) as central:
        link, _rec = make_link(broker, on_connected_publish=publish_online)
        online = central.wait_for(lambda m: m.topic == STATE)
        assert online.payload == ONLINE

        link.publish(EVENTS, b'{"kind": "accepted"}')
        event = central.wait_for(lambda m: m.topic == EVENTS)
        assert (event.payload, event.retain, event.qos) == (b'{"kind": "accepted"}', False, 1)

    with Subscriber(broker, [STATE]) as late:  # the online state is retained
        retained = late.wait_for(lambda m: m.topic == STATE)
        assert (retained.payload, retained.retain) == (ONLINE, True)


_CHILD = textwrap.dedent(
    """
    import sys, time
    import structlog
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    from receiver.config_model import BrokerConfig, TlsConfig
    from receiver.mqtt_client import MqttLink

    port, device, state = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    link = MqttLink(
        BrokerConfig(host="127.0.0.1", port=port, reconnect_min_s=0.05, reconnect_max_s=0.3),
        device, [], state, b'{"online": false}',
        on_message=lambda message: None,
        on_link=lambda event: print("up" if event.up else "down", flush=True),
        on_connected_publish=lambda: link.publish(state, b'{"online": true}', retain=True),
    )
    link.start()
    time.sleep(60)
    """
)


def test_will_is_published_retained_when_the_process_dies(broker: MosquittoBroker) -> None:
    root = Path(__file__).resolve().parents[2]
    with Subscriber(broker, [STATE]) as central:
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(broker.port), DEVICE, STATE],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert child.stdout is not None
            lines: queue.Queue[str] = queue.Queue()
            read_stream_lines(child.stdout, lines)
            assert lines.get(timeout=TIMEOUT) == "up"
            assert central.wait_for(lambda m: m.topic == STATE).payload == ONLINE
        finally:
            child.kill()  # SIGKILL: no DISCONNECT, the kernel just closes the socket
            child.wait(timeout=TIMEOUT)
            if child.stdout is not None:
                child.stdout.close()
        assert central.wait_for(lambda m: m.topic == STATE).payload == OFFLINE

    with Subscriber(broker, [STATE]) as late:
        will = late.wait_for(lambda m: m.topic == STATE)
        assert (will.payload, will.retain) == (OFFLINE, True)


def test_clean_stop_publishes_the_final_state_and_no_will(
    broker: MosquittoBroker, make_link: LinkFactory
) -> None:
    final = b'{"online": false, "why": "stopped"}'
    with Subscriber(broker, [STATE, EVENTS]) as central:
        link, rec = make_link(broker, on_connected_publish=publish_online)
        assert central.wait_for(lambda m: m.topic == STATE).payload == ONLINE

        link.stop(STATE, final)
        assert not link.connected
        assert rec.links == [True, False]
        assert central.wait_for(lambda m: m.topic == STATE).payload == final
        time.sleep(0.3)  # a will, had one been sent, would come right after the disconnect
        central.publish(EVENTS, b"marker")
        central.wait_for(lambda m: m.topic == EVENTS)
        assert [m.payload for m in central.seen if m.topic == STATE] == [ONLINE, final]

    with Subscriber(broker, [STATE]) as late:
        retained = late.wait_for(lambda m: m.topic == STATE)
        assert (retained.payload, retained.retain) == (final, True)
    link.stop()  # a second stop does nothing


def test_qos1_command_sent_while_stopped_arrives_after_start(
    broker: MosquittoBroker, make_link: LinkFactory
) -> None:
    first, _ = make_link(broker)
    wait_until(lambda: first.connected, what="first link connected")
    first.stop()

    with Subscriber(broker) as central:
        central.publish(CMD, b"sent while the receiver was off", qos=1)
        central.publish(GROUP_CMD, b"group, while off", qos=1)

    second, rec = make_link(broker)  # same client id: the broker kept the session
    assert rec.next_message() == MessageReceived(CMD, b"sent while the receiver was off")
    assert rec.next_message() == MessageReceived(GROUP_CMD, b"group, while off")
    assert second.connected


def test_reconnects_after_a_broker_restart(broker: MosquittoBroker, make_link: LinkFactory) -> None:
    link, rec = make_link(broker)
    wait_until(lambda: link.connected, what="connected")

    broker.stop()
    wait_until(lambda: not link.connected, what="link down")
    # Published while the broker is away: kept by the link and sent after the reconnect.
    link.publish(EVENTS, b"while down", retain=True)
    broker.start()
    wait_until(lambda: rec.links == [True, False, True], what=f"up/down/up, got {rec.links}")
    assert link.last_error is not None

    with Subscriber(broker, [EVENTS]) as central:
        kept = central.wait_for(lambda m: m.topic == EVENTS)
        assert (kept.payload, kept.retain) == (b"while down", True)
        central.publish(CMD, b"after the restart")
    assert rec.next_message() == MessageReceived(CMD, b"after the restart")


def test_accepted_then_kicked_backs_off_instead_of_hammering(
    broker: MosquittoBroker, make_link: LinkFactory
) -> None:
    # Two receivers configured with the same device id: each CONNECT takes the session over and
    # the broker kicks the other one right after accepting it. paho's own reconnect delay would
    # reset on every CONNACK and the pair would fight at the minimum delay forever.
    first, first_rec = make_link(broker, reconnect_max_s=1.0)
    second, second_rec = make_link(broker, reconnect_max_s=1.0)
    time.sleep(3.0)
    connects = first_rec.links.count(True) + second_rec.links.count(True)
    # At the minimum delay (50-100 ms) that would be about 40; with the backoff growing to
    # 1 s it is about 15.
    assert 3 <= connects <= 25, connects
    # Mosquitto 2.0.11 just closes the old connection (no DISCONNECT "Session taken over").
    errors = [first.last_error, second.last_error]
    assert all(e is not None and ("lost" in e or "taken over" in e) for e in errors), errors


def test_keeps_retrying_until_the_broker_appears(
    stopped_broker: MosquittoBroker, make_link: LinkFactory
) -> None:
    link, rec = make_link(stopped_broker)
    wait_until(lambda: link.last_error is not None, what="a connect failure")
    error = link.last_error
    assert error is not None
    assert "unreachable" in error
    assert "refused" in error
    time.sleep(0.5)  # several more attempts with these tiny backoff settings
    assert not link.connected
    assert rec.links == []
    # What `receiver status` tells in words: why (a cause it knows), and how many attempts.
    status = link.status
    assert status["cause"] == "tcp_refused"
    assert status["attempts"] >= 2

    stopped_broker.start()
    wait_subscribed(link, rec)  # once the broker is up
    assert rec.links == [True]
    with Subscriber(stopped_broker) as central:
        central.publish(CMD, b"hello")
    assert rec.next_message() == MessageReceived(CMD, b"hello")


def test_a_server_that_accepts_but_never_answers_is_given_up_on() -> None:
    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept_forever() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(silent.accept()[0])

    threading.Thread(target=accept_forever, daemon=True).start()
    rec = Recorder()
    link = MqttLink(
        BrokerConfig(host="127.0.0.1", port=silent.getsockname()[1], reconnect_min_s=0.05),
        DEVICE,
        SUBSCRIPTIONS,
        STATE,
        OFFLINE,
        on_message=rec.on_message,
        on_link=rec.on_link,
        handshake_timeout_s=0.3,
    )
    try:
        link.start()
        wait_until(lambda: len(accepted) >= 2, what="a second attempt")
        assert link.last_error is not None
        assert "CONNACK not received" in link.last_error
        assert rec.links == []
    finally:
        link.stop()
        with contextlib.suppress(OSError):
            silent.shutdown(socket.SHUT_RDWR)  # wakes accept_forever (close() alone would not)
        silent.close()
        for conn in accepted:
            conn.close()


def test_an_exception_in_the_message_callback_does_not_kill_the_link(
    broker: MosquittoBroker, make_link: LinkFactory
) -> None:
    class Exploding(Recorder):
        def on_message(self, event: MessageReceived) -> None:
            if event.payload == b"boom":
                raise RuntimeError("a bug in the daemon")
            super().on_message(event)

    link, rec = make_link(broker, recorder=Exploding())
    wait_subscribed(link, rec)
    with Subscriber(broker) as central:
        central.publish(CMD, b"boom")
        central.publish(CMD, b"still alive")
    assert rec.next_message() == MessageReceived(CMD, b"still alive")
    assert link.connected


def test_misuse_is_reported(broker: MosquittoBroker, make_link: LinkFactory) -> None:
    link, _ = make_link(broker, start=False)
    with pytest.raises(LinkError):
        link.publish("loa/v1/+/cmd", b"x")
    link.start()
    with pytest.raises(LinkError):
        link.start()


def test_tls_verifies_the_server_and_presents_a_client_certificate(
    tmp_path: Path, make_link: LinkFactory
) -> None:
    ca = TestCa(tmp_path / "pki")
    server = ca.issue("broker", server_hosts=["127.0.0.1", "localhost"])
    device = ca.issue(DEVICE)
    impostor_ca = TestCa(tmp_path / "other", name="someone else")
    config = tls_listener_config(ca, server, require_client_cert=True)
    with MosquittoBroker(tmp_path / "mosquitto", extra_config=config) as tls_broker:
        good, rec = make_link(
            tls_broker,
            tls=TlsConfig(ca_file=ca.cert_file, cert_file=device.cert, key_file=device.key),
        )
        wait_subscribed(good, rec)
        assert rec.links == [True]

        wrong_ca, _ = make_link(
            tls_broker,
            tls=TlsConfig(
                ca_file=impostor_ca.cert_file, cert_file=device.cert, key_file=device.key
            ),
        )
        wait_until(lambda: wrong_ca.last_error is not None, what="a TLS failure")
        assert "TLS verification failed" in (wrong_ca.last_error or "")
        assert not wrong_ca.connected

        bad_file = tmp_path / "missing.crt"
        with pytest.raises(LinkError, match="TLS"):
            make_link(tls_broker, tls=TlsConfig(ca_file=bad_file), start=False)


def test_refused_credentials_are_reported(tmp_path: Path, make_link: LinkFactory) -> None:
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    config = password_config(workdir, {DEVICE: "right password"})
    with MosquittoBroker(workdir, extra_config=config) as auth_broker:
        wrong, _ = make_link(auth_broker, username=DEVICE, password="wrong password")
        anonymous, _ = make_link(auth_broker)
        right, rec = make_link(auth_broker, username=DEVICE, password="right password")
        wait_subscribed(right, rec)  # connected with the right password
        wait_until(lambda: None not in (wrong.last_error, anonymous.last_error), what="refusals")
        for refused in (wrong, anonymous):
            assert refused.last_error is not None
            assert "refused by broker" in refused.last_error
            assert not refused.connected
        assert "bad credentials" in (wrong.last_error or "") or "not authorised" in (
            wrong.last_error or ""
        )
        assert rec.links == [True]
        assert wrong.status["cause"] in ("refused_credentials", "refused_not_authorised")
        assert (right.status["attempts"], right.status["cause"]) == (0, None)


def test_under_acls_the_device_gets_its_commands_and_may_write_only_its_own_topics(
    tmp_path: Path, make_link: LinkFactory
) -> None:
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    acl = workdir / "acl"
    # As docs/operations.md suggests: central writes commands; each device reads its own
    # command topics and writes only its own state and events.
    acl.write_text(
        "user central\ntopic readwrite loa/v1/#\n\n"
        "pattern read loa/v1/dev/%u/cmd\npattern read loa/v1/grp/+/cmd\n"
        "pattern read loa/v1/trust\n"
        "pattern write loa/v1/dev/%u/state\npattern write loa/v1/dev/%u/events\n"
    )
    config = [
        *password_config(workdir, {DEVICE: "device pw", "central": "central pw"}),
        f"acl_file {acl}",
    ]
    with MosquittoBroker(workdir, extra_config=config) as acl_broker:
        link, rec = make_link(acl_broker, username=DEVICE, password="device pw")
        wait_subscribed(link, rec)
        central = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="central", protocol=mqtt.MQTTv5
        )
        central.username_pw_set("central", "central pw")
        central.connect(acl_broker.host, acl_broker.port)
        central.loop_start()
        try:
            central.publish(CMD, b"signed command", qos=1).wait_for_publish(TIMEOUT)
        finally:
            central.disconnect()
            central.loop_stop()
        assert rec.next_message() == MessageReceived(CMD, b"signed command")
        acks: list[str] = []
        link.publish(EVENTS, b"{}", on_ack=lambda: acks.append("own events"))
        other = f"{PREFIX}/dev/dev-other/events"
        link.publish(other, b"{}", on_ack=lambda: acks.append("other device"))
        wait_until(lambda: len(acks) == 2, what="both answered")
        assert "publish refused by broker" in (link.last_error or "")
        assert link.connected


# --- acknowledgements (on_ack), status, Maximum Packet Size ----------------------------------


class Acks:
    """Collects on_ack calls as the daemon's inbox would: label and the calling thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def callback(self, label: str) -> Callable[[], None]:
        def on_ack() -> None:
            with self._lock:
                self.calls.append((label, threading.current_thread().name))

        return on_ack

    @property
    def labels(self) -> list[str]:
        with self._lock:
            return [label for label, _thread in self.calls]


def test_on_ack_fires_from_the_network_thread_when_the_broker_acknowledges(
    broker: MosquittoBroker, make_link: LinkFactory
) -> None:
    acks = Acks()
    with Subscriber(broker, [EVENTS]) as central:
        link, _rec = make_link(broker)
        wait_until(lambda: link.connected, what="connected")
        assert link.publish(EVENTS, b'{"n": 1}', on_ack=acks.callback("n1")) is True
        assert link.publish(EVENTS, b'{"n": 2}') is True  # no callback: nothing to call
        assert link.publish(EVENTS, b'{"n": 3}', on_ack=acks.callback("n3")) is True
        wait_until(lambda: acks.labels == ["n1", "n3"], what=f"two acks, got {acks.calls}")
        assert {thread for _label, thread in acks.calls} == {f"mqtt-{DEVICE}"}
        for n in (1, 2, 3):
            assert central.wait_for(lambda m: m.topic == EVENTS).payload == b'{"n": %d}' % n
    time.sleep(0.2)
    assert acks.labels == ["n1", "n3"]  # once each


def test_on_ack_of_messages_published_while_the_broker_is_down_fires_once_it_is_back(
    broker: MosquittoBroker, make_link: LinkFactory
) -> None:
    acks = Acks()
    link, rec = make_link(broker)
    wait_until(lambda: link.connected, what="connected")
    assert link.status["reconnects"] == 0
    broker.stop()
    wait_until(lambda: not link.connected, what="link down")
    down = link.status
    assert down["up"] is False
    assert down["since"] is not None
    assert down["since"] <= time.monotonic()

    # paho gives each message its mid now, queues it and sends it after the CONNACK with that
    # same mid, so the callbacks registered now match the PUBACKs of the next connection.
    for n in range(3):
        assert link.publish(EVENTS, b"while down %d" % n, on_ack=acks.callback(f"d{n}"))
    time.sleep(0.3)
    assert acks.labels == []
    broker.start()
    wait_until(lambda: acks.labels == ["d0", "d1", "d2"], what=f"acks, got {acks.calls}")
    status = link.status
    assert status["up"] is True
    assert status["reconnects"] == 1
    assert status["since"] is not None
    assert status["since"] > down["since"]
    assert status["last_error"] is not None  # the failure is kept after the recovery
    assert rec.links == [True, False, True]


def test_on_ack_of_a_message_in_flight_when_the_connection_died_fires_after_the_resend(
    broker: MosquittoBroker, make_link: LinkFactory
) -> None:
    acks = Acks()
    link, _rec = make_link(broker)
    wait_until(lambda: link.connected, what="connected")
    process = broker._process  # the test freezes the broker: no public handle for that
    assert process is not None
    process.send_signal(signal.SIGSTOP)  # it reads nothing more, so it acknowledges nothing
    try:
        link.publish(EVENTS, b"in flight", on_ack=acks.callback("in flight"))
        time.sleep(0.3)  # written to the socket by the link's thread, never answered
        assert acks.labels == []
    finally:
        broker.kill()  # a power cut of the broker: the unread PUBLISH is gone with it
    wait_until(lambda: not link.connected, what="link down")
    broker.start()
    wait_until(lambda: acks.labels == ["in flight"], what="the ack after the resend")
    # paho sent it again after the CONNACK, as a duplicate (DUP flag) with its old mid.
    assert "Received PUBLISH from dev-test-01 (d1, q1" in broker.log_tail(200)
    time.sleep(0.2)
    assert acks.labels == ["in flight"]


def test_on_ack_of_a_message_held_during_the_connack_fires(
    broker: MosquittoBroker, make_link: LinkFactory
) -> None:
    # From reconnect() until the CONNACK is processed the link holds messages itself (they get
    # a mid only when handed to paho right after it). on_link(up) runs inside that window.
    acks = Acks()
    holder: list[MqttLink] = []

    class PublishOnConnect(Recorder):
        def on_link(self, event: LinkChanged) -> None:
            super().on_link(event)
            if event.up:
                holder[0].publish(EVENTS, b"held", on_ack=acks.callback("held"))

    with Subscriber(broker, [EVENTS]) as central:
        link, _rec = make_link(broker, recorder=PublishOnConnect(), start=False)
        holder.append(link)
        link.start()
        wait_until(lambda: acks.labels == ["held"], what="the ack of the held message")
        assert central.wait_for(lambda m: m.topic == EVENTS).payload == b"held"


def test_publish_says_when_a_message_is_dropped_and_no_ack_comes_for_it(
    broker: MosquittoBroker, make_link: LinkFactory
) -> None:
    acks = Acks()
    link, _rec = make_link(broker, start=False, link_options={"max_queued": 2})
    assert link.status == {
        "up": False,
        "since": None,
        "last_error": None,
        "reconnects": 0,
        "broker": f"{broker.host}:{broker.port}",
        "attempts": 0,
        "cause": None,
    }
    assert link.publish(EVENTS, b"one", on_ack=acks.callback("one")) is True
    assert link.publish(EVENTS, b"two", on_ack=acks.callback("two")) is True
    assert link.publish(EVENTS, b"three", on_ack=acks.callback("three")) is False  # queue full
    link.start()
    wait_until(lambda: acks.labels == ["one", "two"], what=f"two acks, got {acks.calls}")
    link.stop()
    assert link.publish(EVENTS, b"after stop", on_ack=acks.callback("late")) is False
    time.sleep(0.2)
    assert acks.labels == ["one", "two"]


def test_an_oversized_message_is_dropped_by_the_broker_and_the_link_stays_up(
    tmp_path: Path, make_link: LinkFactory
) -> None:
    # A broker with no size limit of its own: only the receiver's Maximum Packet Size applies.
    with MosquittoBroker(tmp_path / "unlimited", max_packet_size=None) as broker:
        _oversized_is_dropped(broker, make_link)


def _oversized_is_dropped(broker: MosquittoBroker, make_link: LinkFactory) -> None:
    link, rec = make_link(broker)
    wait_subscribed(link, rec)
    largest_command = b"c" * 16384  # the protocol's cap for a whole command (§4)
    with Subscriber(broker) as central:
        central.publish(CMD, largest_command)
        central.publish(CMD, b"x" * 40000)  # over the 32 KiB we announced in CONNECT
        central.publish(CMD, b"marker")
    assert rec.next_message() == MessageReceived(CMD, largest_command)
    assert rec.next_message() == MessageReceived(CMD, b"marker")
    assert "Dropping too large outgoing PUBLISH for dev-test-01" in broker.log_tail(200)
    assert link.connected
    assert rec.links == [True]
    assert link.last_error is None
    assert all(len(m.payload) != 40000 for m in rec.all)


def test_max_packet_size_must_be_an_mqtt_packet_size(broker: MosquittoBroker) -> None:
    for size in (0, 268_435_461):
        with pytest.raises(LinkError, match="max_packet_size"):
            MqttLink(
                broker_config(broker),
                DEVICE,
                SUBSCRIPTIONS,
                STATE,
                OFFLINE,
                on_message=lambda message: None,
                on_link=lambda event: None,
                max_packet_size=size,
            )


# --- certificates out of their validity window ---------------------------------------------


def _window(days_from: int, days_to: int) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return now + dt.timedelta(days=days_from), now + dt.timedelta(days=days_to)


@pytest.mark.parametrize(
    ("window", "why"),
    [
        (_window(-30, -1), "certificate has expired"),
        (_window(1, 30), "certificate is not yet valid"),
    ],
    ids=["expired", "not-yet-valid"],
)
def test_a_server_certificate_outside_its_validity_is_refused_and_said_so(
    tmp_path: Path,
    make_link: LinkFactory,
    window: tuple[dt.datetime, dt.datetime],
    why: str,
) -> None:
    # Signed by the CA the device trusts, for the right host: only the dates are wrong (a broker
    # whose certificate was not renewed, or a device whose clock is far behind).
    ca = TestCa(tmp_path / "pki")
    server = ca.issue("broker", server_hosts=["127.0.0.1", "localhost"], valid=window)
    device = ca.issue(DEVICE)
    config = tls_listener_config(ca, server, require_client_cert=False)
    with MosquittoBroker(tmp_path / "mosquitto", extra_config=config) as tls_broker:
        link, rec = make_link(
            tls_broker,
            tls=TlsConfig(ca_file=ca.cert_file, cert_file=device.cert, key_file=device.key),
        )
        wait_until(lambda: link.last_error is not None, what="a TLS failure")
        time.sleep(0.3)  # several more attempts: none of them gets through
        error = link.last_error or ""
        assert error.startswith("TLS verification failed for 127.0.0.1:"), error
        assert why in error, error
        assert not link.connected
        assert rec.links == []
        assert link.status["up"] is False


def test_an_expired_client_certificate_is_refused_by_the_broker_and_said_so(
    tmp_path: Path, make_link: LinkFactory
) -> None:
    # Mutual TLS with a device certificate that expired yesterday. With TLS 1.3 the client's side
    # of the handshake completes before the broker has checked the client certificate; the
    # broker's refusal (alert "certificate expired") arrives on the first read, after CONNECT.
    ca = TestCa(tmp_path / "pki")
    server = ca.issue("broker", server_hosts=["127.0.0.1", "localhost"])
    expired = ca.issue(DEVICE, valid=_window(-30, -1))
    config = tls_listener_config(ca, server, require_client_cert=True)
    with MosquittoBroker(tmp_path / "mosquitto", extra_config=config) as tls_broker:
        link, rec = make_link(
            tls_broker,
            tls=TlsConfig(ca_file=ca.cert_file, cert_file=expired.cert, key_file=expired.key),
        )
        wait_until(lambda: link.last_error is not None, what="a refused connection")
        time.sleep(0.3)  # several more attempts: none of them gets through
        assert not link.connected
        assert rec.links == []
        assert "certificate verify failed" in tls_broker.log_tail(50)  # the broker refused it
        # What a technician must be told: the device certificate expired, not just "lost".
        error = link.last_error or ""
        assert "certificate" in error, error
        assert "expired" in error, error


def test_a_burst_is_read_without_paho_building_a_message_object_for_each(
    broker: MosquittoBroker, make_link: LinkFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # paho reads a PUBLISH in about 12 µs: it asks for each piece in turn, builds a message and a
    # property object and matches the topic against its callback tree. The link reads the plain
    # ones itself (about 2 µs); those with properties still go through paho, and all arrive, in
    # order, with what paho would have given.
    built: list[threading.Thread] = []  # central's publishes make their own, in its thread
    original = mqtt.MQTTMessage.__init__

    def counting_init(self: mqtt.MQTTMessage, *args: Any, **kwargs: Any) -> None:
        built.append(threading.current_thread())
        original(self, *args, **kwargs)

    link, rec = make_link(broker)
    wait_subscribed(link, rec)
    monkeypatch.setattr(mqtt.MQTTMessage, "__init__", counting_init)
    expiring = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    expiring.MessageExpiryInterval = 600
    with Subscriber(broker) as central:
        for i in range(100):
            central.publish(
                CMD,
                b"burst %d" % i,
                qos=i % 2,
                retain=i % 7 == 0,
                properties=expiring if i % 10 == 0 else None,
            )
    rec.wait_message(lambda m: m.payload == b"burst 99")
    assert [(m.payload, m.qos, m.retained) for m in rec.all] == [
        (b"burst %d" % i, i % 2, i % 7 == 0)  # retain as published, on a command topic
        for i in range(100)
    ]
    assert built.count(link._thread) == 10  # type: ignore[arg-type]  # those with a property


class _StreamSocket:
    """A socket that hands out a byte stream, at most ``step`` bytes a read, then would block;
    with ``stalls``, every other read would block too (the rest has not come yet)."""

    def __init__(self, data: bytes, step: int, stalls: bool = False) -> None:
        self.data, self.at, self.step, self.stalls = data, 0, step, stalls
        self._stalled = False

    def recv(self, size: int) -> bytes:
        self._stalled = self.stalls and not self._stalled
        if self.at >= len(self.data) or self._stalled:
            raise BlockingIOError
        piece = self.data[self.at : self.at + min(size, self.step)]
        self.at += len(piece)
        return piece

    def pending(self) -> int:
        return 0

    def close(self) -> None:
        pass


def _read_as_the_link_does(
    stream: bytes, step: int, *, cut: bool, manual_ack: bool, stalls: bool = False
) -> tuple[list[object], int]:
    """What a client reading ``stream`` hands on, the PUBACKs it sends and how it ends; and how
    many publishes paho read."""
    seen: list[object] = []
    by_paho_count = 0

    class Client(mqtt_client._ChunkedClient):
        def _send_puback(self, mid: int) -> MQTTErrorCode:
            seen.append(("puback", mid))
            return MQTTErrorCode.MQTT_ERR_SUCCESS

    client = Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.manual_ack_set(manual_ack)
    client.enable_logger(mqtt_client._error_logger(lambda line: None))

    def by_paho(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        nonlocal by_paho_count
        by_paho_count += 1
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = "(not UTF-8)"
        seen.append((topic, bytes(message.payload), bool(message.retain), message.mid, message.qos))

    client.on_message = by_paho
    if cut:
        client.deliver_publish = seen.append
    sock = _StreamSocket(stream, step, stalls)
    client._sock = sock  # type: ignore[assignment]
    for _ in range(2 * len(stream) + 4):
        rc = client.loop_read()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            seen.append(("ended", int(rc)))
            break
        if not client.buffered and sock.at >= len(stream):
            break
    client._sock = None
    return seen, by_paho_count


def _random_publish(rng: random.Random) -> bytes:
    """A PUBLISH, mostly well formed, sometimes not in each of the ways a packet can go wrong."""
    topic = rng.choice([CMD.encode(), b"", b"\xff\xfe", "lo\u00e0/v1".encode(), b"t" * 300])
    qos = rng.choice([0, 0, 0, 1, 1, 1, 2, 3])
    mid = rng.choice([0, 1, 7, 65535]).to_bytes(2, "big") if qos else b""
    properties = rng.choice(
        [b"\x00"] * 6 + [b"\x02\x01\x01", b"\x05\x02\x00\x00\x02\x58", b"\x03\x01", b""]
    )
    payload = rng.randbytes(rng.choice([0, 1, 5, 200, 3000]))
    topic_length = len(topic) + rng.choice([0] * 12 + [1, -1, 500])
    body = max(topic_length, 0).to_bytes(2, "big") + topic + mid + properties + payload
    if rng.random() < 0.05:
        body = body[: rng.randrange(len(body) + 1)]
    header = rng.choice([0x30] * 20 + [0x00, 0x20, 0x40]) | qos << 1 | rng.choice([0, 1, 8, 9])
    length = bytearray()
    remaining = len(body)
    while True:
        remaining, digit = divmod(remaining, 128)
        length.append(digit | (0x80 if remaining else 0))
        if not remaining:
            break
    if rng.random() < 0.05:
        length = bytearray(b"\xff\xff\xff\xff\x7f")  # a length of five bytes
    return bytes([header]) + bytes(length) + body


def test_a_reserved_packet_cut_short_leaves_paho_mid_way_and_the_link_out_of_it() -> None:
    # A command byte of 0 (a reserved type) is stored by paho as "no command yet": cut short in
    # its length, paho is mid-way with a command of 0, and the link must not read what follows
    # as a packet of its own.
    plain = bytes([0x30, 9, 0, 3]) + b"a/b" + b"\x00" + b"xy"
    pieces = [b"\x00\x80", None, plain + b"\xd0\x00" + plain, None]
    for manual_ack in (True, False):
        ours = _read_pieces(pieces, cut=True, manual_ack=manual_ack)
        theirs = _read_pieces(pieces, cut=False, manual_ack=manual_ack)
        assert ours == theirs


def _read_pieces(pieces: list[bytes | None], *, cut: bool, manual_ack: bool) -> list[object]:
    """What a client hands on when its socket gives ``pieces`` (None: a read that would block)."""

    class Pieces(_StreamSocket):
        def __init__(self) -> None:
            super().__init__(b"", 1)
            self.left = list(pieces)

        def recv(self, size: int) -> bytes:
            if not self.left:
                return b""  # closed
            piece = self.left.pop(0)
            if piece is None:
                raise BlockingIOError
            if len(piece) > size:
                self.left.insert(0, piece[size:])
            return piece[:size]

    seen: list[object] = []
    client = mqtt_client._ChunkedClient(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5
    )
    client.manual_ack_set(manual_ack)
    client.enable_logger(mqtt_client._error_logger(lambda line: None))
    client.on_message = lambda c, u, m: seen.append((m.topic, bytes(m.payload), m.mid, m.qos))
    if cut:
        client.deliver_publish = lambda p: seen.append((p[0], p[1], p[3], p[4]))
    client._sock = Pieces()  # type: ignore[assignment]
    for _ in range(50):
        rc = client.loop_read()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            seen.append(("ended", int(rc)))
            break
    client._sock = None
    return seen


@pytest.mark.parametrize("manual_ack", [True, False])
def test_publishes_the_link_reads_itself_come_as_paho_reads_them(manual_ack: bool) -> None:
    rng = random.Random(13)  # noqa: S311 - reproducible packets, not a secret
    read_by_paho = delivered = 0
    for _ in range(2000):
        # Random packets after a plain one, the socket's reads ending anywhere.
        first = _random_publish(random.Random(0))  # noqa: S311 - the same plain packet each time
        stream = b"".join([first, _random_publish(rng), _random_publish(rng)])
        step = rng.choice([1, 3, 40, 1000, 65536])
        stalls = rng.random() < 0.3
        ours, by_paho = _read_as_the_link_does(
            stream, step, cut=True, manual_ack=manual_ack, stalls=stalls
        )
        theirs, _ = _read_as_the_link_does(
            stream, step, cut=False, manual_ack=manual_ack, stalls=stalls
        )
        assert ours == theirs, (stream[:80], step, stalls)
        if step == 65536 and not stalls:  # whole packets in hand: the link reads them itself
            read_by_paho += by_paho
            delivered += len([item for item in theirs if len(item) == 5])  # type: ignore[arg-type]
    assert read_by_paho < delivered / 2
