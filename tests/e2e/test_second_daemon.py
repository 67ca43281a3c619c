"""A second ``receiver run`` on the same state directory (a technician trying the daemon by hand
while the service runs) refuses to start, and the running daemon goes on as if nothing happened.
Two daemons on one state would share its database, outbox and device key, claim the same
amplifier pin, and knock each other off the broker under the same client id."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

from receiver.central.signing import sign_command
from tests.e2e.conftest import Site
from tests.e2e.test_daemon import events_of, play_payload, wait_event, wait_online
from tests.lab.broker import Subscriber
from tests.lab.daemon import Daemon

EX_TEMPFAIL = 75


def test_a_second_daemon_on_the_same_state_refuses_to_start_and_the_first_goes_on(
    site: Site, start_daemon: Callable[[], Daemon], watcher: Subscriber
) -> None:
    first = start_daemon()
    wait_online(watcher, site)
    assert first.process is not None
    db_before = (site.root / "state" / "state.db").stat().st_size

    second = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "run", "--config", str(site.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert second.returncode == EX_TEMPFAIL, second.stderr + second.stdout
    message = second.stderr.strip()
    assert f"already running (pid {first.process.pid})" in message, message
    assert str(site.root / "state") in message and "systemctl stop" in message, message
    assert "Traceback" not in second.stderr + second.stdout
    assert len(message.splitlines()) == 1, message
    # The first daemon noticed nothing: no reconnect, and it still plays what it is told.
    time.sleep(1.0)  # time for a client-id takeover to show, had the second one connected
    assert first.logged("broker_disconnected") == [], first.logged("broker_disconnected")
    assert first.process.poll() is None
    assert (site.root / "state" / "state.db").stat().st_size >= db_before
    watcher.publish(
        site.cmd_topic,
        sign_command(play_payload(site, "tone440.wav", message_id="after-second"), [site.operator]),
    )
    wait_event(watcher, site, "started", "after-second")
    wait_event(watcher, site, "finished", "after-second")
    assert [e["kind"] for e in events_of(watcher, site) if e.get("ref") == "after-second"] == [
        "accepted",
        "started",
        "finished",
    ]
    assert first.stop() == 0


def test_once_the_first_daemon_has_stopped_the_next_one_starts(
    site: Site, start_daemon: Callable[[], Daemon], watcher: Subscriber
) -> None:
    first = start_daemon()
    wait_online(watcher, site)
    assert first.stop() == 0
    second = start_daemon()  # the lock went with the first process
    second.wait_log(lambda line: line.get("event") == "broker_connected", timeout=30)
    assert second.stop() == 0
    assert second.logged("daemon_stopped")
