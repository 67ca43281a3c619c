"""The province and district Mosquittos of config/brokers/, bridged, with the receiver's own link.

The repository's files are used as they are, except for what only a deployment knows (addresses,
certificates, passwords, where data lives), which tests/lab/broker.py writes for a loopback test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from receiver.central import admin
from receiver.config_model import BrokerConfig
from receiver.mqtt_client import MqttLink
from tests.adapters.test_mqtt_client import (
    CMD,
    DEVICE,
    OFFLINE,
    STATE,
    SUBSCRIPTIONS,
    TRUST,
    Recorder,
    wait_subscribed,
    wait_until,
)
from tests.brokers.bridge import BRIDGE, loopback, settings
from tests.lab.broker import MosquittoBroker, Subscriber

TIMEOUT = 15.0


def test_every_hop_has_the_settings_the_receivers_need() -> None:
    for name in ("province.conf", "district.conf"):
        lines = settings(name)
        for required in ("max_packet_size 32768", "set_tcp_nodelay true", "persistence true"):
            assert required in lines, (name, required)
    province = settings("province.conf")
    for required in (
        "bridge_protocol_version mqttv50",
        "cleansession false",
        "notifications true",
        f"remote_clientid {BRIDGE}",
        "topic loa/v1/dev/+/cmd out 1",
        "topic loa/v1/trust out 1",
        "topic loa/v1/dev/+/state in 1",
        "topic loa/v1/dev/+/events in 1",
    ):
        assert required in province, required


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[tuple[MosquittoBroker, MosquittoBroker]]:
    # The packet size and queue limits come from the repository's files alone.
    district = MosquittoBroker(
        tmp_path / "district",
        extra_config=loopback("district.conf"),
        max_packet_size=None,
        max_queued_messages=None,
    )
    district.start()
    province = MosquittoBroker(
        tmp_path / "province",
        extra_config=loopback("province.conf", district.port),
        max_packet_size=None,
        max_queued_messages=None,
    )
    province.start()
    try:
        wait_until(lambda: bridge_state(province) == b"1", TIMEOUT, "the bridge is up")
        yield province, district
    finally:
        province.stop()
        district.stop()


def bridge_state(province: MosquittoBroker) -> bytes | None:
    with Subscriber(province, [f"$SYS/broker/connection/{BRIDGE}/state"]) as sub:
        try:
            return sub.wait_for(lambda m: True, 1.0).payload
        except AssertionError:
            return None


def device_link(district: MosquittoBroker) -> tuple[MqttLink, Recorder]:
    rec = Recorder()
    config = BrokerConfig(
        host=district.host,
        port=district.port,
        keepalive_s=5,
        reconnect_min_s=0.05,
        reconnect_max_s=0.3,
    )
    link = MqttLink(
        config, DEVICE, SUBSCRIPTIONS, STATE, OFFLINE, rec.on_message, rec.on_link,
        on_connected_publish=rec.subscribed.set,  # once the SUBACK is in
    )  # fmt: skip
    return link, rec


def publish_retained_with_expiry(broker: MosquittoBroker, topic: str, payload: bytes) -> None:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.MessageExpiryInterval = 600
        info = client.publish(topic, payload, qos=1, retain=True, properties=properties)
        info.wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def expiry_seen_at(broker: MosquittoBroker, topic: str) -> tuple[int | None, bool]:
    """(Message Expiry Interval, retain flag) of the retained message on ``topic``."""
    got: list[tuple[int | None, bool]] = []
    done = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        expiry = getattr(message.properties, "MessageExpiryInterval", None)
        got.append((expiry, bool(message.retain)))
        done.set()

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    try:
        assert done.wait(5), f"nothing retained on {topic}"
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


def cut_off_for_publishing(broker: MosquittoBroker, topic: str, payload: bytes) -> bool:
    """Publish ``payload`` (QoS 1) from a new client; whether ``broker`` then cut that client off,
    as Mosquitto does for a packet over its ``max_packet_size``, within a few seconds.

    The client's network loop runs here, not in paho's thread: that thread, cut off, sleeps a
    whole second before it would reconnect, and stopping it waits for that sleep."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    try:
        client.publish(topic, payload, qos=1)  # sent once the CONNACK is in
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                return True
        return False
    finally:
        client.disconnect()


