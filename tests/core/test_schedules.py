"""Schedules over simulated weeks: the right entries at the right local times, across midnight
and a time-zone change, late join after a reboot, updates mid-entry, and versions that never
erase a working programme."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from receiver.central.signing import schedule_payload, sign_schedule
from receiver.core.effects import Emit
from tests.core.harness import GROUPS, World, emitted, only_rejection
from tests.core.sim import HCM, Sim

GROUP = GROUPS[1]
TOPIC = f"loa/v1/grp/{GROUP}/schedule"
MONDAY = datetime(2027, 1, 11, 0, 0, tzinfo=HCM).timestamp()  # a Monday, local midnight
HOUR = 3600.0
DAY = 86400.0
SHA_M, SHA_E = "1" * 64, "2" * 64


def entry(
    entry_id: str, days: list[str], at: str, sha: str = SHA_M, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": entry_id,
        "days": days,
        "at": at,
        "priority": "normal",
        "source": {
            "files": [
                {
                    "url": f"https://media.example/{entry_id}.mp3",
                    "sha256": sha,
                    "size": 1000,
                    "title": entry_id,
                }
            ]
        },
        "max_duration_s": 1800,
    }
    body.update(extra)
    return body


WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat"]


def world_at(utc: float) -> World:
    world = World()
    world.utc = utc
    world.state = replace(
        world.state, floors=replace(world.state.floors, reset_floor=utc - 10 * DAY)
    )
    return world


def publish(world: World, version: int, entries: list[dict[str, Any]], **kw: Any) -> list[Emit]:
    """Send a schedule version; the world's simulator (if any) fetches its media."""
    payload = schedule_payload(
        "sch-1", version, entries, env="prod", aud=[f"grp:{GROUP}"], iat=world.utc, **kw
    )
    effects = world.send(sign_schedule(payload, [world.operator]), topic=TOPIC)
    if world.sim is not None:
        world.sim.handle(effects)
        while world.sim.pending:
            world.sim.handle(world.feed(world.sim.pending.pop(0)))
    return emitted(effects)


def starts(sim: Sim) -> list[str]:
    return [f"{when:%a %H:%M}" for when, _ in sim.events("started")]


def test_a_week_of_morning_and_evening_sessions_plays_at_local_times() -> None:
    world = world_at(MONDAY - HOUR)
    sim = Sim(world, file_seconds=900)
    publish(
        world,
        1,
        [
            entry("morning", WEEKDAYS, "05:30"),
            entry("evening", ["mon", "wed", "fri"], "17:00", sha=SHA_E),
        ],
    )
    sim.run_until(MONDAY + 7 * DAY)
    assert starts(sim) == [
        "Mon 05:30",
        "Mon 17:00",
        "Tue 05:30",
        "Wed 05:30",
        "Wed 17:00",
        "Thu 05:30",
        "Fri 05:30",
        "Fri 17:00",
        "Sat 05:30",
    ]
    assert len(sim.events("finished")) == 9
    assert world.state.playback.active is None and not world.state.amp.on


def test_an_entry_across_midnight_plays_whole_and_only_once() -> None:
    world = world_at(MONDAY + 23 * HOUR)
    sim = Sim(world, file_seconds=1200)
    publish(world, 1, [entry("late", ["mon"], "23:50")])
    sim.run_until(MONDAY + DAY + 2 * HOUR)
    assert starts(sim) == ["Mon 23:50"]
    assert [f"{when:%a %H:%M}" for when, _ in sim.events("finished")] == ["Tue 00:10"]


def test_a_time_zone_change_of_the_document_moves_the_entries() -> None:
    world = world_at(MONDAY - HOUR)
    sim = Sim(world, file_seconds=60)
    publish(world, 1, [entry("news", ["mon", "tue"], "06:00")], tz="Asia/Tokyo")
    sim.run_until(MONDAY + 12 * HOUR)  # Tokyo 06:00 is 04:00 here
    publish(world, 2, [entry("news", ["mon", "tue"], "06:00")], tz="Asia/Ho_Chi_Minh")
    sim.run_until(MONDAY + DAY + 12 * HOUR)
    assert starts(sim) == ["Mon 04:00", "Tue 06:00"]


def test_validity_dates_bound_an_entry() -> None:
    world = world_at(MONDAY - HOUR)
    sim = Sim(world, file_seconds=60)
    publish(
        world,
        1,
        [entry("campaign", WEEKDAYS, "07:00", valid_from="2027-01-12", valid_until="2027-01-13")],
    )
    sim.run_until(MONDAY + 5 * DAY)
    assert starts(sim) == ["Tue 07:00", "Wed 07:00"]


