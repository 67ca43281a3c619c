"""``fleet`` at province size: 1,000 retained states on a real Mosquitto, filtered and sorted."""

from __future__ import annotations

import time

import pytest

from receiver.central.admin import main
from tests.central.conftest import Secured, Spy, device_state

COUNT = 1000


def publish_province(secured: Secured) -> None:
    """1,000 devices in 10 groups; every 10th offline, every 25th with a fault, ..."""
    now = time.time()
    with Spy(secured, "nothing/at/all") as spy:
        for i in range(COUNT):
            device = f"loa-{i:04d}"
            if i % 10 == 9:
                spy.publish(
                    f"loa/v1/dev/{device}/state",
                    f'{{"device": "{device}", "online": false}}'.encode(),
                )
                continue
            spy.publish(
                f"loa/v1/dev/{device}/state",
                device_state(
                    device,
                    now - (3600 if i % 100 == 50 else i % 60),
                    groups=[f"commune-{i % 10}"],
                    trust_version=3 if i % 7 else 2,
                    cache={"bytes": 100, "files": 2, "missing": 1 if i % 13 == 0 else 0},
                    outbox={"pending": i % 17 if i % 17 > 14 else 0, "dropped": 0},
                    **({"faults": ["amp"]} if i % 25 == 0 else {}),
                ),
            )


@pytest.fixture
def province(secured: Secured) -> Secured:
    publish_province(secured)
    return secured


def fleet(province: Secured, capsys: pytest.CaptureFixture[str], *flags: str) -> list[str]:
    assert main(["fleet", "--timeout", "3", *flags, *province.login()]) == 0
    return capsys.readouterr().out.splitlines()


def devices(lines: list[str]) -> list[str]:
    return [line.split()[0] for line in lines if line.startswith("loa-")]


def test_a_thousand_devices_filtered_sorted_and_summed_up(
    province: Secured, capsys: pytest.CaptureFixture[str]
) -> None:
    every = fleet(province, capsys)
    assert len(devices(every)) == COUNT
    online = [i for i in range(COUNT) if i % 10 != 9]
    stale_clock = [i for i in online if i % 100 == 50]  # an hour silent: not reachable
    reachable = len(online) - len(stale_clock)
    faults = [i for i in online if i % 25 == 0]
    below = [i for i in online if i % 7 == 0]
    missing = [i for i in online if i % 13 == 0]
    pending = [i for i in online if i % 17 > 14]
    assert every[-1] == (
        f"{COUNT} devices: {reachable} online, {COUNT - reachable} offline or unknown, 0 playing, "
        f"{len(faults)} failing, {len(below)} below trust 3, {len(missing)} missing media, "
        f"{len(pending)} with pending events"
    )

    group = fleet(province, capsys, "--group", "commune-3")
    assert devices(group) == [f"loa-{i:04d}" for i in online if i % 10 == 3]
    assert group[-1].endswith(f"({len(devices(group))} shown)")

    offline = fleet(province, capsys, "--offline")
    expected = sorted([i for i in range(COUNT) if i % 10 == 9] + stale_clock)
    assert devices(offline) == [f"loa-{i:04d}" for i in expected]

    failing = fleet(province, capsys, "--failing")
    assert devices(failing) == [f"loa-{i:04d}" for i in faults]
    assert all("[fault: amp]" in line for line in failing if line.startswith("loa-"))

    assert devices(fleet(province, capsys, "--trust-below", "3")) == [f"loa-{i:04d}" for i in below]
    assert devices(fleet(province, capsys, "--missing-cache")) == [f"loa-{i:04d}" for i in missing]
    both = fleet(province, capsys, "--pending-outbox", "--group", "commune-5")
    assert devices(both) == [f"loa-{i:04d}" for i in pending if i % 10 == 5]

    by_outbox = fleet(province, capsys, "--pending-outbox", "--sort", "outbox", "--limit", "3")
    assert devices(by_outbox) == ["loa-0016", "loa-0033", "loa-0050"]  # 16 pending each
    assert any(line.startswith("... ") and "more (raise --limit)" in line for line in by_outbox)

    # Longest silent first: the offline states (no age at all), then an hour, then the rest.
    silent_first = devices(fleet(province, capsys, "--sort", "last-seen", "--limit", "120"))
    assert silent_first[:100] == [f"loa-{i:04d}" for i in range(COUNT) if i % 10 == 9]
    assert silent_first[100:110] == [f"loa-{i:04d}" for i in stale_clock]
