"""The amplifier's power relay: the part of the state that says whether it is on, since when,
when its tail ends, how often it switched, and any manual override.

Pure, like the rest of the core: :func:`reconcile` is ``(part, input, now) -> (part, effects)``,
where the input is what the rest of the state wants of the relay (something to play, an
emergency, the office microphone); the engine asks for the tail after an item with the note
:class:`Tail`. The machine composes it with playback.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from receiver.core.clock import Instant
from receiver.core.effects import SwitchRelay
from receiver.core.record import record
from receiver.core.vocabulary import RelayMode

WINDOW_S: Final = 60.0  # the switches counted against ``relay_max_toggles_per_min``


@record
class RelayOverride:
    """A manual relay command in force: ``mode`` until ``until_mono`` (None: until ``auto``)."""

    mode: RelayMode
    until_mono: float | None = None


@record
class Amp:
    on: bool = False
    on_mono: float = 0.0  # when it last switched on (the warm-up counts from here)
    off_mono: float | None = None  # end of the tail after the last item
    toggles: tuple[float, ...] = ()  # recent switches, for the cap per minute
    override: RelayOverride | None = None

    def toggles_in_window(self, now: Instant) -> int:
        return sum(1 for t in self.toggles if now.mono - t < WINDOW_S)

    def deadlines(self) -> list[float]:
        """When time alone may change the relay: the tail's end, an override's end, and the
        moment the oldest counted switch leaves the window."""
        found: list[float] = []
        if self.off_mono is not None and self.on:
            found.append(self.off_mono)
        if self.override is not None and self.override.until_mono is not None:
            found.append(self.override.until_mono)
        if self.on and self.toggles:
            found.append(self.toggles[0] + WINDOW_S)
        return found


@record
class Tail:
    """Note from playback: an item left the player; stay on until ``until_mono`` (the tail), or
    at once if that is now (the media engine failed)."""

    until_mono: float


@record
class Wants:
    """What the rest of the state asks of the relay now."""

    item: bool  # an item is active (warming, playing, reconnecting)
    emergency: bool  # the active item is an emergency
    mic: bool  # the office microphone has the amplifier


def _wanted(amp: Amp, wants: Wants, now: Instant) -> bool:
    if amp.override is not None and amp.override.mode == "on":
        return True
    if amp.override is not None and amp.override.mode == "off":
        return wants.item and wants.emergency
    if wants.item or wants.mic:
        return True
    return amp.off_mono is not None and now.mono < amp.off_mono


def tail(amp: Amp, note: Tail) -> Amp:
    """The tail after an item starts (or is cut short): the relay follows at the next reconcile."""
    return replace(amp, off_mono=note.until_mono)


def overridden(amp: Amp, override: RelayOverride | None) -> Amp:
    """A manual relay command (None: back to auto); the relay follows at the next reconcile."""
    return replace(amp, override=override)


def forced_off(amp: Amp) -> Amp:
    """At start-up the relay is switched off whatever the last run left (no tail to finish)."""
    return replace(amp, on=False, off_mono=None)


def reconcile(
    amp: Amp, wants: Wants, now: Instant, *, max_toggles_per_min: int
) -> tuple[Amp, tuple[SwitchRelay, ...]]:
    """Switch the relay to what is wanted, within the cap of switches per minute."""
    override = amp.override
    if override is not None and override.until_mono is not None and now.mono >= override.until_mono:
        amp = replace(amp, override=None)  # a manual override lapses back to auto
    wanted = _wanted(amp, wants, now)
    if wanted == amp.on:
        return amp, ()
    if not wanted and amp.toggles_in_window(now) >= max_toggles_per_min:
        return amp, ()  # too many switches this minute: staying on is the safe side
    toggles = (*(t for t in amp.toggles if now.mono - t < WINDOW_S), now.mono)
    switched = replace(
        amp,
        on=wanted,
        on_mono=now.mono if wanted else amp.on_mono,
        toggles=toggles[-max_toggles_per_min * 2 :],
        off_mono=None if not wanted else amp.off_mono,
    )
    return switched, (SwitchRelay(on=wanted),)
