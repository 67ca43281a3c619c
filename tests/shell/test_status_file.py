"""The status file ``receiver status`` reads: rewritten as soon as the link fails, not only with
the next minute's state."""

from __future__ import annotations

import json
import time
from pathlib import Path

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