def test_commands_go_down_and_reports_come_up_with_qos_retain_and_expiry_kept(
    chain: tuple[MosquittoBroker, MosquittoBroker],
) -> None:
    province, district = chain
    link, rec = device_link(district)
    link.start()
    try:
        wait_subscribed(link, rec)
        publish_retained_with_expiry(province, TRUST, b"trust-document")
        with Subscriber(province, [STATE]) as central:
            central.publish(CMD, b"command-from-the-province")
            message = rec.wait_message(lambda m: m.payload == b"command-from-the-province")
            assert message.topic == CMD and message.qos == 1
            assert [m.payload for m in rec.all if m.topic == TRUST] == [b"trust-document"]
            link.publish(STATE, b'{"online": true}', retain=True)
            up = central.wait_for(lambda m: m.topic == STATE, TIMEOUT)
            assert up.payload == b'{"online": true}'
        expiry, retained = expiry_seen_at(district, TRUST)
        assert retained and expiry is not None and 0 < expiry <= 600
    finally:
        link.stop()


def test_oversized_messages_are_refused_at_the_province_and_the_next_command_arrives(
    chain: tuple[MosquittoBroker, MosquittoBroker],
) -> None:
    """Without max_packet_size on every hop, 20 oversized messages strand the next command."""
    province, district = chain
    link, rec = device_link(district)
    link.start()
    try:
        wait_subscribed(link, rec)
        for attempt in range(25):
            assert cut_off_for_publishing(province, CMD, b"x" * 40_000), attempt
        with Subscriber(province) as central:
            central.publish(CMD, b"the-real-command")
        assert rec.wait_message(lambda m: m.payload == b"the-real-command").qos == 1
        assert all(len(m.payload) < 32768 for m in rec.all)
    finally:
        link.stop()


def test_fleet_marks_the_devices_behind_a_district_that_is_down(
    chain: tuple[MosquittoBroker, MosquittoBroker],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    province, district = chain
    with Subscriber(district) as device:
        for name in (DEVICE, "dev-elsewhere"):
            state = b'{"device": "%s", "online": true, "state": "idle"}' % name.encode()
            topic = f"loa/v1/dev/{name}/state"
            (device if name == DEVICE else Subscriber(province).start()).publish(
                topic, state, retain=True
            )
    bridges = tmp_path / "bridges.txt"
    bridges.write_text(f"# district a\n{BRIDGE}  dev-test-*\n", encoding="utf-8")
    args = ["fleet", "--host", province.host, "--port", str(province.port), "--timeout", "1"]

    assert admin.main([*args, "--bridges", str(bridges)]) == 0
    assert "DOWN" not in capsys.readouterr().out

    district.stop()
    wait_until(lambda: bridge_state(province) == b"0", TIMEOUT, "the bridge is down")
    assert admin.main([*args, "--bridges", str(bridges)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert any(row.startswith(f"{DEVICE} [BRIDGE {BRIDGE} DOWN]") for row in rows), rows
    assert any(row.startswith("dev-elsewhere ") for row in rows), rows


def test_fleet_names_what_in_the_bridges_file_marks_nothing(
    chain: tuple[MosquittoBroker, MosquittoBroker],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A second line with its columns swapped (no wildcard to give it away): the bridge it
    names never reports, and the real bridge's name matches no device. Said on stderr; the
    table on stdout is unchanged."""
    province, district = chain
    with Subscriber(district) as device:
        state = b'{"device": "%s", "online": true, "state": "idle"}' % DEVICE.encode()
        device.publish(f"loa/v1/dev/{DEVICE}/state", state, retain=True)
    wait_until(lambda: bridge_state(province) == b"1", TIMEOUT, "the bridge is up")
    bridges = tmp_path / "bridges.txt"
    bridges.write_text(f"{BRIDGE}  dev-test-*\n{DEVICE}  {BRIDGE}\n", encoding="utf-8")
    args = ["fleet", "--host", province.host, "--port", str(province.port), "--timeout", "1"]

    assert admin.main([*args, "--bridges", str(bridges)]) == 0
    out, err = capsys.readouterr()
    assert any(row.startswith(f"{DEVICE} ") for row in out.splitlines()), out
    assert f"bridge {DEVICE} has reported no state on this broker" in err
    assert f"pattern {BRIDGE} (bridge {DEVICE}) matches no device" in err
    assert f"bridge {BRIDGE} " not in err and "Traceback" not in err
