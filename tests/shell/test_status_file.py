"""The status file ``receiver status`` reads: rewritten as soon as the link fails, not only with
the next minute's state."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from receiver.status import read_status
from tests.shell.doubles import open_shell


def test_a_failed_connection_attempt_reaches_the_status_file_at_once(tmp_path: Path) -> None:
    """The first state was written before the link's first attempt, and the next a minute
    later: `receiver status` said "NOT connected, 0 reconnects" and nothing of why."""
    shell = open_shell(tmp_path)
    link = shell.runtime.link
    state_dir = shell.runtime.config.storage.state_dir
    shell.start()
    try:
        link.connected = False  # type: ignore[misc]
        link.last_error = "refused by broker: bad credentials (user name or password)"  # type: ignore[misc]
        link.attempts, link.cause = 3, "refused_credentials"  # type: ignore[attr-defined]
        shell.runtime.inbox.wake()
        deadline = time.monotonic() + 10
        seen = None
        while time.monotonic() < deadline:
            status = read_status(state_dir)
            seen = None if status is None else status.get("link")
            if seen is not None and seen.get("cause") == "refused_credentials":
                break
            time.sleep(0.05)
        assert seen is not None and seen["attempts"] == 3, json.dumps(seen)
        assert seen["last_error"].startswith("refused by broker"), seen
        published = [p for topic, p in link.published if topic.endswith("/state")]  # type: ignore[attr-defined]
        assert all(b'"cause"' not in p for p in published)  # the protocol's state is unchanged
    finally:
        shell.stop()
        shell.join()


def test_a_link_failing_again_and_again_does_not_rewrite_the_file_at_each_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each failed attempt rewrote the file: with ``broker.reconnect_max_s`` low (or two
    brokers that fail in turn) a day's outage wrote it tens of thousands of times, where the
    minute's state writes it 1,440 times (SD card wear). A new reason is still said at once."""
    from receiver import runtime as runtime_module
    from receiver.status import write_status

    writes: list[bytes] = []

    def counted(state_dir: Path, message: bytes) -> None:
        writes.append(message)
        write_status(state_dir, message)

    monkeypatch.setattr(runtime_module, "write_status", counted)
    shell = open_shell(tmp_path)
    link = shell.runtime.link
    shell.start()
    try:
        shell.wait(lambda: bool(writes), "the first state")
        link.connected = False  # type: ignore[misc]
        link.last_error = "unreachable: connection refused by broker:1883"  # type: ignore[misc]
        link.cause = "tcp_refused"  # type: ignore[attr-defined]
        before = len(writes)
        for attempt in range(1, 41):  # an attempt every 50 ms, the loop woken after each
            link.attempts = attempt  # type: ignore[attr-defined]
            shell.runtime.inbox.wake()
            time.sleep(0.05)
        assert 1 <= len(writes) - before <= 2, len(writes) - before
        link.cause, link.last_error = "dns", "unreachable: cannot resolve 'broker'"  # type: ignore[attr-defined,misc]
        shell.runtime.inbox.wake()
        shell.wait(lambda: b'"cause":"dns"' in writes[-1].replace(b" ", b""), "the new reason")
    finally:
        shell.stop()
        shell.join()
