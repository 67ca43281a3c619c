"""The relay adapter against gpiozero's own MockFactory: the pin's whole state history is checked.

gpiozero's ``MockPin.assert_states`` zips the two lists, so it passes on a history that is longer
(or shorter) than expected; these tests compare ``pin.states`` in full instead.

"Pin level" below is the electrical level (True = high). For active-low wiring the relay is off
while the pin is high.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero import OutputDevice
from gpiozero.pins.mock import MockFactory

from receiver.config_model import GpioConfig
from receiver.gpio import AmpRelay, GpioError, LocalInputs, force_off, make_pin_factory

PIN = "GPIO17"


@pytest.fixture
def factory() -> Iterator[Any]:
    f = MockFactory()
    yield f
    f.close()


def levels(pin: Any) -> list[bool]:
    return [bool(s.state) for s in pin.states]


def idle_pin(factory: Any, level: bool) -> Any:
    """The relay pin before we touch it, held at ``level`` by the board's pull resistor."""
    pin = factory.pin(PIN)
    if level:
        pin.drive_high()
    else:
        pin.drive_low()
    pin.clear_states()
    return pin


def test_active_high_history(factory: Any) -> None:
    pin = idle_pin(factory, level=False)
    relay = AmpRelay(GpioConfig(amp_pin=PIN, active_high=True), factory)
    assert levels(pin) == [False]
    assert pin.function == "output"
    assert not relay.is_on

    relay.switch(True)
    assert relay.is_on
    relay.switch(True)  # switching to the state it is in changes nothing
    relay.switch(False)
    assert not relay.is_on
    relay.switch(True)
    relay.close()

    assert levels(pin) == [False, True, False, True, False]
    assert not relay.is_on
    assert pin.function == "input"  # released


def test_active_low_history_with_pull_up(factory: Any) -> None:
    # A typical relay board: input pulled up on the board, low energises the coil.
    pin = idle_pin(factory, level=True)
    relay = AmpRelay(GpioConfig(amp_pin=PIN, active_high=False), factory)
    assert levels(pin) == [True]  # taken over with the relay off: no glitch
    assert not relay.is_on

    relay.switch(True)
    assert relay.is_on
    relay.switch(False)
    relay.switch(True)
    relay.close()

    assert levels(pin) == [True, False, True, False, True]
    assert pin.function == "input"


def test_active_low_pin_found_low_is_driven_off_at_once(factory: Any) -> None:
    pin = idle_pin(factory, level=False)  # relay energised when we start
    relay = AmpRelay(GpioConfig(amp_pin=PIN, active_high=False), factory)
    assert levels(pin) == [False, True]
    assert not relay.is_on
    relay.close()
    assert levels(pin) == [False, True]


@pytest.mark.parametrize("active_high", [True, False])
def test_close_is_idempotent_and_releases_the_pin(factory: Any, active_high: bool) -> None:
    config = GpioConfig(amp_pin=PIN, active_high=active_high)
    pin = idle_pin(factory, level=not active_high)
    relay = AmpRelay(config, factory)
    relay.switch(True)
    relay.close()
    relay.close()
    assert levels(pin) == [not active_high, active_high, not active_high]
    assert not relay.is_on
    with pytest.raises(GpioError, match="closed"):
        relay.switch(True)
    # The pin is free again: a second relay on it can be opened.
    AmpRelay(config, factory).close()
    assert levels(pin) == [not active_high, active_high, not active_high]


@pytest.mark.parametrize("active_high", [True, False])
def test_force_off_turns_off_a_relay_left_on(factory: Any, active_high: bool) -> None:
    config = GpioConfig(amp_pin=PIN, active_high=active_high)
    # A crashed daemon left the pin driving the relay on.
    pin = factory.pin(PIN)
    pin.function = "output"
    pin.state = active_high
    pin.clear_states()

    force_off(config, pin_factory=factory)

    assert levels(pin) == [active_high, not active_high]
    assert pin.function == "input"
    OutputDevice(PIN, pin_factory=factory).close()  # released


def test_force_off_with_the_configured_mock_factory() -> None:
    force_off(GpioConfig(pin_factory="mock", amp_pin=PIN))


def test_pin_in_use_is_a_gpio_error(factory: Any) -> None:
    relay = AmpRelay(GpioConfig(amp_pin=PIN), factory)
    with pytest.raises(GpioError, match="GPIO17") as info:
        AmpRelay(GpioConfig(amp_pin=PIN), factory)
    assert info.value.__cause__ is not None
    relay.close()


def test_invalid_pin_is_a_gpio_error(factory: Any) -> None:
    with pytest.raises(GpioError, match="GPIO99"):
        AmpRelay(GpioConfig(amp_pin="GPIO99"), factory)


def test_make_mock_factory() -> None:
    f = make_pin_factory("mock")
    try:
        assert isinstance(f, MockFactory)
    finally:
        f.close()


def test_unknown_factory_name() -> None:
    with pytest.raises(GpioError, match=r"unknown pin factory 'gpiod'.*lgpio"):
        make_pin_factory("gpiod")


@pytest.mark.parametrize("name", ["lgpio", "rpigpio", "pigpio", "native"])
def test_real_factory_failure_is_explained(name: str) -> None:
    # On the test machine (no GPIO hardware, no pin libraries) every real factory fails; on a
    # Pi with the library installed the factory may simply work.
    try:
        f = make_pin_factory(name)
    except GpioError as exc:
        message = str(exc)
        assert repr(name) in message
        assert "install" in message or "check" in message
        assert exc.__cause__ is not None
    else:
        f.close()


def test_local_inputs_report_the_microphone_switch_and_the_amplifier_fault() -> None:
    factory = MockFactory()
    seen: list[tuple[str, bool]] = []
    config = GpioConfig(mic_pin="GPIO22", amp_fault_pin="GPIO23", inputs_active_high=False)
    inputs = LocalInputs(config, factory, lambda name, active: seen.append((name, active)))
    try:
        mic, fault = factory.pin(22), factory.pin(23)
        assert inputs.current() == [("mic", False), ("amp_fault", False)]  # pulled up: idle
        mic.drive_low()  # the technician keys the microphone: the switch grounds the input
        fault.drive_low()
        mic.drive_high()
        deadline = time.monotonic() + 2
        while len(seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [("mic", True), ("amp_fault", True), ("mic", False)]
    finally:
        inputs.close()
