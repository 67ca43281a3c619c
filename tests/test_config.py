"""The YAML config loader: what a technician writes, what the daemon gets, what errors say.

Most cases are tables of YAML snippets. ``problems(text)`` returns every problem of a file with
the source prefix (``SRC:``) cut off, so a row reads ``"3:5: broker.port: ..."``.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver import config as config_module
from receiver.config import ConfigError, config_warnings, load_config, parse_config
from receiver.config_model import (
    ClockConfig,
    Config,
    GpioConfig,
    LoggingConfig,
    MediaConfig,
    PlayerConfig,
    StorageConfig,
    TlsConfig,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "receiver.example.yaml"
SRC = "/etc/loa-receiver/receiver.yaml"
KEY = base64.b64encode(bytes(range(32))).decode()
KEY2 = base64.b64encode(bytes(range(32, 64))).decode()
SECRET = "Tr0ub4dor&3-horse"
# Tails of long messages, shared by several rows of the tables below.
ID_RULE = (
    "(1-64 characters: lowercase letters, digits, '.', '_' or '-', starting with a letter or digit)"
)
RFC3339 = (
    "is not an RFC 3339 time with a time zone "
    "(e.g. 2027-12-31T23:59:59Z or 2027-12-31T23:59:59+07:00)"
)
APART = "must be apart from storage.state_dir (neither inside the other)"
TOPIC = (
    "is not a topic prefix: use levels of A-Z a-z 0-9 . _ - joined by '/', "
    "no wildcards and no leading or trailing '/'"
)
NO_SETTINGS = "the file holds no settings (see config/receiver.example.yaml)"

HEAD = "device_id: loa-1\nenv: lab\ngroups: [commune-1]\n"
BROKER = "broker:\n  host: mqtt.example.vn\n"
TRUST = f"trust:\n  keys:\n    - {{id: k1, ed25519: '{KEY}', roles: [operator], scopes: ['*']}}\n"
MINIMAL = HEAD + BROKER + TRUST


def problems(text: str, source: str = SRC) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source)
    prefix = f"{source}:"
    assert all(p.startswith(prefix) for p in caught.value.problems), caught.value.problems
    return [p.removeprefix(prefix) for p in caught.value.problems]


def only_problem(text: str) -> str:
    """The single problem of ``text``, as ``dotted.key: message`` (position cut off)."""
    found = problems(text)
    assert len(found) == 1, found
    return found[0].split(": ", 1)[1]


# --- files that load ---------------------------------------------------------------------------


def test_example_file_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.source == EXAMPLE
    assert config.player.output == "alsa"
    assert config.gpio.pin_factory == "lgpio"
    assert config.broker.tls is None
    assert config.broker.password is None
    assert config.storage == StorageConfig(
        state_dir=Path("/var/lib/loa-receiver"), cache_dir=Path("/var/cache/loa-receiver")
    )
    (key,) = config.trust.keys
    assert "placeholder" in key.id
    assert len(key.ed25519) == 32


def test_example_file_documents_every_key() -> None:
    """Each setting of the loader appears in the example, at least as a commented-out line."""
    text = EXAMPLE.read_text(encoding="utf-8")
    names = [
        "device_id", "env", "groups", "broker", "host", "port", "tls", "ca_file", "cert_file",
        "key_file", "username", "password", "password_file", "keepalive_s", "topic_prefix",
        "session_expiry_s", "reconnect_min_s", "reconnect_max_s", "failover", "failback_s",
        "trust", "keys", "id",
        "ed25519", "roles", "scopes", "not_after", "thresholds", "operator", "emergency", "root",
        "player", "output", "alsa_device", "wav_file", "vlc_args", "default_volume", "max_volume",
        "max_play_duration_s", "gpio", "pin_factory", "amp_pin", "active_high", "warm_up_s",
        "tail_s", "media", "allowed_schemes", "allowed_hosts", "max_file_bytes",
        "fetch_deadline_s", "cache_quota_bytes", "storage", "state_dir", "cache_dir", "logging",
        "level", "format", "clock", "trust_system_clock", "max_skew_s",
    ]  # fmt: skip
    missing = [name for name in names if f"{name}:" not in text]
    assert missing == []


def test_minimal_file_gets_the_model_defaults() -> None:
    config = parse_config(MINIMAL, SRC)
    assert config.source == Path(SRC)
    assert (config.device_id, config.env, config.groups) == ("loa-1", "lab", ("commune-1",))
    assert config.broker.host == "mqtt.example.vn"
    assert config.broker.port == 1883
    assert config.broker.tls is None
    assert (config.broker.username, config.broker.password) == (None, None)
    assert config.broker.topic_prefix == "loa/v1"
    assert config.trust.thresholds == {"operator": 1, "emergency": 1, "root": 2}
    assert config.trust.keys[0].ed25519 == bytes(range(32))
    assert config.trust.keys[0].not_after is None
    assert config.player == PlayerConfig()
    assert config.gpio == GpioConfig()
    assert config.media == MediaConfig()
    assert config.storage == StorageConfig()
    assert config.logging == LoggingConfig()
    assert config.clock == ClockConfig()


def test_empty_sections_mean_defaults() -> None:
    """A section whose keys are all commented out is an empty section, not an error."""
    config = parse_config(MINIMAL + "player:\n  # output: file\ngpio:\n", SRC)
    assert config.player == PlayerConfig()
    assert config.gpio == GpioConfig()


def test_tls_defaults_the_port_to_8883() -> None:
    config = parse_config(HEAD + BROKER + "  tls: {}\n" + TRUST, SRC)
    assert config.broker.tls == TlsConfig()
    assert config.broker.port == 8883
    config = parse_config(HEAD + BROKER + "  tls: {}\n  port: 443\n" + TRUST, SRC)
    assert config.broker.port == 443


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "broker").write_text(SECRET + "\n", encoding="utf-8")
    path = tmp_path / "receiver.yaml"
    path.write_text(
        HEAD
        + BROKER
        + "  username: loa-1\n"
        + "  password_file: secrets/broker\n"
        + "  tls: {ca_file: ca.pem, cert_file: tls/dev.crt, key_file: /abs/dev.key}\n"
        + TRUST
        + "player: {output: file, wav_file: out/play.wav}\n"
        + "storage: {state_dir: state, cache_dir: ../cache}\n",
        encoding="utf-8",
    )
    config = load_config(path)
    assert config.broker.password == SECRET
    assert config.broker.tls == TlsConfig(
        ca_file=tmp_path / "ca.pem",
        cert_file=tmp_path / "tls" / "dev.crt",
        key_file=Path("/abs/dev.key"),
    )
    assert config.player.wav_file == tmp_path / "out" / "play.wav"
    assert config.storage == StorageConfig(
        state_dir=tmp_path / "state", cache_dir=tmp_path / ".." / "cache"
    )
    assert config.source == path


def test_parse_config_resolves_against_the_source_directory() -> None:
    config = parse_config(MINIMAL + "storage: {state_dir: st, cache_dir: ca}\n", SRC)
    assert config.storage.state_dir == Path("/etc/loa-receiver/st")


NOT_AFTER_UTC7 = datetime(2027, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=7)))


@pytest.mark.parametrize(
    ("snippet", "attribute", "expected"),
    [
        ("gpio: {amp_pin: 17}", "gpio.amp_pin", "GPIO17"),
        ("gpio: {amp_pin: bcm4}", "gpio.amp_pin", "GPIO4"),
        ("gpio: {amp_pin: GPIO27}", "gpio.amp_pin", "GPIO27"),
        ("gpio: {amp_pin: BOARD11}", "gpio.amp_pin", "BOARD11"),
        ("gpio: {active_high: false}", "gpio.active_high", False),
        ("gpio: {active_high: True}", "gpio.active_high", True),
        ("gpio: {warm_up_s: 0}", "gpio.warm_up_s", 0.0),
        ("gpio: {tail_s: 2.5}", "gpio.tail_s", 2.5),
        ("player: {default_volume: 070}", "player.default_volume", 70),  # not YAML 1.1 octal
        ("player: {vlc_args: [--no-video, -q]}", "player.vlc_args", ("--no-video", "-q")),
        ("player: {alsa_device: 'hw:CARD=Headphones'}", "player.alsa_device", "hw:CARD=Headphones"),
        ("media: {max_file_bytes: 1_000_000}", "media.max_file_bytes", 1_000_000),
        (
            "media: {allowed_hosts: [Media.Example.VN,"
            " 'cdn.example.vn:8443', '[::1]:80', 10.0.0.1]}",
            "media.allowed_hosts",
            ("media.example.vn", "cdn.example.vn:8443", "[::1]:80", "10.0.0.1"),
        ),
        ("media: {allowed_schemes: [http, https]}", "media.allowed_schemes", ("http", "https")),
        ("media: {allowed_schemes: []}", "media.allowed_schemes", ()),
        ("logging: {level: debug, format: json}", "logging.level", "debug"),
        ("clock: {trust_system_clock: never}", "clock.trust_system_clock", "never"),
        ("env: no", "env", "no"),  # YAML 1.1 would make it False
        ("groups: []", "groups", ()),
        ("groups: [2025, a.b_c-d]", "groups", ("2025", "a.b_c-d")),
    ],
)
def test_values_are_converted(snippet: str, attribute: str, expected: object) -> None:
    text = MINIMAL + snippet + "\n"
    key = snippet.split(":", maxsplit=1)[0]
    if key in ("env", "groups"):  # replace that line of MINIMAL instead
        text = "\n".join(
            snippet if line.startswith(f"{key}:") else line for line in MINIMAL.split("\n")
        )
    value: object = parse_config(text, SRC)
    for name in attribute.split("."):
        value = getattr(value, name)
    assert value == expected


def test_trusted_key_fields() -> None:
    keys = (
        f"trust:\n  keys:\n"
        f"    - id: central-1\n      ed25519: {KEY}\n      roles: [operator, emergency]\n"
        f"      scopes: [commune-1, loa-1]\n      not_after: 2027-12-31T23:59:59+07:00\n"
        f"    - id: root-1\n      ed25519: {KEY2}\n      roles: [root]\n      scopes: ['*']\n"
        f"      not_after: '2027-12-31T16:59:59.5Z'\n"
        f"  thresholds: {{root: 1}}\n"
    )
    config = parse_config(HEAD + BROKER + keys, SRC)
    first, second = config.trust.keys
    assert (first.id, first.roles, first.scopes) == (
        "central-1",
        ("operator", "emergency"),
        ("commune-1", "loa-1"),
    )
    assert first.not_after == NOT_AFTER_UTC7
    assert second.ed25519 == bytes(range(32, 64))
    assert second.not_after == datetime(2027, 12, 31, 16, 59, 59, 500000, tzinfo=UTC)
    assert config.trust.thresholds == {"operator": 1, "emergency": 1, "root": 1}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("password: 0123", "0123"),  # a string setting keeps its text: not octal 83
        (f"password: '{SECRET}'", SECRET),
        ("password: yes", "yes"),
    ],
)
def test_password_is_taken_as_written(line: str, expected: str) -> None:
    config = parse_config(HEAD + BROKER + f"  username: u\n  {line}\n" + TRUST, SRC)
    assert config.broker.password == expected
    assert expected not in repr(config)


# --- many problems at once, each at its place ------------------------------------------------

MANY_PROBLEMS = f"""\
devce_id: loa-1
env: Lab
groups: [commune-1, commune-1]
broker:
  hots: mqtt.example.vn
  port: 70000
