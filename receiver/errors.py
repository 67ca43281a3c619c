"""The receiver's exceptions: one base, one subclass per domain.

An exception of this family is an *expected* failure of the world outside the code: a config a
technician got wrong, media that cannot be fetched, libVLC or a GPIO pin refusing, a broker that
cannot be reached, a state file that cannot be written. The loop reports those and goes on;
anything else escaping an adapter is a bug, and is logged as one, with its traceback.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ConfigError",
    "GpioError",
    "LinkError",
    "MediaError",
    "PlayerError",
    "ReceiverError",
    "StoreError",
]


class ReceiverError(Exception):
    """Base of every exception the receiver raises on purpose."""


class ConfigError(ReceiverError, ValueError):
    """The config file cannot be used; ``problems`` lists every reason, one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))


class MediaError(ReceiverError):
    """A media file could not be fetched, verified or kept in the cache."""


class PlayerError(ReceiverError, RuntimeError):
    """libVLC is missing, refused its arguments, or refused to do what was asked."""


class VlcArgsRefusedError(PlayerError):
    """libVLC refuses the config's ``player.vlc_args``: no restart mends that."""


class GpioError(ReceiverError, RuntimeError):
    """The relay pin or an input pin could not be set up, switched, read or released."""


class LinkError(ReceiverError, RuntimeError):
    """The MQTT link was misused or cannot be set up (bad TLS files, invalid topic, ...)."""


class TlsFilesError(LinkError):
    """The TLS files the config names cannot be loaded: a config error, no restart mends it."""


class StoreError(ReceiverError, RuntimeError):
    """A state file (the store or the outbox) cannot be used at all (permissions, disk full)."""
