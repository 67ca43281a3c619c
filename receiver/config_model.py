"""The validated configuration: frozen dataclasses that the rest of the daemon reads.

:mod:`receiver.config` turns the technician's YAML file into these; nothing else parses YAML.
Defaults here are the documented defaults of ``config/receiver.example.yaml``.
"""

from __future__ import annotations

from dataclasses import field
from datetime import datetime
from pathlib import Path

from receiver.core.record import record

ROLES = ("operator", "emergency", "root")
PIN_FACTORIES = ("mock", "lgpio", "rpigpio", "pigpio", "native")
AUDIO_OUTPUTS = ("alsa", "pulse", "file")


@record
class TlsConfig:
    """Server verification is always on; a client certificate turns on mutual TLS."""

    ca_file: Path | None = None  # None: the system's CA store
    cert_file: Path | None = None
    key_file: Path | None = None


@record
class BrokerConfig:
    host: str
    port: int = 1883
    tls: TlsConfig | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    keepalive_s: int = 30
    topic_prefix: str = "loa/v1"
    session_expiry_s: int = 7 * 24 * 3600
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 120.0
    # Further brokers tried in order when the one in use is down (cluster nodes, or a standby
    # district broker): (host, port) pairs, the port defaulting to ``port``.
    failover: tuple[tuple[str, int], ...] = ()
    # While on a failover broker, how often the first one is probed; once it answers the
    # receiver moves back to it.
    failback_s: float = 300.0

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Every broker address, the preferred one (``host``/``port``) first."""
        return ((self.host, self.port), *self.failover)


@record
class TrustedKey:
    id: str
    ed25519: bytes  # the 32-byte raw public key
    roles: tuple[str, ...]
    scopes: tuple[str, ...]
    not_after: datetime | None = None


@record
class TrustConfig:
    keys: tuple[TrustedKey, ...]
    thresholds: dict[str, int] = field(
        default_factory=lambda: {"operator": 1, "emergency": 1, "root": 2}
    )


@record
class PlayerConfig:
    output: str = "alsa"  # alsa | pulse | file
    alsa_device: str | None = None  # e.g. "default" or "hw:CARD=Headphones"; None: libVLC's choice
    wav_file: Path | None = None  # where output "file" writes
    vlc_args: tuple[str, ...] = ()
    default_volume: int = 70
    max_volume: int = 100
    max_play_duration_s: int = 3600
    # Live relays: a stream whose position does not advance for this long is restarted (libVLC
    # keeps saying "playing" when a source stops sending); after this many restarts the
    # fallback file plays for the rest of the window, or the relay is reported failed.
    stall_timeout_s: float = 8.0
    stream_max_restarts: int = 3
    # The restart count is of consecutive failures: a relay that has played this long since
    # its last (re)start without stalling has its count reset.
    stream_healthy_s: float = 30.0
    fallback_file: Path | None = None


@record
class GpioConfig:
    pin_factory: str = "mock"  # mock | lgpio | rpigpio | pigpio | native
    amp_pin: str = "GPIO17"
    active_high: bool = True
    warm_up_s: float = 1.0
    tail_s: float = 5.0
    mic_pin: str | None = None  # the office microphone's priority switch (input), if wired
    amp_fault_pin: str | None = None  # the amplifier's fault contact (input), if wired
    inputs_active_high: bool = False  # inputs pulled up, switch to ground: active low


@record
class MediaConfig:
    allowed_schemes: tuple[str, ...] = ("https",)
    allowed_hosts: tuple[str, ...] = ()
    max_file_bytes: int = 200 * 1024 * 1024
    fetch_deadline_s: float = 600.0
    cache_quota_bytes: int = 1024 * 1024 * 1024


@record
class PolicyConfig:
    """Local limits that no signed message can exceed (docs/security.md)."""

    timezone: str = "Asia/Ho_Chi_Minh"
    quiet_hours: tuple[tuple[int, int], ...] = ()  # (from, to) minutes after local midnight
    emergency_volume: int = 100
    relay_max_toggles_per_min: int = 6
    late_join_s: float = 300.0
    # Refused messages reported one by one per window; beyond it a flood is summed up.
    rejections_per_window: int = 100
    rejection_window_s: float = 10.0


@record
class StorageConfig:
    state_dir: Path = Path("/var/lib/loa-receiver")
    cache_dir: Path = Path("/var/cache/loa-receiver")


@record
class LoggingConfig:
    level: str = "info"  # debug | info | warning | error
    format: str = "auto"  # auto (console on a terminal, JSON otherwise) | json | console


@record
class ClockConfig:
    # auto: trust the wall clock only while the kernel says it is synchronised (NTP);
    # always: trust it (a board with a battery-backed RTC); never: only signed message times.
    trust_system_clock: str = "auto"
    max_skew_s: int = 300
    # Commands issued longer ago than this are refused even if their exp is later, so a backlog
    # queued while the link was down does not play hours late.
    max_command_age_s: int = 3600
    # After start-up, commands wait up to this long for NTP before they are judged without a
    # synchronised clock.
    sync_grace_s: int = 30


@record
class Config:
    device_id: str
    env: str
    groups: tuple[str, ...]
    broker: BrokerConfig
    trust: TrustConfig
    player: PlayerConfig = PlayerConfig()
    gpio: GpioConfig = GpioConfig()
    media: MediaConfig = MediaConfig()
    policy: PolicyConfig = PolicyConfig()
    storage: StorageConfig = StorageConfig()
    logging: LoggingConfig = LoggingConfig()
    clock: ClockConfig = ClockConfig()
    source: Path | None = None  # the file it was read from