trust:
  keys:
    - id: k1
      ed25519: {KEY}
      roles: [operater]
      scopes: ['*']
player:
  default_volume: 101
  output: file
gpio:
  active_high: yes
logging: {{level: INFO}}
"""


def test_every_problem_is_reported_with_its_position() -> None:
    assert problems(MANY_PROBLEMS) == [
        "1:1: devce_id: unknown key (did you mean 'device_id'?)",
        "1:1: device_id: missing (required)",
        f"2:6: env: 'Lab' is not a valid id {ID_RULE}",
        "3:21: groups[1]: same value as groups[0]",
        "5:3: broker.hots: unknown key (did you mean 'host'?)",
        "5:3: broker.host: missing (required)",
        "6:9: broker.port: 70000 is out of range: use 1 to 65535",
        "11:15: trust.keys[0].roles[0]: 'operater' is not one of: operator, emergency, root "
        "(did you mean 'operator'?)",
        "14:19: player.default_volume: 101 is out of range: use 0 to 100 percent",
        "17:16: gpio.active_high: write true or false, not 'yes'",
        "18:18: logging.level: 'INFO' is not one of: debug, info, warning, error "
        "(did you mean 'info'?)",
    ]


def test_config_error_is_a_value_error_listing_every_problem() -> None:
    with pytest.raises(ValueError, match="devce_id") as caught:
        parse_config(MANY_PROBLEMS, SRC)
    assert isinstance(caught.value, ConfigError)
    assert str(caught.value) == "\n".join(caught.value.problems)
    assert len(caught.value.problems) == 11


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            MINIMAL.replace("device_id", "devce_id"),
            "devce_id: unknown key (did you mean 'device_id'?)",
        ),
        (MINIMAL.replace("host", "hots"), "broker.hots: unknown key (did you mean 'host'?)"),
        (MINIMAL + "plyer: {}\n", "plyer: unknown key (did you mean 'player'?)"),
        (
            MINIMAL + "gpio: {amp_pins: 17}\n",
            "gpio.amp_pins: unknown key (did you mean 'amp_pin'?)",
        ),
        (
            MINIMAL.replace("roles", "role"),
            "trust.keys[0].role: unknown key (did you mean 'roles'?)",
        ),
        (
            MINIMAL + "  thresholds: {roots: 2}\n",
            "trust.thresholds.roots: unknown key (did you mean 'root'?)",
        ),
        (MINIMAL + "volume: 3\n", "volume: unknown key"),
    ],
)
def test_unknown_keys_suggest_the_closest(text: str, expected: str) -> None:
    found = problems(text)
    assert expected in [p.split(": ", 1)[1] for p in found]


def test_missing_keys_are_reported_at_their_parent_mapping() -> None:
    text = HEAD + "broker:\n  port: 1883\n" + "trust:\n  keys:\n    - id: k1\n      roles: [root]\n"
    assert problems(text) == [
        "5:3: broker.host: missing (required)",
        "8:7: trust.keys[0].ed25519: missing (required)",
        "8:7: trust.keys[0].scopes: missing (required)",
    ]
    assert problems("device_id: loa-1\n") == [
        "1:1: env: missing (required)",
        "1:1: groups: missing (required)",
        "1:1: broker: missing (required)",
        "1:1: trust: missing (required)",
    ]


def test_duplicate_keys_are_reported() -> None:
    text = MINIMAL + "logging: {level: info}\nlogging:\n  level: debug\n"
    assert problems(text) == [
        "10:1: logging: duplicate key (first set on line 9): keep one of the two"
    ]


# --- one bad value at a time ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        # types
        (
            "player: {max_volume: '80'}",
            "player.max_volume: expected an integer, got a string ('80'): remove the quotes",
        ),
        ("player: {max_volume: true}", "player.max_volume: expected an integer, got a boolean"),
        ("player: {max_volume: 8.5}", "player.max_volume: expected an integer, got a number"),
        ("player: {max_volume: [80]}", "player.max_volume: expected an integer, got a list"),
        ("player: {max_volume: }", "player.max_volume: expected an integer, got nothing"),
        (
            "player: {max_volume: 0x50}",
            "player.max_volume: write '0x50' as a plain decimal integer",
        ),
        (
            "clock: {max_skew_s: " + "9" * 5000 + "}",
            f"clock.max_skew_s: '{'9' * 57}...' is too large",
        ),
        ("clock: {max_skew_s: 1:30}", "clock.max_skew_s: write '1:30' as a plain decimal integer"),
        ("gpio: {tail_s: fast}", "gpio.tail_s: expected a number, got a string"),
        ("gpio: {tail_s: .inf}", "gpio.tail_s: must be a finite number"),
        ("gpio: {active_high: 1}", "gpio.active_high: expected true or false, got an integer"),
        ("gpio: {active_high: 'true'}", "gpio.active_high: expected true or false, got a string"),
        ("gpio: {active_high: off}", "gpio.active_high: write true or false, not 'off'"),
        ("player: {output: {alsa: 1}}", "player.output: expected a string, got a mapping"),
        (
            "player: {vlc_args: --no-video}",
            "player.vlc_args: expected a list, got a string (write [a, b] or '- a' lines)",
        ),
        ("player: 3", "player: expected a mapping of settings, got an integer"),
        ("player: {vlc_args: ['']}", "player.vlc_args[0]: is empty"),
        (
            "player: {alsa_device: !custom hw}",
            "player.alsa_device: expected a string, got a value tagged !custom",
        ),
        # ranges
        (
            "player: {default_volume: -1}",
            "player.default_volume: -1 is out of range: use 0 to 100 percent",
        ),
        (
            "player: {max_play_duration_s: 0}",
            "player.max_play_duration_s: 0 is out of range: use 1 to 86400 seconds",
        ),
        (
            "player: {max_play_duration_s: 86401}",
            "player.max_play_duration_s: 86401 is out of range: use 1 to 86400 seconds",
        ),
        ("gpio: {warm_up_s: 61}", "gpio.warm_up_s: 61 is out of range: use 0 to 60 seconds"),
        ("gpio: {tail_s: -0.5}", "gpio.tail_s: -0.5 is out of range: use 0 to 60 seconds"),
        (
            "media: {max_file_bytes: 0}",
            "media.max_file_bytes: 0 is too small: use at least 1 bytes",
        ),
        (
            "media: {cache_quota_bytes: -5}",
            "media.cache_quota_bytes: -5 is too small: use at least 1 bytes",
        ),
        # choices
        ("player: {output: jack}", "player.output: 'jack' is not one of: alsa, pulse, file"),
        (
            "gpio: {pin_factory: lgpi}",
            "gpio.pin_factory: 'lgpi' is not one of: mock, lgpio, rpigpio, pigpio, native "
            "(did you mean 'lgpio'?)",
        ),
        ("logging: {format: text}", "logging.format: 'text' is not one of: auto, json, console"),
        (
            "clock: {trust_system_clock: yes}",
            "clock.trust_system_clock: 'yes' is not one of: auto, always, never",
        ),
        (
            "media: {allowed_schemes: [ftp]}",
            "media.allowed_schemes[0]: 'ftp' is not one of: http, https",
        ),
        (
            "media: {allowed_schemes: [https, https]}",
            "media.allowed_schemes[1]: same value as media.allowed_schemes[0]",
        ),
        # pins
        (
            "gpio: {amp_pin: 28}",
            "gpio.amp_pin: GPIO28 is not on the 40-pin header: use GPIO0 to GPIO27",
        ),
        (
            "gpio: {amp_pin: BOARD6}",
            "gpio.amp_pin: header pin 6 is not a GPIO pin (it is power or ground)",
        ),
        (
            "gpio: {amp_pin: BOARD41}",
            "gpio.amp_pin: there is no header pin 41: use BOARD1 to BOARD40",
        ),
        (
            "gpio: {amp_pin: pin17}",
            "gpio.amp_pin: expected a BCM number (17) or a pin name like GPIO17, BCM17 or BOARD11, "
            "got 'pin17'",
        ),
        # hosts
        (
            "media: {allowed_hosts: ['https://media.example.vn']}",
            "media.allowed_hosts[0]: 'https://media.example.vn': "
            "write only a host name or host:port, not a URL",
        ),
        (
            "media: {allowed_hosts: ['*.example.vn']}",
            "media.allowed_hosts[0]: '*.example.vn' is not a host name or host:port",
        ),
        (
            "media: {allowed_hosts: ['media.example.vn:0']}",
            "media.allowed_hosts[0]: 'media.example.vn:0': the port must be 1 to 65535",
        ),
        (
            "media: {allowed_hosts: ['a b']}",
            "media.allowed_hosts[0]: 'a b' is not a host name or host:port",
        ),
        (
            "media: {allowed_hosts: [A.example.vn, a.example.vn]}",
            "media.allowed_hosts[1]: same value as media.allowed_hosts[0]",
        ),
        # paths
        (
            "storage: {state_dir: ~/state}",
            "storage.state_dir: '~/state': '~' is not expanded here, write the full path",
        ),
        ("storage: {state_dir: ''}", "storage.state_dir: is empty"),
    ],
)
def test_a_bad_value_is_reported(snippet: str, expected: str) -> None:
    assert only_problem(MINIMAL + snippet + "\n") == expected


@pytest.mark.parametrize(
    ("broker", "expected"),
    [
        (
            "  host: mqtt://mqtt.example.vn",
            "broker.host: 'mqtt://mqtt.example.vn': write the host name alone, without a scheme",
        ),
        (
            "  host: 'mqtt.example.vn:1883'",
            "broker.host: 'mqtt.example.vn:1883': "
            "write the host name alone; the port goes in broker.port",
        ),
        ("  host: mqtt_example", "broker.host: 'mqtt_example' is not a host name or IP address"),
        ("  host: -bad.example", "broker.host: '-bad.example' is not a host name or IP address"),
        ("  host: 10.0.0.300", "broker.host: '10.0.0.300' is not a host name or IP address"),
        ("  host: x\n  port: 0", "broker.port: 0 is out of range: use 1 to 65535"),
        (
            "  host: x\n  tls: true",
            "broker.tls: write 'tls: {}' for TLS with the system's CAs, or leave tls out",
        ),
        (
            "  host: x\n  tls: {cert_file: a.crt}",
            "broker.tls.key_file: cert_file and key_file go together: set both or neither",
        ),
        (
            "  host: x\n  tls: {key_file: a.key}",
            "broker.tls.cert_file: cert_file and key_file go together: set both or neither",
        ),
        ("  host: x\n  topic_prefix: loa/#", f"broker.topic_prefix: 'loa/#' {TOPIC}"),
        ("  host: x\n  topic_prefix: /loa", f"broker.topic_prefix: '/loa' {TOPIC}"),
        (
            "  host: x\n  reconnect_min_s: 10\n  reconnect_max_s: 5",
            "broker.reconnect_max_s: must not be below broker.reconnect_min_s",
        ),
        (
            "  host: x\n  session_expiry_s: 5000000000",
            "broker.session_expiry_s: 5000000000 is out of range: use 0 to 4294967295 seconds",
        ),
        (
            "  host: x\n  keepalive_s: 0",
            "broker.keepalive_s: 0 is out of range: use 5 to 65535 seconds",
        ),
        ("  host: x\n  username: ''", "broker.username: is empty"),
    ],
)
def test_a_bad_broker_setting_is_reported(broker: str, expected: str) -> None:
    assert only_problem(HEAD + "broker:\n" + broker + "\n" + TRUST) == expected


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        (
            "player: {default_volume: 90, max_volume: 80}",
            "player.default_volume: must not be above player.max_volume (80)",
        ),
        ("player: {default_volume: 90, max_volume: 90}", None),
        (
            "player: {default_volume: 80, max_volume: 70}",
            "player.default_volume: must not be above player.max_volume (70)",
        ),
        ("player: {output: file}", "player.wav_file: required when player.output is 'file'"),
        (
            "media: {max_file_bytes: 2000, cache_quota_bytes: 1000}",
            "media.cache_quota_bytes: must not be below media.max_file_bytes",
        ),
        (
            "media: {max_file_bytes: 2000000000}",
            "media.cache_quota_bytes: must not be below media.max_file_bytes",
        ),
        (
            "storage: {state_dir: /var/lib/loa, cache_dir: /var/lib/loa}",
            f"storage.cache_dir: {APART}",
        ),
        (
            "storage: {state_dir: /var/lib/loa, cache_dir: /var/lib/loa/cache}",
            f"storage.cache_dir: {APART}",
        ),
        ("storage: {cache_dir: /var/lib/loa-receiver/media}", f"storage.cache_dir: {APART}"),
        ("storage: {state_dir: /var/cache/loa-receiver/state}", f"storage.cache_dir: {APART}"),
        # one pin named two ways: header pin 11 is GPIO17 on every 40-pin board
        (
            "gpio: {amp_pin: GPIO17, mic_pin: BOARD11}",
            "gpio.mic_pin: BOARD11 is GPIO17, which is already used by gpio.amp_pin",
        ),
        (
            "gpio: {amp_pin: BOARD11, mic_pin: BCM17}",
            "gpio.mic_pin: GPIO17 is already used by gpio.amp_pin",
        ),
        (
            "gpio: {amp_pin: GPIO17, mic_pin: GPIO27, amp_fault_pin: BOARD13}",
            "gpio.amp_fault_pin: BOARD13 is GPIO27, which is already used by gpio.mic_pin",
        ),
        ("gpio: {amp_pin: BOARD11, mic_pin: BOARD13, amp_fault_pin: GPIO22}", None),
    ],
)
def test_rules_across_fields(snippet: str, expected: str | None) -> None:
    if expected is None:
        parse_config(MINIMAL + snippet + "\n", SRC)
    else:
        assert only_problem(MINIMAL + snippet + "\n") == expected


# --- trust ------------------------------------------------------------------------------------


def key_with(**fields: str) -> str:
    entry = {"id": "k1", "ed25519": f"'{KEY}'", "roles": "[operator]", "scopes": "['*']"}
    entry.update(fields)
    body = ", ".join(f"{name}: {value}" for name, value in entry.items() if value != "-")
    return HEAD + BROKER + f"trust:\n  keys:\n    - {{{body}}}\n"


SPKI = bytes.fromhex("302a300506032b6570032100") + bytes(range(32))
B64 = base64.b64encode


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc", "is not valid base64"),
        ("'AAAA'", "decodes to 3 bytes"),
        (f"'{B64(bytes(31)).decode()}'", "decodes to 31 bytes"),
        (f"'{B64(bytes(33)).decode()}'", "decodes to 33 bytes"),
        (f"'{KEY.rstrip('=')}'", "is not valid base64"),  # padding is required
        (f"'{KEY[:-2]}B='", "is not canonical base64"),  # spare bits set
        (f"'{base64.urlsafe_b64encode(bytes([251] * 32)).decode()}'", "is not valid base64"),
        (f"'{KEY[:20]} {KEY[20:]}'", "is not valid base64"),
        (f"'{B64(SPKI).decode()}'", "is a DER SubjectPublicKeyInfo (44 bytes)"),
        (f"'ssh-ed25519 {KEY} me@host'", "looks like an OpenSSH or PEM key"),
        ("'-----BEGIN PUBLIC KEY-----'", "looks like an OpenSSH or PEM key"),
        ("''", "is empty"),
        ("[a]", "expected a string, got a list"),
    ],
)
def test_bad_public_keys(value: str, expected: str) -> None:
    assert only_problem(key_with(ed25519=value)).startswith(f"trust.keys[0].ed25519: {expected}")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"id": "''"}, "trust.keys[0].id: is empty"),
        ({"id": "'" + "k" * 65 + "'"}, "trust.keys[0].id: is 65 characters long: use at most 64"),
        (
            {"id": "'central 1'"},
            "trust.keys[0].id: 'central 1' must not contain spaces or control characters",
        ),
        ({"roles": "[]"}, "trust.keys[0].roles: needs at least 1 item"),
        (
            {"roles": "[root, admin]"},
            "trust.keys[0].roles[1]: 'admin' is not one of: operator, emergency, root",
        ),
        ({"roles": "[root, root]"}, "trust.keys[0].roles[1]: same value as trust.keys[0].roles[0]"),
        (
            {"roles": "operator"},
            "trust.keys[0].roles: expected a list, got a string (write [a, b] or '- a' lines)",
        ),
        ({"scopes": "[]"}, "trust.keys[0].scopes: needs at least 1 item"),
        (
            {"scopes": "[Commune-1]"},
            "trust.keys[0].scopes[0]: 'Commune-1' is neither '*' nor a device or group id "
            + ID_RULE,
        ),
        (
            {"scopes": "['**']"},
            f"trust.keys[0].scopes[0]: '**' is neither '*' nor a device or group id {ID_RULE}",
        ),
        ({"not_after": "2027-12-31"}, f"trust.keys[0].not_after: '2027-12-31' {RFC3339}"),
        (
            {"not_after": "'2027-12-31T23:59:59'"},
            f"trust.keys[0].not_after: '2027-12-31T23:59:59' {RFC3339}",
        ),
        (
            {"not_after": "'2027-02-30T00:00:00Z'"},
            "trust.keys[0].not_after: '2027-02-30T00:00:00Z' is not a valid time: "
            "day is out of range for month",
        ),
        ({"ed25519": "-"}, "trust.keys[0].ed25519: missing (required)"),
    ],
)
def test_bad_trusted_key_fields(fields: dict[str, str], expected: str) -> None:
    assert only_problem(key_with(**fields)) == expected


def test_trusted_keys_are_distinct_and_present() -> None:
    two = (
        HEAD + BROKER + "trust:\n  keys:\n"
        f"    - {{id: k1, ed25519: '{KEY}', roles: [root], scopes: ['*']}}\n"
        f"    - {{id: k1, ed25519: '{KEY2}', roles: [root], scopes: ['*']}}\n"
        f"    - {{id: k3, ed25519: '{KEY}', roles: [root], scopes: ['*']}}\n"
    )
    assert problems(two) == [
        "9:7: trust.keys[1]: same id as trust.keys[0]",
        "10:7: trust.keys[2]: same public key as trust.keys[0]",
    ]
    assert only_problem(HEAD + BROKER + "trust:\n  keys: []\n") == (
        "trust.keys: needs at least 1 item"
    )
    assert only_problem(HEAD + BROKER + "trust:\n  keys:\n") == "trust.keys: needs at least 1 item"


@pytest.mark.parametrize(
    ("thresholds", "expected"),
    [
        ("{root: 0}", "trust.thresholds.root: 0 is out of range: use 1 to 100"),
        ("{operator: two}", "trust.thresholds.operator: expected an integer, got a string"),
        ("[1, 1, 2]", "trust.thresholds: expected a mapping of settings, got a list"),
    ],
)
def test_bad_thresholds(thresholds: str, expected: str) -> None:
    assert only_problem(MINIMAL + f"  thresholds: {thresholds}\n") == expected


# --- the password -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "broker",
    [
        f"  password: {SECRET}",  # no username
        f"  password: [{SECRET}]",
        f"  password: {{{SECRET}: 1}}",
        f"  username: u\n  password: {SECRET}\n  password_file: pw",
        f"  username: u\n  password: {SECRET}\n  password: {SECRET}",
        f"  username: u\n  pasword: {SECRET}",
        f"  username: u\n  password: {SECRET}\n  port: nope",
        f"  username: u\n  password: {SECRET}\n  tls: {{cert_file: {SECRET}}}",
        f'  username: u\n  password: "{SECRET}',  # a YAML syntax error on the password's line
        f"  username: u\n  password: '{SECRET}\n  port: 1",
        f"  username: u\n  password: {SECRET}\n\tport: 1",
    ],
)
def test_the_password_never_appears_in_errors(broker: str) -> None:
    text = HEAD + "broker:\n  host: x\n" + broker + "\n" + TRUST + "player: {output: nope}\n"
    found = problems(text)
    assert found
    assert all(SECRET not in p and SECRET[:8] not in p for p in found), found


def test_the_password_file_content_never_appears_in_errors(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(SECRET + "\r\n", encoding="utf-8")
    path = tmp_path / "receiver.yaml"
    path.write_text(
        HEAD + BROKER + "  username: u\n  password_file: pw\n" + TRUST + f"env2: {SECRET}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [f"{path}:11:1: env2: unknown key (did you mean 'env'?)"]
    path.write_text(path.read_text().replace("env2", "# env2"), encoding="utf-8")
    assert load_config(path).broker.password == SECRET


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "broker.password_file: file not found: {dir}/pw"),
        ("\n", "broker.password_file: {dir}/pw is empty"),
        (b"\xff\xfe", "broker.password_file: {dir}/pw is not UTF-8 text"),
    ],
)
def test_bad_password_files(tmp_path: Path, content: str | bytes | None, expected: str) -> None:
    if isinstance(content, str):
        (tmp_path / "pw").write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        (tmp_path / "pw").write_bytes(content)
    text = HEAD + BROKER + "  username: u\n  password_file: pw\n" + TRUST
    found = problems(text, source=str(tmp_path / "receiver.yaml"))
    assert found == ["7:18: " + expected.format(dir=tmp_path)]


def test_a_missing_absolute_password_file() -> None:
    text = HEAD + BROKER + "  username: u\n  password_file: /nonexistent/pw\n" + TRUST
    assert problems(text) == ["7:18: broker.password_file: file not found: /nonexistent/pw"]


# --- the file as a whole ----------------------------------------------------------------------

COLON_HINT = (
    "Usual causes: the line above has no space after its ':' (write 'host: x', not "
    "'host:x') or no ':' at all; this line is indented further than the one above; or a "
    "value that holds ': ' needs quotes"
)
INDENT_HINT = (
    "the settings of one section must start in the same column (indent with spaces, 2 per level)"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", f"1:1: {NO_SETTINGS}"),
        ("# nothing here\n\n", f"1:1: {NO_SETTINGS}"),
        ("- a\n- b\n", "1:1: expected a mapping of settings, got a list"),
        ("just words\n", "1:1: expected a mapping of settings, got a string"),
        (
            "a: 1\n---\nb: 2\n",
            "2:1: YAML syntax error: but found another document "
            "(expected a single document in the stream at line 1, column 1)",
        ),
        (
            "device_id: loa-1\nenv: [lab\n",
            "3:1: YAML syntax error: the list opened with '[' on line 2, column 6 is not "
            "closed with ']'",
        ),
        (
            "device_id: loa-1\n  env: lab\n",
            f"2:6: YAML syntax error: a ':' where no setting can start. {COLON_HINT}",
        ),
        ("device_id: loa-1\nenv: *nope\n", "2:6: YAML syntax error: found undefined alias 'nope'"),
        ("device_id: loa-1\nenv:\tlab\x07\n", "2:9: character U+0007 is not allowed in YAML"),
        ("? [a, b]\n: c\n", "1:3: keys must be plain names"),
    ],
)
def test_whole_file_problems(text: str, expected: str) -> None:
    assert expected in problems(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A tab, where the technician's editor showed an indentation.
        (
            "device_id: loa-1\nbroker:\n\thost: x\n",
            "3:1: YAML syntax error: a tab character; indent with spaces only "
            "(YAML does not accept tabs)",
        ),
        # A section name without its colon: the line that lacks it, not the next one.
        (
            "device_id: loa-1\nbroker\n  host: x\nenv: lab\n",
            "2:1: YAML syntax error: no ':' after this key; write 'key: value' "
            "(a section name ends with ':' too)",
        ),
        # "host:x" (no space) or "host x" (no colon) is a string; the next line then fails.
        (
            "broker:\n  host:x\n  port: 1\n",
            f"3:7: YAML syntax error: a ':' where no setting can start. {COLON_HINT}",
        ),
        (
            "broker:\n  host x\n  port: 1\n",
            f"3:7: YAML syntax error: a ':' where no setting can start. {COLON_HINT}",
        ),
        # Indented one space too far, then one too little.
        (
            "broker:\n  host: x\n   port: 1\n",
            f"3:8: YAML syntax error: a ':' where no setting can start. {COLON_HINT}",
        ),
        (
            "broker:\n  host: x\n port: 1\n",
            "3:2: YAML syntax error: this line is not indented like the lines above it: "
            + INDENT_HINT,
        ),
        (
            "env: 'lab\ngroups: []\n",
            "3:1: YAML syntax error: the quote opened on line 1, column 6 is not closed",
        ),
        (
            "policy: {timezone: Asia/Ho_Chi_Minh\nenv: lab\n",
            "2:4: YAML syntax error: the mapping opened with '{' on line 1, column 9 is not "
            "closed with '}'",
        ),
    ],
)
def test_yaml_syntax_errors_in_plain_words_at_the_right_line(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_recursive_aliases_do_not_hang() -> None:
    text = MINIMAL.replace("groups: [commune-1]", "groups: &g [commune-1, *g]")
    # An alias is the anchored node itself: the problem is placed where the anchor is.
    assert problems(text) == ["3:9: groups[1]: expected a string, got a list"]


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    assert problems("groups: " + "[" * 5000 + "]" * 5000 + "\n") == ["1:1: YAML nested too deeply"]


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [
        f"{path}: config file not found (check the name; the installed one is "
        "/etc/loa-receiver/receiver.yaml)"
    ]


def test_a_file_that_is_not_utf8_is_named_by_its_line(tmp_path: Path) -> None:
    """It said "bad byte at offset 412": no editor on the board shows offsets."""
    path = tmp_path / "receiver.yaml"
    path.write_bytes(MINIMAL.encode() + b"# caf\xe9\n")
    line = MINIMAL.count("\n") + 1
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [f"{path}:{line}: not UTF-8 text; save the file as UTF-8"]


def test_a_file_this_user_may_not_read_says_sudo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a technician's own login (these tests run as root, who reads every file)."""
    path = tmp_path / "receiver.yaml"
    path.write_text(MINIMAL, encoding="utf-8")

    def refused(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refused)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [
        f"{path}: this user may not read the config file (run it with sudo)"
    ]


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"^{tmp_path}: cannot read the config file: "):
        load_config(tmp_path)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [*MINIMAL.splitlines(), "player:", "  - x", "gpio: {amp_pin: 17}", "&a x: *a", "[", "'"]
        ),
        max_size=14,
    )
)
def test_any_text_gives_a_config_or_a_config_error(lines: list[str]) -> None:
    try:
        result = parse_config("\n".join(lines), SRC)
    except ConfigError as exc:
        assert exc.problems
        assert all(p.startswith(f"{SRC}:") for p in exc.problems)
    else:
        assert isinstance(result, Config)


