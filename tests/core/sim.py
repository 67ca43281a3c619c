"""A simulated receiver for whole days: the fake world answers the core's effects the way the
real adapters would (files are fetched at once, play for a set length, streams advance)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from receiver.core import reasons
from receiver.core.effects import Effect, Emit, Fetch, Play, StopPlayback
from receiver.core.events import (
    Event,
    FetchFailed,
    FetchFinished,
    PlaybackEnded,
    PlaybackProgress,
    PlaybackStarted,
    TimerFired,
)
from tests.core.harness import World

HCM = ZoneInfo("Asia/Ho_Chi_Minh")


@dataclass
class Sim:
    world: World
    file_seconds: float = 600.0
    unfetchable: set[str] = field(default_factory=set)
    log: list[tuple[float, Emit]] = field(default_factory=list)
    sounding: dict[int, float] = field(default_factory=dict)  # token -> mono when it ends
    pending: list[Event] = field(default_factory=list)
    stream_tokens: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.world.sim = self

    def handle(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Emit):
                self.log.append((self.world.utc, effect))
            elif isinstance(effect, Fetch):
                if effect.sha256 in self.unfetchable:
                    self.pending.append(
                        FetchFailed(effect.sha256, reasons.DOWNLOAD_FAILED, "HTTP 404")
                    )
                else:
                    self.pending.append(FetchFinished(effect.sha256, f"/cache/{effect.sha256}"))
            elif isinstance(effect, Play):
                self.pending.append(PlaybackStarted(effect.token))
                if effect.media.startswith("http"):
                    self.stream_tokens.add(effect.token)
                    self.sounding[effect.token] = float("inf")
                else:
                    length = self.file_seconds - effect.start_ms / 1000
                    self.sounding[effect.token] = self.world.mono + length
            elif isinstance(effect, StopPlayback):
                self.sounding.clear()

    def feed(self, event: Event) -> None:
        self.handle(self.world.feed(event))
        while self.pending:
            self.handle(self.world.feed(self.pending.pop(0)))

    def run_until(self, utc: float, step_s: float = 5.0) -> None:
        """Advance to ``utc`` in small steps, ending files and feeding stream progress."""
        self.feed(TimerFired())
        while self.world.utc < utc:
            target = min(utc, self.world.utc + step_s)
            moves = []
            for token, ends in list(self.sounding.items()):
                if ends <= self.world.mono + (target - self.world.utc):
                    moves.append((ends, token))
            for ends, token in sorted(moves):
                if token in self.sounding and ends > self.world.mono:
                    self.handle(self.world.advance(ends - self.world.mono))
                if self.sounding.pop(token, None) is not None:
                    self.feed(PlaybackEnded(token))
            self.handle(self.world.advance(target - self.world.utc))
            for token in list(self.sounding):
                if token in self.stream_tokens:
                    position = int(self.world.mono * 1000)
                    self.feed(PlaybackProgress(token, position))
            while self.pending:
                self.handle(self.world.feed(self.pending.pop(0)))

    def events(
        self, kind: str, match: Callable[[Emit], bool] = lambda e: True
    ) -> list[tuple[datetime, Emit]]:
        return [
            (datetime.fromtimestamp(utc, HCM), e)
            for utc, e in self.log
            if e.kind == kind and match(e)
        ]
