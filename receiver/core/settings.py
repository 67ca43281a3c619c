"""What the technician's config fixes for the life of the process, as the core reads it."""

from __future__ import annotations

from receiver.core.record import record


@record
class Settings:
    """What the technician's config fixes for the life of the process.

    No defaults here: they are the config's (``receiver/config_model.py``), and every Settings,
    the tests' too, is made from a parsed config by ``receiver.assembly.settings_from_config``.
    """

    device_id: str
    env: str
    groups: tuple[str, ...]
    topic_prefix: str
    default_volume: int
    max_volume: int
    emergency_volume: int
    max_play_duration_s: int
    warm_up_s: float
    tail_s: float
    relay_max_toggles_per_min: int
    allowed_schemes: tuple[str, ...]
    allowed_hosts: tuple[str, ...]
    max_skew_s: float
    max_command_age_s: float
    timezone: str
    quiet_hours: tuple[tuple[int, int], ...]  # (from, to) minutes after local midnight
    late_join_s: float
    stall_timeout_s: float
    stream_max_restarts: int
    # A relay that has played this long without a stall resets its restart count: the budget
    # is for consecutive failures, not for every blip of an hour-long relay.
    stream_healthy_s: float
    fallback_file: str | None
    max_file_bytes: int
    # After start-up, commands wait this long for NTP before they are judged without a
    # trusted clock: a backlog queued during an outage then meets a synchronised clock.
    sync_grace_s: float
    rejections_per_window: int
    rejection_window_s: float
    prefetch_s: float = 48 * 3600.0  # not a setting: how far ahead a programme's files come