def test_failover_brokers_are_read_with_the_first_brokers_port_by_default() -> None:
    config = parse_config(
        HEAD
        + "broker:\n  host: a.example\n  port: 1884\n"
        + "  failover: [b.example, 'c.example:1999', '[2001:db8::1]:1883']\n  failback_s: 60\n"
        + TRUST,
        "t.yaml",
    )
    assert config.broker.addresses == (
        ("a.example", 1884),
        ("b.example", 1884),
        ("c.example", 1999),
        ("2001:db8::1", 1883),
    )
    assert config.broker.failback_s == 60
    single = parse_config(HEAD + "broker:\n  host: a.example\n" + TRUST, "t.yaml")
    assert single.broker.addresses == (("a.example", 1883),)


@pytest.mark.parametrize(
    ("broker", "expected"),
    [
        (
            "  host: a\n  failover: [a]",
            "broker.failover: a:1883 is already broker.host",
        ),
        (
            "  host: a\n  failover: ['mqtt://b']",
            "broker.failover[0]: 'mqtt://b': write only a host name or host:port, not a URL",
        ),
        (
            "  host: a\n  failback_s: 1",
            "broker.failback_s: 1 is out of range: use 5 to 86400 seconds",
        ),
    ],
)
def test_a_bad_failover_setting_is_reported(broker: str, expected: str) -> None:
    assert only_problem(HEAD + "broker:\n" + broker + "\n" + TRUST) == expected