def test_after_a_reboot_inside_the_window_it_joins_late_or_skips_by_the_rule() -> None:
    world = world_at(MONDAY - HOUR)
    Sim(world)
    publish(world, 1, [entry("morning", WEEKDAYS, "05:30")])
    schedules = world.state.programme.schedules
    for minutes_late, expected in ((2, "started"), (10, "failed")):
        rebooted = world_at(MONDAY + 5.5 * HOUR + minutes_late * 60)
        programme = replace(rebooted.state.programme, schedules=schedules, next_check_mono=0)
        rebooted.state = replace(rebooted.state, programme=programme)
        sim = Sim(rebooted)
        sim.run_until(rebooted.utc + 10)
        (kind,) = {e.kind for _, e in sim.log}
        assert kind == expected
        first = sim.log[0][1]
        if expected == "started":
            assert first.detail == f"morning (late join +{minutes_late * 60} s)"
        else:
            assert (first.reason, first.ref) == ("missed", "sch-1/morning/2027-01-11")


def test_a_live_relay_always_joins_late() -> None:
    world = world_at(MONDAY - HOUR)
    relay = entry("relay", WEEKDAYS, "05:00")
    relay["source"] = {"stream": {"url": "https://media.example/vov1"}}
    publish(world, 1, [relay])
    rebooted = world_at(MONDAY + 5 * HOUR + 20 * 60)
    programme = replace(
        rebooted.state.programme, schedules=world.state.programme.schedules, next_check_mono=0
    )
    rebooted.state = replace(rebooted.state, programme=programme)
    sim = Sim(rebooted)
    sim.run_until(rebooted.utc + 60)
    assert [e.detail for _, e in sim.events("started")] == [
        "https://media.example/vov1 (late join +1200 s)"
    ]


def test_an_update_mid_entry_keeps_a_kept_entry_and_stops_a_removed_one() -> None:
    world = world_at(MONDAY + 5 * HOUR)
    sim = Sim(world, file_seconds=1500)
    publish(world, 1, [entry("morning", WEEKDAYS, "05:30"), entry("other", ["sun"], "09:00")])
    sim.run_until(MONDAY + 5.6 * HOUR)
    assert starts(sim) == ["Mon 05:30"]
    publish(world, 2, [entry("morning", WEEKDAYS, "05:30")])  # same entry: plays on
    sim.run_until(MONDAY + 5.65 * HOUR)
    assert (
        world.state.playback.active is not None and world.state.playback.active.phase == "playing"
    )
    effects = world.send(
        sign_schedule(
            schedule_payload("sch-1", 3, [], env="prod", aud=[f"grp:{GROUP}"], iat=world.utc),
            [world.operator],
        ),
        topic=TOPIC,
    )
    assert ("stopped", "entry removed by schedule version 3") in [
        (e.kind, e.detail) for e in emitted(effects)
    ]
    assert world.state.programme.schedules["sch-1"].entries == ()


def test_quiet_hours_skip_normal_entries() -> None:
    world = world_at(MONDAY - HOUR)
    world.state = replace(
        world.state, settings=replace(world.state.settings, quiet_hours=((21 * 60 + 30, 5 * 60),))
    )
    sim = Sim(world, file_seconds=60)
    publish(world, 1, [entry("dawn", ["mon"], "04:45"), entry("morning", ["mon"], "05:30")])
    sim.run_until(MONDAY + 6 * HOUR)
    assert starts(sim) == ["Mon 05:30"]
    assert [(e.ref, e.reason) for _, e in sim.events("failed")] == [
        ("sch-1/dawn/2027-01-11", "quiet_hours")
    ]


def test_an_unfetchable_new_version_never_replaces_the_stored_one() -> None:
    world = world_at(MONDAY - HOUR)
    sim = Sim(world, file_seconds=60, unfetchable={"9" * 64})
    publish(world, 1, [entry("morning", WEEKDAYS, "05:30")])
    assert world.state.programme.schedules["sch-1"].version == 1
    effects = world.send(
        sign_schedule(
            schedule_payload(
                "sch-1",
                2,
                [entry("broken", WEEKDAYS, "05:30", sha="9" * 64)],
                env="prod",
                aud=[f"grp:{GROUP}"],
                iat=world.utc,
            ),
            [world.operator],
        ),
        topic=TOPIC,
    )
    sim.handle(effects)
    sim.run_until(MONDAY + 6 * HOUR, step_s=30)
    rejected = sim.events("rejected")
    assert [(e.ref, e.reason) for _, e in rejected] == [("sch-1", "download_failed")]
    assert world.state.programme.schedules["sch-1"].version == 1
    assert starts(sim) == ["Mon 05:30"]  # the old programme played


def test_an_older_or_replayed_version_is_refused_and_a_duplicate_acknowledged() -> None:
    world = world_at(MONDAY)
    payload7 = schedule_payload("sch-1", 7, [], env="prod", aud=[f"grp:{GROUP}"], iat=world.utc)
    raw7 = sign_schedule(payload7, [world.operator])
    world.send(raw7, topic=TOPIC, retained=True)
    assert world.state.programme.schedules["sch-1"].version == 7
    raw5 = sign_schedule({**payload7, "version": 5}, [world.operator])
    assert only_rejection(world.send(raw5, topic=TOPIC, retained=True)).reason == "stale_version"
    again = world.send(raw7, topic=TOPIC, retained=True)
    assert [(e.kind, e.detail) for e in emitted(again)] == [
        ("accepted", "duplicate of the last accepted")
    ]


