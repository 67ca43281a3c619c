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
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from gpiozero import DigitalInputDevice, OutputDevice
from gpiozero.exc import GPIOPinInUse, PinFixedPull, PinInvalidPin, PinInvalidPull
from gpiozero.pins import Factory
from gpiozero.pins.mock import MockFactory

from receiver.config_model import PIN_FACTORIES, GpioConfig
from receiver.errors import GpioError
from receiver.i18n import gettext_ as _

__all__ = [
    "SAVED_SETTINGS_FILE",
    "AmpRelay",
    "GpioError",
    "PinFactoryMissingError",
    "PinRefusedError",
    "force_off",
    "load_saved_settings",
    "make_pin_factory",
    "missing_pin_factory",
    "pin_problem",
    "save_settings",
]

#: The relay's settings as the daemon last started with them, in its state directory: the stop
#: helper falls back to them when the config file has become unreadable since.
SAVED_SETTINGS_FILE: Final = "relay-gpio.json"


class PinFactoryMissingError(GpioError):
    """The configured pin factory's module is not installed: no restart can fix that."""


class PinRefusedError(GpioError):
    """gpiozero refused a configured pin as the config asks for it: one pin used twice (under
    two names, ``GPIO17`` and ``BOARD11``), a pin this board does not have, a pull resistor the
    pin cannot have. A mistake in the config, which no restart can fix."""


# gpiozero's refusals of a pin as configured (not a pin library failing underneath).
_CONFIG_REFUSALS = (GPIOPinInUse, PinInvalidPin, PinFixedPull, PinInvalidPull)


def _pin_error(message: str, exc: Exception) -> GpioError:
    cls = PinRefusedError if isinstance(exc, _CONFIG_REFUSALS) else GpioError
    return cls(f"{message}: {_describe(exc)}")


# name -> (gpiozero module, factory class, what to install when the import fails: the
# technician reads it from check-config, in the language's words)
_FACTORIES: dict[str, tuple[str, str, Callable[[], str]]] = {
    "lgpio": (
        "gpiozero.pins.lgpio",
        "LGPIOFactory",
        lambda: _(
            "install the Debian package python3-lgpio (in a virtualenv: pip install lgpio, or "
            "create the virtualenv with --system-site-packages)"
        ),
    ),
    "rpigpio": (
        "gpiozero.pins.rpigpio",
        "RPiGPIOFactory",
        lambda: _(
            "install the Debian package python3-rpi.gpio (in a virtualenv: pip install "
            "RPi.GPIO); RPi.GPIO does not work on a Raspberry Pi 5, use pin_factory: lgpio there"
        ),
    ),
    "pigpio": (
        "gpiozero.pins.pigpio",
        "PiGPIOFactory",
        lambda: _(
            "install the Debian package python3-pigpio (in a virtualenv: pip install pigpio) "
            "and run the pigpiod daemon (package pigpio)"
        ),
    ),
    "native": (
        "gpiozero.pins.native",
        "NativeFactory",
        lambda: _("the native factory needs no extra package; check that gpiozero is installed"),
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
    module_name, class_name, _ = _FACTORIES[name]
    try:
        factory_class: Any = getattr(importlib.import_module(module_name), class_name)
    except Exception as exc:  # ImportError, or a module too old or broken to import
        raise PinFactoryMissingError(_missing_message(name, exc)) from exc
    try:
        return factory_class()
    except Exception as exc:
        raise GpioError(
            f"pin factory {name!r} failed to start: {_describe(exc)}; {_START_HINTS[name]}"
        ) from exc


def _missing_message(name: str, exc: Exception) -> str:
    if isinstance(exc, ImportError):
        missing = _(" (missing module {module!r})").format(module=exc.name) if exc.name else ""
    else:
        missing = _(" (its module does not load: {error})").format(error=_describe(exc))
    message = _("pin factory {name!r} is not available{missing}: {install}")
    return message.format(name=name, missing=missing, install=_FACTORIES[name][2]())


def missing_pin_factory(name: str) -> str | None:
    """Why pin factory ``name`` cannot be imported here, or None if it can (nothing is opened).

    For ``check-config`` and the daemon's start: a missing module is a configuration problem
    that a restart cannot fix.
    """
    if name not in _FACTORIES:
        return None
    try:
        importlib.import_module(_FACTORIES[name][0])
    except Exception as exc:
        return _missing_message(name, exc)
    return None


def pin_problem(config: GpioConfig) -> str | None:
    """Why gpiozero would refuse the configured pins (:class:`PinRefusedError`), or None.

    The pins are opened as the daemon opens them, on gpiozero's mock of a 40-pin board, so
    ``check-config`` finds what the daemon's start would stop at without touching a real pin.
    """
    factory = MockFactory()
    relay: AmpRelay | None = None
    try:
        relay = AmpRelay(config, factory)
        LocalInputs(config, factory, lambda name, active: None).close()
    except PinRefusedError as exc:
        return str(exc)
    except GpioError:  # anything else is the mock's, not the config's
        return None
    finally:
        if relay is not None:
            with contextlib.suppress(GpioError):
                relay.close()
        factory.close()
    return None


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
            raise _pin_error(f"cannot open relay pin {config.amp_pin!r}", exc) from exc
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


def save_settings(state_dir: Path, config: GpioConfig) -> None:
    """Keep the relay's pin settings for ``relay-off`` (atomic replace; raises OSError)."""
    wanted = {
        "pin_factory": config.pin_factory,
        "amp_pin": config.amp_pin,
        "active_high": config.active_high,
    }
    path = state_dir / SAVED_SETTINGS_FILE
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(wanted) + "\n", encoding="utf-8")
    os.replace(temp, path)


def load_saved_settings(state_dir: Path) -> GpioConfig | None:
    """The settings :func:`save_settings` kept, or None if there are none usable."""
    try:
        saved = json.loads((state_dir / SAVED_SETTINGS_FILE).read_text(encoding="utf-8"))
        factory, pin, active_high = saved["pin_factory"], saved["amp_pin"], saved["active_high"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (
        factory not in PIN_FACTORIES
        or not isinstance(pin, str)
        or not isinstance(active_high, bool)
    ):
        return None
    return GpioConfig(pin_factory=factory, amp_pin=pin, active_high=active_high)


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
                raise _pin_error(f"cannot open input pin {pin!r} ({name})", exc) from exc
            device.when_activated = _reporter(on_change, name, True)
            device.when_deactivated = _reporter(on_change, name, False)
            self._devices.append((name, device))

    def current(self) -> list[tuple[str, bool]]:
        """Each input's state now, so the daemon starts from the truth, not from an edge."""
        return [(name, bool(device.is_active)) for name, device in self._devices]

    def close(self) -> None:
        for _name, device in self._devices:
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