def test_the_installed_path_missing_says_how_to_install_not_to_check_its_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``receiver status`` on a board where nothing is installed yet said "config file not
    found (check the name; the installed one is /etc/loa-receiver/receiver.yaml)" of that very
    file."""
    path = tmp_path / "etc" / "receiver.yaml"
    monkeypatch.setattr(config_module, "INSTALLED_PATH", str(path))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (said,) = caught.value.problems
    assert said.startswith(f"{path}: config file not found")
    assert "check the name" not in said and "install" in said


def test_more_groups_than_a_state_may_list_are_refused() -> None:
    """The state lists the board's groups (at most 64, schemas/state.json): a config with more
    started, and every state it published then broke the schema central reads it by."""
    many = "groups: [" + ", ".join(f"commune-{i}" for i in range(65)) + "]"
    assert only_problem(MINIMAL.replace("groups: [commune-1]", many)) == (
        "groups: at most 64 items"
    )
    sixty_four = "groups: [" + ", ".join(f"commune-{i}" for i in range(64)) + "]"
    assert len(parse_config(MINIMAL.replace("groups: [commune-1]", sixty_four), SRC).groups) == 64


PI_CARDS = """\
 0 [Headphones     ]: bcm2835_headpho - bcm2835 Headphones
                      bcm2835 Headphones
 1 [vc4hdmi        ]: vc4-hdmi - vc4-hdmi
                      vc4-hdmi
