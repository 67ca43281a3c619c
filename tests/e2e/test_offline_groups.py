"""A board that is off still says which groups it is in: in its will, and in its last word.

The offline state carried the device id alone, so ``receiver-admin fleet --group`` showed no
board of a commune whose power was out, and the group check of a command or programme warned of
that commune's group as if it were mistyped. Against the lab Mosquitto and a real daemon, killed
(the broker publishes the will) and stopped cleanly (the daemon's own last word).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from receiver.central.admin import main
from tests.e2e.conftest import Site
from tests.lab.broker import Received, Subscriber
from tests.lab.daemon import DEVICE, GROUP, Daemon


def _offline_state(site: Site) -> dict[str, object]:
    with Subscriber(site.broker, [site.state_topic]) as reader:  # what is retained now
        message = reader.wait_for(lambda m: json.loads(m.payload).get("online") is False)
    assert message.retain
    state: dict[str, object] = json.loads(message.payload)
    return state


def _wait_online(daemon: Daemon) -> None:
    daemon.wait_log(lambda line: line.get("event") == "broker_connected", timeout=20)


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_a_board_that_is_off_is_still_counted_in_its_group(
    how: str,
    site: Site,
    start_daemon: Callable[[], Daemon],
    capsys: pytest.CaptureFixture[str],
) -> None:
    daemon = start_daemon()
    _wait_online(daemon)
    with Subscriber(site.broker, [site.state_topic]) as watcher:
        watcher.wait_for(lambda m: json.loads(m.payload).get("online") is True, timeout=20)
        if how == "killed":
            daemon.kill()
        else:
            assert daemon.stop() == 0

        def offline(message: Received) -> bool:
            return json.loads(message.payload).get("online") is False

        watcher.wait_for(offline, timeout=20)
    assert _offline_state(site) == {"device": DEVICE, "online": False, "groups": [GROUP]}

    broker = ["--host", site.broker.host, "--port", str(site.broker.port)]
    assert main(["fleet", "--group", GROUP, *broker]) == 0
    captured = capsys.readouterr()
    assert DEVICE in captured.out
    assert "lists group" not in captured.err, captured.err