def test_schedules_of_two_groups_combine_by_priority() -> None:
    world = world_at(MONDAY - HOUR)
    sim = Sim(world, file_seconds=600)
    publish(world, 1, [entry("commune", ["mon"], "06:00")])
    province = schedule_payload(
        "prov",
        1,
        [entry("province", ["mon"], "06:00", sha=SHA_E, priority="priority")],
        env="prod",
        aud=[f"grp:{GROUPS[0]}"],
        iat=world.utc,
    )
    sim.handle(
        world.send(
            sign_schedule(province, [world.operator]), topic=f"loa/v1/grp/{GROUPS[0]}/schedule"
        )
    )
    sim.run_until(MONDAY + 7 * HOUR)
    assert [e.ref for _, e in sim.events("started")] == [
        "prov/province/2027-01-11",
        "sch-1/commune/2027-01-11",
    ]
    assert [f"{when:%H:%M}" for when, _ in sim.events("started")] == ["06:00", "06:10"]


def test_an_emergency_entry_needs_the_emergency_role() -> None:
    world = world_at(MONDAY)
    alarm = entry("alarm", ["mon"], "08:00", priority="emergency")
    payload = schedule_payload("sch-1", 1, [alarm], env="prod", aud=[f"grp:{GROUP}"], iat=world.utc)
    raw = sign_schedule(payload, [world.operator])
    assert only_rejection(world.send(raw, topic=TOPIC)).reason == "not_authorized"


def test_no_schedule_starts_without_trusted_time() -> None:
    world = world_at(MONDAY - HOUR)
    sim = Sim(world)
    publish(world, 1, [entry("morning", ["mon"], "05:30")])
    assert "sch-1" in world.state.programme.schedules
    world.utc_trusted = False
    sim.run_until(MONDAY + 7 * HOUR)
    assert starts(sim) == []
    assert ZoneInfo("Asia/Ho_Chi_Minh") is not None


def test_a_staged_version_whose_file_failed_is_retried_and_takes_effect_once_fetched() -> None:
    world = world_at(MONDAY - 10 * HOUR)
    sim = Sim(world, file_seconds=60)
    publish(world, 1, [entry("morning", ["tue"], "05:30")])  # 1 day + ahead
    prefetch = "3" * 64
    sim.unfetchable.add(prefetch)
    publish(
        world,
        2,
        [entry("morning", ["tue"], "05:30"), entry("extra", ["wed"], "06:00", sha=prefetch)],
    )
    assert world.state.programme.schedules["sch-1"].version == 1  # v2 waits for its file
    sim.unfetchable.clear()
    sim.run_until(MONDAY + 2 * HOUR, step_s=60)  # the staged retry fetches it
    assert world.state.programme.schedules["sch-1"].version == 2
    assert starts(sim) == []


def test_an_entry_retimed_later_while_its_occurrence_waits_plays_at_the_new_time() -> None:
    world = world_at(MONDAY + 6 * HOUR)
    sim = Sim(world, file_seconds=300)
    publish(world, 1, [entry("morning", WEEKDAYS, "06:30")])
    sim.run_until(MONDAY + 6.5 * HOUR - 3)  # the occurrence is an item, about to start
    assert any(i.occurrence == "sch-1/morning/2027-01-11" for i in world.state.playback.items())
    publish(world, 2, [entry("morning", WEEKDAYS, "07:15")])
    sim.run_until(MONDAY + 8 * HOUR)
    assert starts(sim) == ["Mon 07:15"]


def test_an_entry_retimed_later_the_same_day_after_it_played_says_why_it_waits() -> None:
    world = world_at(MONDAY + 6 * HOUR)
    sim = Sim(world, file_seconds=300)
    publish(world, 1, [entry("morning", WEEKDAYS, "06:30")])
    sim.run_until(MONDAY + 8 * HOUR)
    assert starts(sim) == ["Mon 06:30"]
    said = publish(world, 2, [entry("morning", WEEKDAYS, "18:00")])
    accepted = [e.detail or "" for e in said if e.kind == "accepted"]
    assert any(
        "morning had today's turn at 06:30; at 18:00 from tomorrow" in detail for detail in accepted
    ), accepted
    sim.run_until(MONDAY + DAY + 19 * HOUR)
    assert starts(sim) == ["Mon 06:30", "Tue 18:00"]


def test_an_entry_retimed_during_its_warm_up_lets_the_relay_go_and_plays_later() -> None:
    world = world_at(MONDAY + 6 * HOUR)
    sim = Sim(world, file_seconds=300)
    publish(world, 1, [entry("morning", WEEKDAYS, "06:30")])
    sim.run_until(MONDAY + 6.5 * HOUR - 0.5)  # warming up: the item is active, the relay on
    assert world.state.playback.active is not None and world.state.amp.on
    publish(world, 2, [entry("morning", WEEKDAYS, "07:15")])
    sim.run_until(MONDAY + 7 * HOUR)
    assert world.state.playback.active is None and not world.state.amp.on  # the tail ended
    sim.run_until(MONDAY + 8 * HOUR)
    assert starts(sim) == ["Mon 07:15"]
