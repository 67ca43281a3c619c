"""Broker failover and reconnect shaping, against two real Mosquittos (tests/lab/broker.py).

The first is the preferred broker (``broker.host``), the second a standby (``broker.failover``):
a cluster's other node or the district's standby broker, both fed the same commands by the
province's bridge.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver.config_model import BrokerConfig
from receiver.mqtt_client import MqttLink, backoff_delay, next_address
from tests.adapters.test_mqtt_client import (
    CMD,
    DEVICE,
    OFFLINE,
    STATE,
    SUBSCRIPTIONS,
    Recorder,
    wait_until,
)
from tests.lab.broker import MosquittoBroker, Subscriber

TIMEOUT = 10.0


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[MosquittoBroker, MosquittoBroker]]:
    first = MosquittoBroker(tmp_path / "first")
    standby = MosquittoBroker(tmp_path / "standby")
    first.start()
    standby.start()
    try:
        yield first, standby
    finally:
        first.stop()
        standby.stop()


class FailoverRecorder(Recorder):
    """Also the broker of each session once it holds the link's subscriptions (after the
    SUBACK): ``link.connected`` is true from the CONNACK, before the SUBSCRIBE has left, and a
    command published then would not be delivered."""

    def __init__(self) -> None:
        super().__init__()
        self.ready_on: list[str] = []


def make_link(
    first: MosquittoBroker,
    standby: MosquittoBroker,
    *,
    failback_s: float = 300.0,
    manual_ack: bool = False,
) -> tuple[MqttLink, FailoverRecorder]:
    rec = FailoverRecorder()
    config = BrokerConfig(
        host=first.host,
        port=first.port,
        keepalive_s=5,
        reconnect_min_s=0.05,
        reconnect_max_s=0.3,
        failover=((standby.host, standby.port),),
        failback_s=failback_s,
    )
    link = MqttLink(
        config,
        DEVICE,
        SUBSCRIPTIONS,
        STATE,
        OFFLINE,
        on_message=rec.on_message,
        on_link=rec.on_link,
        manual_ack=manual_ack,
        on_connected_publish=lambda: rec.ready_on.append(link.broker),
    )
    return link, rec


def wait_subscribed_on(link: MqttLink, rec: FailoverRecorder, broker: MosquittoBroker) -> None:
    """Until the link's latest session, on ``broker``, holds its subscriptions."""
    wait_until(
        lambda: link.connected and rec.ready_on[-1:] == [address(broker)],
        TIMEOUT,
        f"subscribed on {address(broker)}",
    )


def address(broker: MosquittoBroker) -> str:
    return f"{broker.host}:{broker.port}"


def test_moves_to_the_standby_when_the_first_broker_dies_and_back_when_it_returns(
    pair: tuple[MosquittoBroker, MosquittoBroker],
) -> None:
    first, standby = pair
    link, rec = make_link(first, standby, failback_s=1.0)
    link.start()
    try:
        wait_until(lambda: link.connected, TIMEOUT, "connected to the first broker")
        assert link.broker == address(first)

        first.kill()
        wait_until(
            lambda: link.connected and link.broker == address(standby), TIMEOUT, "on the standby"
        )
        assert link.status["broker"] == address(standby)  # reported in the device's state
        wait_subscribed_on(link, rec, standby)
        with Subscriber(standby) as central:
            central.publish(CMD, b"while-the-first-is-down")
        assert rec.wait_message(lambda m: m.payload == b"while-the-first-is-down").topic == CMD

        first.start()
        wait_until(
            lambda: link.connected and link.broker == address(first), TIMEOUT, "back on the first"
        )
        wait_subscribed_on(link, rec, first)
        with Subscriber(first) as central:
            central.publish(CMD, b"after-the-return")
        assert rec.wait_message(lambda m: m.payload == b"after-the-return").topic == CMD
    finally:
        link.stop()


