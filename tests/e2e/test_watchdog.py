"""sd_notify and the watchdog with the real runtime in this process: READY once started,
WATCHDOG pings while the loop turns, none while the loop is wedged, again once it is free."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from receiver.central.signing import command_payload, sign_command
from receiver.config import load_config
from receiver.runtime import Runtime
from tests.e2e.conftest import Site
from tests.e2e.test_daemon import wait_event
from tests.lab.broker import MosquittoBroker, Subscriber
from tests.lab.daemon import DEVICE


class NotifyListener:
    """The systemd side of sd_notify: a datagram socket collecting what the daemon says."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def mark(self, name: str) -> None:
        """Queue ``MARK=name`` behind whatever the daemon has sent so far: datagrams are kept
        in the order they were sent, so what comes after the mark was sent after this call
        (a receive time cannot tell: this thread may read a ping late on a busy machine)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(f"MARK={name}".encode(), str(self.path))

    def pings_after(self, first: str, last: str | None = None) -> int:
        """``WATCHDOG=1`` pings received after the message ``first`` (none while it is not
        read yet), and before ``last``."""
        said = [m for _, m in list(self.messages)]
        start = said.index(first) if first in said else len(said)
        end = said.index(last) if last is not None and last in said else len(said)
        return sum(1 for m in said[start + 1 : end] if "WATCHDOG=1" in m)

    def wait_pings_after(self, first: str, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.pings_after(first) < count:
            assert time.monotonic() < deadline, (first, self.messages)
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    path = tmp_path / "notify.sock"
    notify = NotifyListener(path)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # systemd would want a ping every 0.1 s
    yield notify
    notify.close()


def test_watchdog_pings_stop_while_the_loop_is_wedged(
    site: Site, broker: MosquittoBroker, listener: NotifyListener
) -> None:
    runtime = Runtime(load_config(site.config), pin_factory=MockFactory())
    wedge = threading.Event()
    entered = threading.Event()
    real_set_volume = runtime.player.set_volume

    def wedged_set_volume(level: int) -> None:  # stands in for a libVLC call that hangs
        listener.mark("wedged")  # on the loop's thread: no ping of the loop can follow it
        entered.set()
        wedge.wait(timeout=30)
        real_set_volume(level)

    thread = threading.Thread(target=runtime.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not any("READY=1" in m for _, m in listener.messages):
            assert time.monotonic() < deadline, listener.messages
            time.sleep(0.05)
        listener.wait_pings_after("READY=1", 5)  # alive: about ten a second

        # A volume command while an item is active makes the loop call into the "player".
        runtime.player.set_volume = wedged_set_volume  # type: ignore[method-assign]
        with Subscriber(broker, [site.events_topic]) as sub:
            play = command_payload(
                "play",
                {
                    "priority": "normal",
                    "max_duration_s": 60,
                    "source": {"stream": {"url": site.media.url("tone440.wav")}},
                },
                env="lab",
                aud=[f"dev:{DEVICE}"],
            )
            sub.publish(site.cmd_topic, sign_command(play, [site.operator]))
            wait_event(sub, site, "started", timeout=30)
            volume = command_payload("volume", {"level": 10}, env="lab", aud=[f"dev:{DEVICE}"])
            sub.publish(site.cmd_topic, sign_command(volume, [site.operator]))
            assert entered.wait(10), "the loop never reached the player"
            time.sleep(1.5)  # long enough for about fifteen pings, were the loop turning
            listener.mark("freed")
            wedge.set()
            listener.wait_pings_after("MARK=freed", 3)  # free again (both marks now read)
            said = [m for _, m in listener.messages]
            assert said.index("MARK=wedged") < said.index("MARK=freed"), said
            assert listener.pings_after("MARK=wedged", "MARK=freed") == 0  # wedged: no pings
    finally:
        wedge.set()
        runtime.request_stop()
        thread.join(timeout=15)
    assert any("STOPPING=1" in m for _, m in listener.messages)
    assert any(m.startswith("STATUS=") for _, m in listener.messages)
