"""Failover end to end: the real daemon between two real Mosquittos, the preferred one and a
standby that the province's bridge feeds with the same commands.

What must hold: the daemon moves to the standby when the first dies and back when it returns;
a command published while it is on either broker is acted on; a command the bridge delivered
to both brokers (so queued in the session the daemon left on the standby) is acted on once,
its second copy refused when the daemon next visits the standby.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from receiver.central.signing import sign_command
from tests.e2e.conftest import Site
from tests.e2e.test_daemon import play_payload
from tests.lab.broker import MosquittoBroker, Received, Subscriber
from tests.lab.daemon import DEVICE, Daemon

TIMEOUT = 20.0
DUPLICATE = "duplicate of the last accepted"


@pytest.fixture
def standby(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "standby") as broker:
        yield broker


def _event(message: Received) -> dict[str, Any]:
    return dict(json.loads(message.payload))


def test_commands_survive_failover_and_failback_and_none_is_acted_on_twice(
    site: Site, standby: MosquittoBroker, start_daemon: Callable[[], Daemon]
) -> None:
    first = site.broker
    text = site.config.read_text(encoding="utf-8")
    site.config.write_text(
        text.replace(
            "  reconnect_min_s: 0.2\n",
            f"  reconnect_min_s: 0.2\n  failover: ['127.0.0.1:{standby.port}']\n  failback_s: 5\n",
        ),
        encoding="utf-8",
    )
    topics = [site.events_topic, site.state_topic]
    at_first = Subscriber(first, topics, persistent=True, client_id="central-first").start()
    seen_at_first: list[Received] = []
    with Subscriber(standby, topics, persistent=True, client_id="central-standby") as at_standby:

        def subacks(broker: MosquittoBroker) -> int:
            """How many subscriptions of the daemon's the broker has acknowledged (its log)."""
            try:
                log = broker.log_file.read_text(errors="replace")
            except FileNotFoundError:
                return 0
            return log.count(f"Sending SUBACK to {DEVICE}")

        def on(broker: MosquittoBroker, subscribed_before: int) -> Callable[[], bool]:
            def connected() -> bool:
                # Connected is not enough: a command published before the daemon's subscription
                # is acknowledged is lost with the session the broker did not keep.
                return subacks(broker) > subscribed_before and any(
                    line.get("event") == "mqtt_connected"
                    and line.get("broker") == f"127.0.0.1:{broker.port}"
                    for line in daemon.lines[mark:]
                )

            return connected

        def wait(condition: Callable[[], bool], what: str) -> None:
            try:
                daemon.wait_log(lambda _: condition(), TIMEOUT)
            except AssertionError as exc:
                raise AssertionError(f"{what}: {exc}") from None

        def bridge(payload: bytes) -> None:
            """What the province's bridge does: the command reaches both district brokers."""
            for central in (at_first, at_standby):
                if central.broker.running:
                    central.publish(site.cmd_topic, payload)

        mark = 0
        daemon = start_daemon()
        wait(on(first, 0), "on the first broker")

        mark, before = len(daemon.lines), subacks(standby)
        first.kill()
        wait(on(standby, before), "moved to the standby")
        while_down = sign_command(
            play_payload(site, "tone440.wav", message_id="while-first-down"), [site.operator]
        )
        bridge(while_down)
        at_standby.wait_for(
            lambda m: m.topic == site.events_topic and _event(m).get("kind") == "started",
            TIMEOUT,
        )

        mark, before = len(daemon.lines), subacks(first)
        first.start()
        at_first.close()  # its connection died with the broker: a fresh one
        seen_at_first += at_first.seen
        at_first = Subscriber(first, topics, persistent=True, client_id="central-first").start()
        wait(on(first, before), "moved back to the first")
        both = sign_command(
            play_payload(site, "tone1000.wav", message_id="on-both"), [site.operator]
        )
        bridge(both)  # the standby queues its copy in the session the daemon left there
        at_first.wait_for(
            lambda m: (
                m.topic == site.events_topic
                and _event(m).get("kind") == "finished"
                and _event(m).get("ref") == "on-both"
            ),
            TIMEOUT,
        )

        mark, before = len(daemon.lines), subacks(standby)
        first.kill()
        wait(on(standby, before), "on the standby again")
        at_standby.wait_for(
            lambda m: (
                m.topic == site.events_topic
                and _event(m).get("ref") == "on-both"
                and _event(m).get("detail") == DUPLICATE
            ),
            TIMEOUT,
        )
        at_first.close()
        seen_at_first += at_first.seen

    events = [_event(m) for m in at_standby.seen + seen_at_first if m.topic == site.events_topic]
    accepted = [
        str(e.get("ref"))
        for e in events
        if e.get("kind") == "accepted" and e.get("detail") == "play"
    ]
    assert sorted(accepted) == ["on-both", "while-first-down"], events
    started = [e.get("ref") for e in events if e.get("kind") == "started"]
    assert started.count("on-both") == 1, events
    assert started.count("while-first-down") == 1, events
    copies = [e for e in events if e.get("ref") == "on-both" and e.get("detail") == DUPLICATE]
    assert len(copies) == 1, events
