"""What the daemon refuses to start with, and the stop helper that must act anyway.

A start-up failure that no restart can fix (the example's placeholders, a pin factory whose
module is missing, a key file the daemon cannot read) exits 78, which the unit's
``RestartPreventExitStatus`` turns into one clear failure instead of a restart every 5 s.
``relay-off`` (the unit's ``ExecStopPost``) drives the relay off whenever the ``gpio`` section
can be read, else with the settings the daemon last started with, and says so in one line.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from receiver import cli, gpio
from receiver.config_model import GpioConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "receiver.example.yaml"
KEY = base64.b64encode(bytes(range(32))).decode()


def write_config(tmp_path: Path, *, env: str = "lab", extra: str = "", gpio_part: str = "") -> Path:
    path = tmp_path / "receiver.yaml"
    path.write_text(
        f"device_id: loa-25-07873-001\nenv: {env}\ngroups: []\n"
        "broker:\n  host: 192.0.2.1\n"
        f"{extra}"
        f"trust:\n  keys:\n    - {{id: k1, ed25519: '{KEY}', roles: [operator], scopes: ['*']}}\n"
        "storage: {state_dir: state, cache_dir: cache}\n"
        f"{gpio_part or 'gpio: {pin_factory: mock, amp_pin: GPIO22, active_high: false}'}\n",
        encoding="utf-8",
    )
    (tmp_path / "state").mkdir(exist_ok=True)
    return path


def receiver(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "receiver.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- exit 78 for what a restart cannot fix ------------------------------------------------


def test_the_example_config_never_starts(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    # Only what a restart could never fix remains: a mock relay and writable directories.
    text = text.replace("pin_factory: lgpio", "pin_factory: mock")
    text = text.replace("/var/lib/loa-receiver", str(tmp_path / "state"))
    text = text.replace("/var/cache/loa-receiver", str(tmp_path / "cache"))
    config = tmp_path / "receiver.yaml"
    config.write_text(text, encoding="utf-8")
    result = receiver("run", "--config", str(config))
    assert result.returncode == 78, result.stderr
    assert "broker.host: 'mqtt.example.vn' is the example's placeholder" in result.stderr
    assert "trust.keys[0]: 'central-commune-25-07873-placeholder'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state" / "outbox.db").exists()  # refused before anything started


def test_a_placeholder_failover_broker_exits_78(tmp_path: Path) -> None:
    extra = "  failover: [mqtt2.example.vn:8883, 192.0.2.2]\n"
    result = receiver("run", "--config", str(write_config(tmp_path, extra=extra)))
    assert result.returncode == 78, result.stderr
    assert "broker.failover[0]: 'mqtt2.example.vn' is the example's placeholder" in result.stderr
    assert "failover[1]" not in result.stderr


def test_a_missing_pin_factory_module_exits_78(tmp_path: Path) -> None:
    config = write_config(tmp_path, gpio_part="gpio: {pin_factory: pigpio}")
    result = receiver("run", "--config", str(config))
    assert result.returncode == 78, result.stderr
    assert "gpio.pin_factory: pin factory 'pigpio' is not available" in result.stderr
    assert "python3-pigpio" in result.stderr and "Traceback" not in result.stderr


def test_an_unreadable_key_file_exits_78(tmp_path: Path) -> None:
    extra = f"  tls: {{cert_file: {tmp_path}/device.crt, key_file: {tmp_path}/device.key}}\n"
    (tmp_path / "device.crt").write_text("not read further\n", encoding="utf-8")
    config = write_config(tmp_path, extra=extra)
    result = receiver("run", "--config", str(config))
    assert result.returncode == 78, result.stderr
    assert f"broker.tls.key_file: cannot read {tmp_path}/device.key" in result.stderr
    assert "cert_file" not in result.stderr


def test_check_config_warns_about_placeholders_and_a_missing_module(tmp_path: Path) -> None:
    """check-config named what the daemon would refuse, then exited 0, so that a script's
    ``receiver check-config FILE && systemctl restart loa-receiver`` restarted into exit 78."""
    result = receiver("check-config", str(EXAMPLE))
    assert result.returncode == 78, result.stderr
    assert "will refuse to start" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert any("broker.host" in w and "placeholder" in w for w in warnings), warnings
    assert any("trust.keys[0]" in w for w in warnings), warnings
    # This test machine has no lgpio, as a fresh board without python3-lgpio.
    assert any("pin factory 'lgpio' is not available" in w for w in warnings), warnings
    clean = receiver("check-config", str(write_config(tmp_path)))
    assert (clean.returncode, clean.stderr) == (0, "")
    assert ": OK" in clean.stdout


# --- pins gpiozero refuses ------------------------------------------------------------------


def test_one_pin_named_two_ways_is_refused_by_check_config_and_run(tmp_path: Path) -> None:
    """``amp_pin: GPIO17`` and ``mic_pin: BOARD11`` (header pin 11 is GPIO17): check-config
    said OK, the daemon then died on GPIOPinInUse with exit 1, restarted every 5 s."""
    gpio_part = "gpio: {pin_factory: mock, amp_pin: GPIO17, mic_pin: BOARD11}"
    config = write_config(tmp_path, gpio_part=gpio_part)
    said = "gpio.mic_pin: BOARD11 is GPIO17, which is already used by gpio.amp_pin"
    check = receiver("check-config", str(config))
    assert check.returncode == 78 and said in check.stderr, check.stderr
    run = receiver("run", "--config", str(config))
    assert run.returncode == 78 and said in run.stderr, run.stderr
    assert "daemon_failed" not in run.stderr and "Traceback" not in run.stderr


def test_vlc_args_libvlc_refuses_are_a_start_refusal(tmp_path: Path) -> None:
    """``vlc_args: [--no-such-option]``: check-config said OK, the daemon then died with exit 1
    at every start (restarted every 5 s), its line cut before the option that was wrong."""
    extra = "player: {output: file, wav_file: out.wav, vlc_args: ['--no-such-option']}\n"
    config = write_config(tmp_path, extra=extra)
    said = "player.vlc_args: libVLC refuses ['--no-such-option']"
    check = receiver("check-config", str(config))
    assert check.returncode == 78, check.stderr
    assert "will refuse to start" in check.stdout and said in check.stderr, check.stderr
    run = receiver("run", "--config", str(config))
    assert run.returncode == 78 and said in run.stderr, run.stderr
    assert "daemon_failed" not in run.stderr and "Traceback" not in run.stderr
    good = "player: {output: file, wav_file: out.wav, vlc_args: ['--no-video']}\n"
    assert receiver("check-config", str(write_config(tmp_path, extra=good))).returncode == 0


FIXED_PULL = "gpio: {pin_factory: mock, mic_pin: GPIO2, inputs_active_high: true}"


def test_a_pin_gpiozero_refuses_as_configured_is_a_start_refusal(tmp_path: Path) -> None:
    """GPIO2 has a fixed pull-up on every 40-pin board: an active-high input there (pull-down)
    is refused by gpiozero; check-config finds it on gpiozero's mock board."""
    config = write_config(tmp_path, gpio_part=FIXED_PULL)
    said = "gpio: cannot open input pin 'GPIO2' (mic): PinFixedPull"
    check = receiver("check-config", str(config))
    assert check.returncode == 78, check.stderr
    assert "will refuse to start" in check.stdout and said in check.stderr
    run = receiver("run", "--config", str(config))
    assert run.returncode == 78 and said in run.stderr, run.stderr
    assert not (tmp_path / "state" / "outbox.db").exists()  # refused before anything started


