"""An offline morning end to end: the daemon plays its stored schedule with the broker gone,
and when the broker returns the reports of everything that played arrive, none lost.

The daemon's clock is the documented test hook (``RECEIVER_TEST_CLOCK``): it starts at a chosen
local morning and runs 20 times faster, so three entries a minute apart take seconds."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from receiver.central.signing import schedule_payload, sign_schedule
from tests.e2e.conftest import Site
from tests.lab.broker import Received, Subscriber
from tests.lab.daemon import GROUP, Daemon

HCM = ZoneInfo("Asia/Ho_Chi_Minh")
START = datetime(2027, 1, 11, 5, 29, 0, tzinfo=HCM).timestamp()  # a Monday, 05:29 local
SPEED = 20


def test_a_cached_schedule_plays_through_a_broker_outage_and_every_report_arrives(
    site: Site,
    start_daemon: Callable[[], Daemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RECEIVER_TEST_CLOCK", f"{START}:{SPEED}")
    tone = (site.media.directory / "tone440.wav").read_bytes()
    media = {
        "url": site.media.url("tone440.wav"),
        "sha256": hashlib.sha256(tone).hexdigest(),
        "size": len(tone),
        "title": "bulletin",
    }
    entries = [
        {
            "id": f"e{minute}",
            "days": ["mon"],
            "at": f"05:{minute}",
            "priority": "normal",
            "source": {"files": [media]},
            "max_duration_s": 50,
        }
        for minute in (30, 31, 32)
    ]
    payload = schedule_payload(
        "morning", 1, entries, env="lab", aud=[f"grp:{GROUP}"], iat=START - 60
    )
    observer = Subscriber(site.broker, [site.events_topic], client_id="observer", persistent=True)
    with observer:
        observer.publish(
            f"loa/v1/grp/{GROUP}/schedule", sign_schedule(payload, [site.operator]), retain=True
        )
        daemon = start_daemon()
        daemon.wait_log(lambda line: line.get("event") == "schedule_in_force", timeout=20)
        site.broker.stop()  # the 4G link is gone for the rest of the morning
        for entry in ("e30", "e31", "e32"):
            ref = f"morning/{entry}/2027-01-11"
            daemon.wait_log(
                lambda line, r=ref: (
                    line.get("event") == "finished"  # type: ignore[misc]
                    and line.get("ref") == r
                ),
                timeout=30,
            )
        played = [line["ref"] for line in daemon.logged("started")]
        assert played == [f"morning/{e}/2027-01-11" for e in ("e30", "e31", "e32")]
        assert daemon.logged("broker_disconnected")  # it knew it was offline throughout
        assert len(daemon.logged("broker_connected")) == 1  # only the first connection

        site.broker.start()  # the link is back: the reports follow
        seen: list[dict[str, object]] = []

        def all_reported(message: Received) -> bool:
            seen.append(json.loads(message.payload))
            kinds = {(e["kind"], e.get("ref")) for e in seen}
            return all(("finished", ref) in kinds for ref in played)

        observer.wait_for(all_reported, timeout=30)
    numbers = sorted(int(str(e["n"])) for e in seen)
    assert numbers == sorted(set(numbers))  # nothing twice
    kinds = [(e["kind"], e.get("ref")) for e in seen]
    for ref in played:
        assert ("started", ref) in kinds and ("finished", ref) in kinds


def test_reports_survive_a_kill_while_offline(
    site: Site,
    start_daemon: Callable[[], Daemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RECEIVER_TEST_CLOCK", f"{START}:{SPEED}")
    tone = (site.media.directory / "tone440.wav").read_bytes()
    media = {
        "url": site.media.url("tone440.wav"),
        "sha256": hashlib.sha256(tone).hexdigest(),
        "size": len(tone),
        "title": "bulletin",
    }
    entry = {
        "id": "e30",
        "days": ["mon"],
        "at": "05:30",
        "priority": "normal",
        "source": {"files": [media]},
        "max_duration_s": 50,
    }
    payload = schedule_payload(
        "morning", 1, [entry], env="lab", aud=[f"grp:{GROUP}"], iat=START - 60
    )
    ref = "morning/e30/2027-01-11"
    with Subscriber(site.broker, [site.events_topic], client_id="obs2", persistent=True) as obs:
        obs.publish(
            f"loa/v1/grp/{GROUP}/schedule", sign_schedule(payload, [site.operator]), retain=True
        )
        first = start_daemon()
        first.wait_log(lambda line: line.get("event") == "schedule_in_force", timeout=20)
        site.broker.stop()
        first.wait_log(lambda line: line.get("event") == "finished", timeout=30)
        first.kill()  # SIGKILL: the reports were never acknowledged by any broker
        second = start_daemon()  # still offline; the clock hook starts at 05:29 again
        second.wait_log(lambda line: line.get("event") == "daemon_started", timeout=20)
        site.broker.start()
        seen: list[dict[str, object]] = []

        def reported(message: Received) -> bool:
            seen.append(json.loads(message.payload))
            return ("finished", ref) in {(e["kind"], e.get("ref")) for e in seen}

        obs.wait_for(reported, timeout=30)
        # The restarted daemon remembered the occurrence as done and did not play it twice.
        assert second.logged("started") == []