"""


@pytest.mark.parametrize(
    ("device", "warned"),
    [
        ("hw:CARD=Headphones,DEV=0", False),
        ("plughw:1", False),
        ("default", False),
        ("hw:CARD=Nope", True),
        ("sysdefault:CARD=USB", True),
        ("hw:2,0", True),
    ],
)
def test_a_sound_card_the_board_does_not_have_is_warned_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str, warned: bool
) -> None:
    """``alsa_device: hw:CARD=Nope``: check-config said OK, and every play then reported
    `started` and `finished` with nothing heard: a proof of play for silence."""
    cards = tmp_path / "cards"
    cards.write_text(PI_CARDS, encoding="utf-8")
    monkeypatch.setattr(config_module, "ASOUND_CARDS", cards)
    text = MINIMAL + f"player: {{output: alsa, alsa_device: '{device}'}}\n"
    warnings = config_warnings(parse_config(text, SRC), datetime.now(UTC))
    said = [w for w in warnings if "player.alsa_device" in w]
    if warned:
        assert said == [
            f"{SRC}: player.alsa_device: {device} names a sound card this board does not have "
            "(it has: Headphones, vc4hdmi; `aplay -L` lists the names): nothing would be heard"
        ]
    else:
        assert said == []
    monkeypatch.setattr(config_module, "ASOUND_CARDS", tmp_path / "no-alsa")
    assert not [
        w for w in config_warnings(parse_config(text, SRC), datetime.now(UTC)) if "alsa" in w
    ]
