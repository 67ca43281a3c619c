"""The broker connection over a 4G link that dies silently, and over one that flaps.

A NAT that forgets the mapping, or a cell that goes dark, drops every packet and sends no RST:
the TCP connection looks open on both ends. The receiver must notice within 1.5 x its keepalive
(docs/operations.md, "The 4G link"), reconnect when the link is back, and act on every command
exactly once, also those the broker tried to deliver into the dead connection.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from tests.lab.broker import Subscriber
from tests.link.conftest import KEEPALIVE_S, Field, events, wait_event, wait_online
from tests.link.netns import FLAPPING, RURAL_4G, SILENT

DUPLICATE = "duplicate of the last accepted"


def acted_on(central: Subscriber) -> Counter[str]:
    """How often central saw each command accepted for the first time (not as a duplicate)."""
    return Counter(
        str(e.get("ref"))
        for e in events(central)
        if e["kind"] == "accepted" and e.get("detail") != DUPLICATE
    )


def wait_log_after(daemon: Any, event: str, count: int, timeout: float) -> float:
    """Block until the daemon has logged ``event`` ``count`` times; the monotonic time then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(daemon.logged(event)) >= count:
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(
        f"no {event} within {timeout} s; the daemon said:\n" + "".join(daemon.raw[-30:])
    )


def test_silent_death_is_noticed_within_one_and_a_half_keepalives_and_no_command_is_lost_or_doubled(
    fieldsite: Field, central: Subscriber
) -> None:
    fieldsite.link.set_profile(RURAL_4G)
    daemon = fieldsite.start_daemon()
    wait_online(central)
    central.publish(fieldsite.cmd_topic, fieldsite.command("report", {}, "before"))
    wait_event(central, "accepted", "before")
    lost_before = len(daemon.logged("mqtt_link_lost"))

    # Right after traffic both ways (the worst moment for a keepalive that counts from the
    # last packet): the link goes dark. Central keeps sending; the broker still believes the
    # old connection and writes the commands into it.
    died = time.monotonic()
    fieldsite.link.set_profile(SILENT)
    for n in range(3):
        central.publish(fieldsite.cmd_topic, fieldsite.command("report", {}, f"dark-{n}"))
    noticed = wait_log_after(daemon, "mqtt_link_lost", lost_before + 1, timeout=4 * KEEPALIVE_S)
    detection_s = noticed - died
    print(f"silent death noticed after {detection_s:.1f} s (keepalive {KEEPALIVE_S} s)")
    assert detection_s <= 1.5 * KEEPALIVE_S, (
        f"a silently dead link took {detection_s:.1f} s to notice; "
        f"at most {1.5 * KEEPALIVE_S:g} s (1.5 x keepalive) is allowed"
    )
    assert daemon.process is not None and daemon.process.poll() is None

    fieldsite.link.set_profile(RURAL_4G)
    for n in range(3):
        wait_event(central, "accepted", f"dark-{n}", timeout=60)
    central.publish(fieldsite.cmd_topic, fieldsite.command("report", {}, "after"))
    wait_event(central, "accepted", "after")
    time.sleep(2)  # room for any late copy to show up
    assert acted_on(central) == {"before": 1, "dark-0": 1, "dark-1": 1, "dark-2": 1, "after": 1}
    firsts = Counter(
        line.get("ref") for line in daemon.logged("accepted") if line.get("detail") != DUPLICATE
    )
    assert all(count == 1 for count in firsts.values()), firsts
    assert daemon.stop() == 0


@pytest.mark.parametrize("rounds", [8])
def test_every_command_over_a_flapping_link_is_acted_on_once(
    fieldsite: Field, central: Subscriber, rounds: int
) -> None:
    daemon = fieldsite.start_daemon()
    wait_online(central)
    fieldsite.link.set_profile(FLAPPING)
    for n in range(rounds):
        central.publish(fieldsite.cmd_topic, fieldsite.command("report", {}, f"flap-{n}"))
        time.sleep(2.5)  # spread over the up and down halves of the cycles
    fieldsite.link.set_profile(RURAL_4G)
    for n in range(rounds):
        wait_event(central, "accepted", f"flap-{n}", timeout=90)
    time.sleep(2)
    assert acted_on(central) == {f"flap-{n}": 1 for n in range(rounds)}
    stats = fieldsite.link.stats()
    print(f"flapping link: dropped {stats['up']['dropped']} up, {stats['down']['dropped']} down")
    assert stats["up"]["dropped"] > 0 and stats["down"]["dropped"] > 0  # the link did flap
    assert daemon.stop() == 0