def test_leaving_the_standby_for_the_first_broker_publishes_no_will(
    pair: tuple[MosquittoBroker, MosquittoBroker],
) -> None:
    """The move back is a clean disconnect: the standby must not announce the device offline."""
    first, standby = pair
    first.stop()
    link, _rec = make_link(first, standby, failback_s=1.0)
    link.start()
    try:
        wait_until(lambda: link.broker == address(standby) and link.connected, TIMEOUT)
        with Subscriber(standby, [STATE]) as watcher:
            first.start()
            wait_until(lambda: link.broker == address(first) and link.connected, TIMEOUT)
            time.sleep(0.5)
            assert [m.payload for m in watcher.seen if m.payload == OFFLINE] == []
    finally:
        link.stop()


def test_a_dead_first_broker_at_start_costs_one_short_wait(
    pair: tuple[MosquittoBroker, MosquittoBroker],
) -> None:
    first, standby = pair
    first.stop()
    link, _rec = make_link(first, standby)
    link.start()
    try:
        wait_until(lambda: link.connected, TIMEOUT, "connected to the standby")
        assert link.broker == address(standby)
        assert link.last_error is not None and "connection refused" in link.last_error
    finally:
        link.stop()


def test_an_acknowledgement_never_reaches_another_broker(
    pair: tuple[MosquittoBroker, MosquittoBroker],
) -> None:
    """Both brokers number their first message to us 1. Acknowledging the first broker's
    command late, once on the standby, must not acknowledge the standby's command: that one
    would then never be sent again, and a crash before it is handled would lose it."""
    first, standby = pair
    link, rec = make_link(first, standby, manual_ack=True)
    link.start()
    try:
        wait_subscribed_on(link, rec, first)
        with Subscriber(first) as central:
            central.publish(CMD, b"from-the-first")
        from_first = rec.wait_message(lambda m: m.payload == b"from-the-first")

        first.kill()
        wait_subscribed_on(link, rec, standby)
        with Subscriber(standby) as central:
            central.publish(CMD, b"from-the-standby")
        from_standby = rec.wait_message(lambda m: m.payload == b"from-the-standby")
        assert from_first.mid == from_standby.mid  # the collision the rule is for

        link.ack(from_first)  # handled late: its broker is gone
        time.sleep(0.5)
        standby.restart()  # the link reconnects to the standby (the first is still down)
        again = rec.wait_message(lambda m: m.payload == b"from-the-standby", TIMEOUT)
        link.ack(again)
        assert again.mid == from_standby.mid
    finally:
        link.stop()


def test_after_a_link_that_held_the_first_retry_is_spread_below_the_minimum() -> None:
    rng = random.Random(11)  # noqa: S311 - test determinism
    first_retries = [backoff_delay(0, 1.0, 120.0, rng) for _ in range(1000)]
    assert all(0.0 <= d <= 1.0 for d in first_retries)
    # A fleet that lost its broker at one instant comes back spread over the whole second.
    buckets = [0] * 10
    for delay in first_retries:
        buckets[min(9, int(delay * 10))] += 1
    assert min(buckets) > 60, buckets


def test_backoff_grows_per_round_with_jitter_and_stays_within_bounds() -> None:
    rng = random.Random(7)  # noqa: S311 - test determinism
    for rounds in range(1, 40):
        delays = [backoff_delay(rounds, 1.0, 120.0, rng) for _ in range(200)]
        cap = min(120.0, 2.0**rounds)
        assert all(1.0 <= d <= cap for d in delays)
        if rounds >= 2:
            assert max(delays) - min(delays) > 0.3 * (cap - 1.0)  # spread, not a fixed step


def test_next_address_stays_after_a_drop_and_moves_on_after_a_failure() -> None:
    assert next_address(0, 1, was_up=False) == 0
    assert next_address(0, 3, was_up=True) == 0
    assert next_address(0, 3, was_up=False) == 1
    assert next_address(2, 3, was_up=False) == 0
