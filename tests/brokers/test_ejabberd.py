"""The receiver's link on a two-node ejabberd cluster (Debian's 23.01, ``mod_mqtt``).

What the receiver needs of a cluster, shown here: commands and persistent sessions cross the
nodes; a receiver fails over from a dead node to the other one and still gets what was queued;
and a retained trust document reaches a receiver on either node when ``receiver-admin`` publishes
it on every node (``--node``), which ejabberd needs because each node keeps its own retained list.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from receiver.central import admin
from receiver.central.signing import SigningKey, key_entry
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
    wait_until,
)
from tests.brokers.ejabberd import EjabberdCluster, EjabberdNode

TIMEOUT = 15.0
PASSWORD = "device-secret"
CENTRAL_PASSWORD = "central-secret"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EjabberdCluster]:
    running = EjabberdCluster(
        tmp_path / "ejabberd", {DEVICE: PASSWORD, "central": CENTRAL_PASSWORD}
    )
    try:
        running.start()
        yield running
    finally:
        running.stop()


def device_link(first: EjabberdNode, *others: EjabberdNode) -> tuple[MqttLink, Recorder]:
    rec = Recorder()
    config = BrokerConfig(
        host=first.host,
        port=first.port,
        username=DEVICE,
        password=PASSWORD,
        keepalive_s=5,
        reconnect_min_s=0.05,
        reconnect_max_s=0.3,
        failover=tuple((node.host, node.port) for node in others),
    )
    link = MqttLink(config, DEVICE, SUBSCRIPTIONS, STATE, OFFLINE, rec.on_message, rec.on_link)
    return link, rec


def central_publish(node: EjabberdNode, topic: str, payload: bytes, retain: bool = False) -> None:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set("central", CENTRAL_PASSWORD)
    client.connect(node.host, node.port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)
        assert info.is_published(), f"{node.name} did not acknowledge the publish"
    finally:
        client.disconnect()
        client.loop_stop()


def test_commands_and_the_session_cross_the_nodes_and_the_link_fails_over(
    cluster: EjabberdCluster,
) -> None:
    first, second = cluster.nodes
    link, rec = device_link(first, second)
    link.start()
    try:
        wait_until(lambda: link.connected, TIMEOUT, "connected to the first node")
        time.sleep(0.5)
        central_publish(second, CMD, b"published-on-the-other-node")
        assert rec.wait_message(lambda m: m.payload == b"published-on-the-other-node").qos == 1

        link.stop()  # the device goes away; its session stays in the cluster
        central_publish(second, CMD, b"queued-while-away")
        link, rec = device_link(second)
        link.start()
        wait_until(lambda: link.connected, TIMEOUT, "connected to the second node")
        assert rec.wait_message(lambda m: m.payload == b"queued-while-away").topic == CMD
        link.stop()

        link, rec = device_link(first, second)
        link.start()
        wait_until(lambda: link.connected and link.broker.endswith(f":{first.port}"), TIMEOUT)
        first.kill()
        wait_until(
            lambda: link.connected and link.broker.endswith(f":{second.port}"),
            TIMEOUT,
            "moved to the second node",
        )
        time.sleep(0.5)
        central_publish(second, CMD, b"after-the-failover")
        assert rec.wait_message(lambda m: m.payload == b"after-the-failover").topic == CMD
    finally:
        link.stop()


def test_a_retained_trust_document_reaches_either_node_when_published_on_every_node(
    cluster: EjabberdCluster, tmp_path: Path
) -> None:
    first, second = cluster.nodes
    roots = [SigningKey.generate(f"root-{i}") for i in (1, 2)]
    paths = []
    for root in roots:
        path = tmp_path / f"{root.id}.pem"
        root.save(path)
        paths.append(path)
    keyring = tmp_path / "keyring.json"
    keyring.write_text(json.dumps([key_entry(root, ["root"]) for root in roots]), "utf-8")
    password = tmp_path / "central-password"
    password.write_text(CENTRAL_PASSWORD + "\n", encoding="utf-8")
    base = [
        "trust", "--keys", str(keyring), "--env", "lab",
        "--key", str(paths[0]), "--key", str(paths[1]),
        "--host", first.host, "--port", str(first.port),
        "--username", "central", "--password-file", str(password),
    ]  # fmt: skip

    # The trap: published on the first node only, it is missing on the second.
    assert admin.main([*base, "--version", "1"]) == 0
    link, rec = device_link(second)
    link.start()
    try:
        wait_until(lambda: link.connected, TIMEOUT)
        time.sleep(1.0)
        assert [m for m in rec.all if m.topic == TRUST] == []
    finally:
        link.stop()

    assert admin.main([*base, "--version", "2", "--node", f"{second.host}:{second.port}"]) == 0
    for node in (first, second):  # a receiver subscribing afresh on either node gets it
        retained = retained_on(node, TRUST)
        body = json.loads(base64.b64decode(json.loads(retained)["payload"]))
        assert body["version"] == 2, node.name


def retained_on(node: EjabberdNode, topic: str) -> bytes:
    """The retained message a new subscriber (a clean session of its own) gets on ``topic``."""
    got: list[mqtt.MQTTMessage] = []
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        protocol=mqtt.MQTTv5,
        client_id=f"fresh-{uuid.uuid4().hex[:8]}",
    )
    client.username_pw_set("central", CENTRAL_PASSWORD)
    client.on_message = lambda _c, _u, message: got.append(message)
    client.connect(node.host, node.port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    try:
        wait_until(lambda: bool(got), TIMEOUT, f"the retained {topic} on {node.name}")
    finally:
        client.disconnect()
        client.loop_stop()
    assert got[0].retain
    return bytes(got[0].payload)
