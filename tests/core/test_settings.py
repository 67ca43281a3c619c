"""The core's settings have one source: the config, through its own parser."""

from __future__ import annotations

import dataclasses
from dataclasses import replace

from receiver.config_model import PolicyConfig
from receiver.core.state import Settings
from tests.core.harness import World, core_settings, emitted


def test_the_core_has_no_defaults_of_its_own() -> None:
    own = [f.name for f in dataclasses.fields(Settings) if f.default is not dataclasses.MISSING]
    assert own == ["prefetch_s"]  # a constant of the programme, not a setting


def test_the_flood_limits_are_settings_from_the_config() -> None:
    world = World()
    assert world.state.settings.rejections_per_window == PolicyConfig().rejections_per_window
    settings = core_settings(
        world.operator, "policy:\n  rejections_per_window: 3\n  rejection_window_s: 0.5\n"
    )
    world.state = replace(world.state, settings=settings)
    reported = [e for _ in range(5) for e in emitted(world.send(b"junk"))]
    assert [e.kind for e in reported] == ["rejected"] * 3
    (summary,) = emitted(world.advance(0.5), "fault")
    assert summary.detail == (
        "2 more messages rejected within 0.5 s, not reported one by one: malformed 2"
    )