def test_a_pin_refused_when_the_daemon_opens_it_exits_78(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Past check-config's mock (a board unlike it): the daemon's own pin refusal at start is
    a config mistake too, exit 78 and a clear line, not daemon_failed with exit 1."""
    factory = MockFactory()
    monkeypatch.setattr(gpio, "make_pin_factory", lambda name: factory)
    monkeypatch.setattr(gpio, "pin_problem", lambda config: None)
    config = write_config(tmp_path, gpio_part=FIXED_PULL)
    assert cli.main(["run", "--config", str(config)]) == 78
    out, err = capsys.readouterr()
    said = out + err  # the log line goes where logs.configure sends it
    assert "daemon_cannot_start" in said and "PinFixedPull" in said, said
    assert "the daemon cannot start with this" in err and "daemon_failed" not in said
    assert not factory.pin("GPIO17").state  # the relay it had opened is off


# --- TLS files that are not what they should be ---------------------------------------------


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.lab.ca import TestCa

    ca = TestCa(tmp_path / "ca")
    device, other = ca.issue("device"), ca.issue("other")
    key = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "ca" / "public.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    locked = tmp_path / "ca" / "locked.key"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    empty = tmp_path / "ca" / "empty.pem"
    empty.write_bytes(b"")
    return {
        "ca": ca.cert_file,
        "cert": device.cert,
        "key": device.key,
        "other_key": other.key,
        "public": public,
        "locked": locked,
        "empty": empty,
    }


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"ca_file": "public"}, "broker.tls.ca_file: {public} holds no certificate"),
        ({"ca_file": "empty"}, "broker.tls.ca_file: {empty} holds no certificate"),
        ({"ca_file": "config"}, "broker.tls.ca_file: {config} holds no certificate"),
        (
            {"ca_file": "ca", "cert_file": "key", "key_file": "key"},
            "broker.tls.cert_file: {key} holds no certificate",
        ),
        (
            {"cert_file": "cert", "key_file": "cert"},
            "broker.tls.key_file: {cert} holds no private key",
        ),
        (
            {"cert_file": "cert", "key_file": "other_key"},
            "broker.tls.key_file: {other_key} is not the key of the certificate in "
            "broker.tls.cert_file ({cert})",
        ),
        (
            {"cert_file": "cert", "key_file": "locked"},
            "broker.tls.key_file: {locked} is protected by a passphrase",
        ),
    ],
)
def test_a_tls_file_that_cannot_be_loaded_exits_78_and_is_warned_of(
    tmp_path: Path, certs: dict[str, Path], files: dict[str, str], expected: str
) -> None:
    """A public key, an empty or a YAML file as ``broker.tls.ca_file``: check-config said OK,
    the daemon then failed on "cannot load TLS files" with exit 1, for ever."""
    certs["config"] = tmp_path / "receiver.yaml"
    tls = ", ".join(f"{name}: {certs[which]}" for name, which in files.items())
    config = write_config(tmp_path, extra=f"  tls: {{{tls}}}\n")
    said = expected.format(**certs)
    check = receiver("check-config", str(config))
    assert check.returncode == 78, check.stderr
    assert "will refuse to start" in check.stdout
    assert said in check.stderr and "_ssl.c" not in check.stderr, check.stderr
    assert len(check.stderr.splitlines()) == 1, check.stderr  # one file, one message
    run = receiver("run", "--config", str(config))
    assert run.returncode == 78 and said in run.stderr, run.stderr


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"ca_file": "public"}, "broker.tls.ca_file: {public} holds no certificate"),
        (
            {"cert_file": "cert", "key_file": "locked"},
            "broker.tls.key_file: {locked} is protected by a passphrase",
        ),
    ],
)
def test_tls_files_the_link_cannot_load_at_start_exit_78(
    tmp_path: Path, certs: dict[str, Path], files: dict[str, str], expected: str
) -> None:
    """The start's own check passed (the file was replaced just after it, say), then the link
    could not load it: exit 1, and the unit restarted the daemon every 5 s for ever."""
    tls = ", ".join(f"{name}: {certs[which]}" for name, which in files.items())
    config = write_config(tmp_path, extra=f"  tls: {{{tls}}}\n")
    bypass = (
        "import sys; from receiver import cli; cli._start_problems = lambda config: []; "
        f"sys.exit(cli.main(['run', '--config', {str(config)!r}]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", bypass],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 78, run.stderr
    said, refusal = run.stderr.splitlines()  # check-config's line, and the start's refusal
    assert said.startswith(f"{config}: {expected.format(**certs)}"), run.stderr
    assert refusal == f"{config}: the daemon cannot start with this, see above"
    assert "Traceback" not in run.stderr and "_ssl.c" not in run.stderr


def test_tls_files_being_replaced_at_start_are_retried_not_refused_for_good(
    tmp_path: Path, certs: dict[str, Path]
) -> None:
    """The link could not load the files, but they load again at once (a certificate being
    renewed, the key written a moment after it): exit 78 stopped the service for good
    (RestartPreventExitStatus=78), a board deaf to central until someone came; exit 1 has the
    unit start it again a few seconds later, with the new files."""
    tls = f"{{ca_file: {certs['ca']}, cert_file: {certs['cert']}, key_file: {certs['key']}}}"
    config = write_config(tmp_path, extra=f"  tls: {tls}\n")
    bypass = "\n".join(
        [
            "import sys",
            "from receiver import cli, mqtt_client",
            "cli._start_problems = lambda config: []",
            "def half_written(tls):",
            "    raise mqtt_client.TlsFilesError('cannot load TLS files: [SSL] PEM lib')",
            "mqtt_client._tls_context = half_written",
            f"sys.exit(cli.main(['run', '--config', {str(config)!r}]))",
        ]
    )
    run = subprocess.run(
        [sys.executable, "-c", bypass],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr


def test_good_tls_files_pass(tmp_path: Path, certs: dict[str, Path]) -> None:
    tls = f"{{ca_file: {certs['ca']}, cert_file: {certs['cert']}, key_file: {certs['key']}}}"
    check = receiver("check-config", str(write_config(tmp_path, extra=f"  tls: {tls}\n")))
    assert (check.returncode, check.stderr) == (0, ""), check.stderr


# --- what the daemon starts with, but will fail on later: warnings, exit 0 -------------------

PAST, FUTURE = "2025-01-01T00:00:00+07:00", "2099-01-01T00:00:00+07:00"


def keys_config(tmp_path: Path, *keys: tuple[str, str, str]) -> Path:
    """A config whose trusted keys are ``(id, roles, not_after)``."""
    config = write_config(tmp_path)
    lines = [
        f"    - {{id: {key_id}, ed25519: '{base64.b64encode(bytes([n] * 32)).decode()}', "
        f"roles: [{roles}], scopes: ['*'], not_after: '{not_after}'}}"
        for n, (key_id, roles, not_after) in enumerate(keys)
    ]
    text = config.read_text(encoding="utf-8")
    start = text.index("    - {id: k1")
    end = text.index("\n", start)
    config.write_text(text[:start] + "\n".join(lines) + text[end:], encoding="utf-8")
    return config


def warnings_of(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning: ")]


def test_an_expired_only_key_is_warned_of_and_the_file_still_passes(tmp_path: Path) -> None:
    """``not_after`` in the past on the only key: check-config said "OK ... 1 trusted keys"
    while the board would refuse every command."""
    result = receiver("check-config", str(keys_config(tmp_path, ("op-2026", "operator", PAST))))
    assert result.returncode == 0, result.stderr  # the daemon starts; central may send keys
    expired, none_left = warnings_of(result)
    assert "trust.keys[0]: 'op-2026' expired on 2025-01-01T00:00:00+07:00" in expired
    assert "every key that may sign commands (role operator or emergency) has expired" in (
        none_left
    )
    assert "too few root keys" in none_left  # no root key: no new list can come either
    assert "1 trusted keys (1 expired)" in result.stdout
    assert "OK, the daemon will start with it, but read the warnings above" in result.stdout


def test_an_expired_key_beside_valid_ones_gets_one_warning(tmp_path: Path) -> None:
    config = keys_config(
        tmp_path,
        ("op-2025", "operator", PAST),
        ("op-2027", "operator", FUTURE),
        ("root-a", "root", PAST),
    )
    result = receiver("check-config", str(config))
    assert result.returncode == 0, result.stderr
    assert [w.split(": ", 2)[2].split(" ", 1)[0] for w in warnings_of(result)] == [
        "trust.keys[0]:",
        "trust.keys[2]:",
    ]


def test_with_a_valid_root_key_a_new_keyring_is_the_way_out(tmp_path: Path) -> None:
    config = keys_config(
        tmp_path, ("op-2025", "operator, emergency", PAST), ("root-a", "root", FUTURE)
    )
    text = config.read_text(encoding="utf-8").replace(
        "\nstorage:", "\n  thresholds: {root: 1}\nstorage:"
    )
    config.write_text(text, encoding="utf-8")
    result = receiver("check-config", str(config))
    assert result.returncode == 0, result.stderr
    none_left = warnings_of(result)[-1]
    assert "until central sends it a new list of trusted keys" in none_left
    assert "too few root keys" not in none_left


def with_thresholds(config: Path, thresholds: str) -> Path:
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace("\nstorage:", f"\n  thresholds: {{{thresholds}}}\nstorage:"), encoding="utf-8"
    )
    return config


def test_too_few_valid_keys_for_a_threshold_above_one_is_warned_of(tmp_path: Path) -> None:
    """With ``thresholds: {operator: 2}`` and one of the two operator keys expired, no command
    could be accepted any more, but check-config warned only of the expired key itself."""
    config = keys_config(
        tmp_path,
        ("op-2025", "operator", PAST),
        ("op-2027", "operator", FUTURE),
        ("root-a", "root", FUTURE),
        ("root-b", "root", FUTURE),
    )
    result = receiver("check-config", str(with_thresholds(config, "operator: 2")))
    assert result.returncode == 0, result.stderr  # the daemon starts; central may send keys
    expired, short = warnings_of(result)
    assert "trust.keys[0]: 'op-2025' expired" in expired
    assert "valid keys with the role operator for this device: 1, of 2 needed" in short
    assert "(trust.thresholds.operator)" in short
    assert "until central sends it a new list of trusted keys" in short
    assert "OK, the daemon will start with it, but read the warnings above" in result.stdout


def test_an_expired_emergency_key_beside_valid_operator_keys_is_warned_of(tmp_path: Path) -> None:
    """Operators can still sign, but no emergency warning can be accepted any more."""
    config = keys_config(tmp_path, ("op-2027", "operator", FUTURE), ("em-2025", "emergency", PAST))
    result = receiver("check-config", str(config))
    assert result.returncode == 0, result.stderr
    expired, short = warnings_of(result)
    assert "trust.keys[1]: 'em-2025' expired" in expired
    assert "valid keys with the role emergency for this device: 0, of 1 needed" in short
    assert "emergency warnings" in short
    assert "too few root keys" in short  # no root key: no new list can come either


def test_a_key_for_other_devices_does_not_make_up_a_threshold(tmp_path: Path) -> None:
    config = keys_config(tmp_path, ("op-2025", "operator", PAST), ("op-2027", "operator", FUTURE))
    text = config.read_text(encoding="utf-8")
    # op-2027 signs only for another commune: this board counts it for nothing.
    start = text.index("id: op-2027")
    text = text[:start] + text[start:].replace("scopes: ['*']", "scopes: [commune-9]", 1)
    config.write_text(text, encoding="utf-8")
    result = receiver("check-config", str(config))
    assert result.returncode == 0, result.stderr
    assert any(
        "valid keys with the role operator for this device: 0, of 1 needed" in warning
        for warning in warnings_of(result)
    ), result.stderr


def test_a_fallback_file_that_cannot_be_read_is_warned_of(tmp_path: Path) -> None:
    """A missing ``player.fallback_file`` was accepted; it showed only when a relay failed."""
    config = write_config(tmp_path, extra="")
    text = config.read_text(encoding="utf-8") + "player: {fallback_file: nosuch.mp3}\n"
    config.write_text(text, encoding="utf-8")
    result = receiver("check-config", str(config))
    assert result.returncode == 0, result.stderr
    (warning,) = warnings_of(result)
    assert (
        f"player.fallback_file: cannot read {tmp_path}/nosuch.mp3: No such file or directory"
        in warning
    )
    assert "would end in silence" in warning
    (tmp_path / "nosuch.mp3").write_bytes(b"ID3")
    clean = receiver("check-config", str(config))
    assert (clean.returncode, clean.stderr) == (0, "")


# --- relay-off ---------------------------------------------------------------------------


@pytest.fixture
def board(monkeypatch: pytest.MonkeyPatch) -> MockFactory:
    """One mock board for the whole test: what relay-off's own factory drives stays visible."""
    factory = MockFactory()
    monkeypatch.setattr(gpio, "make_pin_factory", lambda name: factory)
    monkeypatch.setattr(factory, "close", lambda: None)
    return factory


def relay_on(board: MockFactory, pin: str, active_high: bool) -> None:
    board.pin(pin).drive_high() if active_high else board.pin(pin).drive_low()
    board.pins.clear()  # the daemon's process is gone; the level stays on the real pin


def level(board: MockFactory, pin: str) -> bool:
    return bool(board.pin(pin).state)


def test_relay_off_acts_despite_an_unrelated_config_error(
    tmp_path: Path, board: MockFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, env="Prod")
    board.pin("GPIO22").drive_low()  # active low: the relay is on
    assert cli.main(["relay-off", "--config", str(config)]) == 0
    assert level(board, "GPIO22") is True  # off = high for an active-low relay
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1, out
    assert "relay GPIO22 (mock, active low) switched off" in out
    assert "env: 'Prod' is not a valid id" in out


def test_relay_off_falls_back_to_the_settings_the_daemon_started_with(
    tmp_path: Path, board: MockFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    gpio.save_settings(tmp_path / "state", GpioConfig("mock", "GPIO5", True))
    config.write_text(config.read_text() + "gpio:\n\tamp_pin: GPIO5\n", encoding="utf-8")
    board.pin("GPIO5").drive_high()
    # The file no longer parses at all: its storage section is unknown too, so the unit names
    # the state directory (as it does: --state-dir %S/loa-receiver).
    state = str(tmp_path / "state")
    assert cli.main(["relay-off", "--config", str(config), "--state-dir", state]) == 0
    assert level(board, "GPIO5") is False
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1, out
    assert "relay GPIO5 (mock, active high) switched off" in out
    assert f"the settings the daemon last started with ({tmp_path / 'state'})" in out


def test_relay_off_without_any_settings_says_so_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "receiver.yaml"
    config.write_text("gpio: [\n", encoding="utf-8")
    result = receiver("relay-off", "--config", str(config))
    assert result.returncode == 1
    assert len(result.stdout.splitlines()) == 1 and "relay NOT switched" in result.stdout
    assert result.stderr == ""


def test_relay_off_with_a_missing_pin_factory_prints_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, gpio_part="gpio: {pin_factory: lgpio}")
    result = receiver("relay-off", "--config", str(config))
    assert result.returncode == 1
    assert result.stderr == "", result.stderr
    (line,) = result.stdout.splitlines()
    assert "relay GPIO17 (lgpio, active high) NOT switched" in line
    assert "pin factory 'lgpio' is not available" in line


def test_the_daemon_keeps_its_relay_settings_for_relay_off(tmp_path: Path) -> None:
    gpio.save_settings(tmp_path, GpioConfig("lgpio", "BOARD11", False))
    saved = json.loads((tmp_path / gpio.SAVED_SETTINGS_FILE).read_text())
    assert saved == {"pin_factory": "lgpio", "amp_pin": "BOARD11", "active_high": False}
    assert gpio.load_saved_settings(tmp_path) == GpioConfig("lgpio", "BOARD11", False)
    (tmp_path / gpio.SAVED_SETTINGS_FILE).write_text("{}", encoding="utf-8")
    assert gpio.load_saved_settings(tmp_path) is None


# --- a state or cache directory the daemon cannot use ---------------------------------------


def config_with_state_under_a_file(tmp_path: Path) -> Path:
    config = write_config(tmp_path)
    (tmp_path / "blocker").write_text("a file where a directory should be\n", encoding="utf-8")
    text = config.read_text(encoding="utf-8").replace("state_dir: state", "state_dir: blocker/s")
    config.write_text(text, encoding="utf-8")
    return config


def test_a_state_directory_that_cannot_exist_exits_78_and_is_warned_of(tmp_path: Path) -> None:
    """check-config said OK; the daemon then failed with "[Errno 20] Not a directory", exit 1,
    and systemd restarted it every 5 s for ever."""
    config = config_with_state_under_a_file(tmp_path)
    said = f"storage.state_dir: {tmp_path}/blocker/s cannot be a directory: {tmp_path}/blocker is"
    run = receiver("run", "--config", str(config))
    assert run.returncode == 78, run.stderr
    assert said in run.stderr and "Traceback" not in run.stderr
    check = receiver("check-config", str(config))
    assert "will refuse to start" in check.stdout
    assert said in check.stderr


def test_enroll_where_the_state_directory_cannot_be_made_says_so(tmp_path: Path) -> None:
    """It ended in a NotADirectoryError traceback."""
    result = receiver("enroll", "--config", str(config_with_state_under_a_file(tmp_path)))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"receiver enroll: {tmp_path}/blocker/s: Not a directory (storage.state_dir" in (
        result.stderr
    )


# --- the config file, however it is given -------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["check-config", "-c"], ["check-config", "--config"], ["enroll"], ["status"], ["relay-off"]],
)
def test_every_subcommand_takes_the_config_file_as_option_or_word(
    tmp_path: Path, argv: list[str], board: MockFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """``run``, ``status``, ``enroll`` and ``relay-off`` took only ``--config FILE`` and
    ``check-config`` only ``FILE``: ``receiver check-config -c FILE`` (as ``run`` wants it)
    said "unrecognized arguments: -c", ``receiver enroll FILE`` "arguments are required"."""
    config = write_config(tmp_path)
    code = cli.main([*argv, str(config)])
    out, err = capsys.readouterr()
    assert "error:" not in err
    assert code == (1 if argv == ["status"] else 0), err  # status: no state written yet
    assert str(config) in out or "loa-25-07873-001" in out or str(tmp_path / "state") in out


def test_two_different_config_files_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["check-config", str(write_config(tmp_path)), "-c", "/etc/other.yaml"])
    assert exited.value.code == 2
    assert "two config files given" in capsys.readouterr().err


def test_no_config_file_says_which_option_to_give(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["enroll"])
    assert exited.value.code == 2
    assert "receiver enroll --config /etc/loa-receiver/receiver.yaml" in capsys.readouterr().err


def test_a_state_directory_its_user_may_not_write_in_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the daemon's user (these tests run as root, who may write anywhere)."""
    from receiver import config as config_module

    loaded = config_module.load_config(write_config(tmp_path))
    monkeypatch.setattr("receiver.config.os.access", lambda path, mode: False)
    found = config_module.unusable_directories(loaded)
    assert any(
        f"storage.state_dir: this user may not write in {tmp_path / 'state'}" in line
        and "the daemon runs as the user loa-receiver" in line
        for line in found
    ), found
