"""The gpiozero adapter: the amplifier relay, and the local inputs it reads.

This module owns the one output pin that switches the amplifier's power relay, and the input
pins of the office microphone's priority switch and the amplifier's fault contact
(:class:`LocalInputs`, which reports their changes as plain calls the loop turns into events):

* :func:`make_pin_factory` turns the configured factory name into a gpiozero pin factory. The real
  factories are imported only when asked for, and their import or start-up failures become a
  :class:`GpioError` that tells a technician what to install or check.
* :class:`AmpRelay` drives the pin. It is created with the relay **off** (``initial_value=False``;
  gpiozero's ``None`` would keep whatever state the pin had), and :meth:`AmpRelay.close` drives it
  off before releasing the pin.
* :func:`force_off` is for a stop helper (``ExecStopPost=``) and for the daemon's start: gpiozero's
  own cleanup only runs on a normal interpreter exit, so a crashed daemon may leave the relay on.

What the relay *should* do (warm-up before playback, tail after it, toggle caps) is decided by the
core; this adapter only executes ``SwitchRelay`` effects and is called from the loop thread only
(the inputs' callbacks come on gpiozero's threads and only queue).
Every exception from gpiozero or from the pin libraries underneath is re-raised as
:class:`GpioError`, with the original chained as ``__cause__``.

Wiring: ``active_high=True`` means "pin high = relay energised". Many ready-made relay boards are
active-low (the input is pulled up on the board, and pulling it low energises the coil); set
``active_high: false`` for those. "On" and "off" in this module always mean the relay, not the pin
level.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import Any

from gpiozero import DigitalInputDevice, OutputDevice
from gpiozero.pins import Factory
from gpiozero.pins.mock import MockFactory

from receiver.config_model import PIN_FACTORIES, GpioConfig
from receiver.errors import GpioError

__all__ = ["AmpRelay", "GpioError", "force_off", "make_pin_factory"]


# name -> (gpiozero module, factory class, what to install when the import fails)
_FACTORIES: dict[str, tuple[str, str, str]] = {
    "lgpio": (
        "gpiozero.pins.lgpio",
        "LGPIOFactory",
        "install the Debian package python3-lgpio (in a virtualenv: pip install lgpio, or "
        "create the virtualenv with --system-site-packages)",
    ),
    "rpigpio": (
        "gpiozero.pins.rpigpio",
        "RPiGPIOFactory",
        "install the Debian package python3-rpi.gpio (in a virtualenv: pip install RPi.GPIO); "
        "RPi.GPIO does not work on a Raspberry Pi 5, use pin_factory: lgpio there",
    ),
    "pigpio": (
        "gpiozero.pins.pigpio",
        "PiGPIOFactory",
        "install the Debian package python3-pigpio (in a virtualenv: pip install pigpio) and run "
        "the pigpiod daemon (package pigpio)",
    ),
    "native": (
        "gpiozero.pins.native",
        "NativeFactory",
        "the native factory needs no extra package; check that gpiozero is installed",
    ),
}

# What to check when the factory imported fine but could not start.
_START_HINTS: dict[str, str] = {
    "lgpio": (
        "check that /dev/gpiochip* exists and that the daemon's user may open it (group gpio), "
        "and that the working directory is writable (lgpio writes a notification file there; "
        "set WorkingDirectory= in the unit)"
    ),
    "rpigpio": "check that this is a Raspberry Pi and that the user may open /dev/gpiomem",
    "pigpio": "check that the pigpiod daemon is running (systemctl status pigpiod)",
    "native": "check that this is a Raspberry Pi and that the user may open /dev/gpiomem",
}


def make_pin_factory(name: str) -> Factory:
    """Return a new gpiozero pin factory for ``name`` (one of ``PIN_FACTORIES``).

    ``"mock"`` is gpiozero's own :class:`~gpiozero.pins.mock.MockFactory`, for tests and for a
    receiver without a relay. The caller owns the factory and closes it.
    """
    if name == "mock":
        try:
            return MockFactory()
        except Exception as exc:
            raise GpioError(f"pin factory 'mock' failed to start: {_describe(exc)}") from exc
    if name not in _FACTORIES:
        raise GpioError(
            f"unknown pin factory {name!r}; expected one of: {', '.join(PIN_FACTORIES)}"
        )
    module_name, class_name, install_hint = _FACTORIES[name]
    try:
        factory_class: Any = getattr(importlib.import_module(module_name), class_name)
    except ImportError as exc:
        missing = f" (missing module {exc.name!r})" if exc.name else ""
        raise GpioError(f"pin factory {name!r} is not available{missing}: {install_hint}") from exc
    try:
        return factory_class()
    except Exception as exc:
        raise GpioError(
            f"pin factory {name!r} failed to start: {_describe(exc)}; {_START_HINTS[name]}"
        ) from exc


class AmpRelay:
    """The amplifier relay on ``config.amp_pin``; off from construction until switched on."""

    def __init__(self, config: GpioConfig, pin_factory: Factory) -> None:
        self._pin_name = config.amp_pin
        try:
            self._device: Any = OutputDevice(
                config.amp_pin,
                active_high=config.active_high,
                initial_value=False,
                pin_factory=pin_factory,
            )
        except Exception as exc:
            raise GpioError(f"cannot open relay pin {config.amp_pin!r}: {_describe(exc)}") from exc
        self._closed = False

    def switch(self, on: bool) -> None:
        """Energise (``True``) or release (``False``) the relay."""
        if self._closed:
            raise GpioError(f"relay pin {self._pin_name!r} is already closed")
        try:
            if on:
                self._device.on()
            else:
                self._device.off()
        except Exception as exc:
            state = "on" if on else "off"
            raise GpioError(
                f"cannot switch relay pin {self._pin_name!r} {state}: {_describe(exc)}"
            ) from exc

    @property
    def is_on(self) -> bool:
        """Whether the relay is energised, as read back from the pin; ``False`` once closed."""
        if self._closed:
            return False
        try:
            return bool(self._device.value)
        except Exception as exc:
            raise GpioError(f"cannot read relay pin {self._pin_name!r}: {_describe(exc)}") from exc

    def close(self) -> None:
        """Drive the relay off, then release the pin. Safe to call more than once.

        The pin is released even when driving it off fails; the first failure is raised.
        """
        if self._closed:
            return
        self._closed = True
        error: Exception | None = None
        try:
            self._device.off()
        except Exception as exc:
            error = exc
        try:
            self._device.close()
        except Exception as exc:
            error = error or exc
        if error is not None:
            raise GpioError(
                f"cannot release relay pin {self._pin_name!r}: {_describe(error)}"
            ) from error


def force_off(config: GpioConfig, pin_factory: Factory | None = None) -> None:
    """Open the relay pin, drive the relay off, and release the pin again.

    For a stop helper and the daemon's start, where nothing else holds the pin. Without
    ``pin_factory`` the configured factory is made and closed here; a given factory (tests) stays
    open and belongs to the caller.
    """
    owned = pin_factory is None
    factory = make_pin_factory(config.pin_factory) if pin_factory is None else pin_factory
    try:
        AmpRelay(config, factory).close()
    except GpioError:
        if owned:
            with contextlib.suppress(Exception):
                factory.close()
        raise
    if owned:
        try:
            factory.close()
        except Exception as exc:
            raise GpioError(
                f"cannot close pin factory {config.pin_factory!r}: {_describe(exc)}"
            ) from exc


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class LocalInputs:
    """The optional input pins: the office microphone's priority switch and the amplifier's
    fault contact. gpiozero calls back on its own thread; ``on_change(name, active)`` must only
    queue an event (the daemon's inbox does)."""

    def __init__(
        self,
        config: GpioConfig,
        pin_factory: Factory,
        on_change: Callable[[str, bool], None],
    ) -> None:
        self._devices: list[Any] = []
        wanted = (("mic", config.mic_pin), ("amp_fault", config.amp_fault_pin))
        for name, pin in wanted:
            if pin is None:
                continue
            try:
                device = DigitalInputDevice(
                    pin,
                    pull_up=not config.inputs_active_high,
                    bounce_time=0.05,
                    pin_factory=pin_factory,
                )
            except Exception as exc:
                self.close()
                raise GpioError(
                    f"cannot open input pin {pin!r} ({name}): {_describe(exc)}"
                ) from exc
            device.when_activated = _reporter(on_change, name, True)
            device.when_deactivated = _reporter(on_change, name, False)
            self._devices.append((name, device))

    def current(self) -> list[tuple[str, bool]]:
        """Each input's state now, so the daemon starts from the truth, not from an edge."""
        return [(name, bool(device.is_active)) for name, device in self._devices]

    def close(self) -> None:
        for _, device in self._devices:
            with contextlib.suppress(Exception):
                device.close()
        self._devices = []


def _reporter(
    on_change: Callable[[str, bool], None], name: str, active: bool
) -> Callable[[], None]:
    def report() -> None:
        # Never let an error escape into gpiozero's thread.
        with contextlib.suppress(Exception):
            on_change(name, active)

    return report
