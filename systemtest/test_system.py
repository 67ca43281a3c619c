"""The installed unit under a real systemd: start-up, watchdog, crashes, stops, config errors,
the sandbox as it holds at run time, and sound through ALSA as on the board.

The tests run in file order on one container (the session fixture) and build on each other:
the first installs the program with scripts/install.sh, as a technician would.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from receiver.central.signing import SigningKey, command_payload, sign_command
from systemtest.conftest import REPO, UNIT, Container
from tests.lab.audio import dominant_of, write_tone
from tests.lab.broker import MosquittoBroker, Received, Subscriber
from tests.lab.web import MediaServer

DEVICE, GROUP = "loa-sys-001", "commune-sys"
CONFIG = "/etc/loa-receiver/receiver.yaml"
ALSA_WAV = "/var/lib/loa-receiver/alsa-out.wav"
RELAY_OFF = "relay-off: relay GPIO17 (mock, active high) switched off"
# Shorter than the unit's 30 s so that the hung-loop test takes seconds, not a minute.
WATCHDOG_S = 6
RESTART_S = 5  # the unit's RestartSec
# An ALSA "file" PCM standing in for the card: the config names it as it would name
# hw:CARD=Headphones; plug converts to 16-bit stereo, the file plugin writes a WAV and hands
# the samples on to the null device, which keeps the pace of a real card.
ASOUND_CONF = f"""pcm.loudspeaker {{
    type plug
    slave {{ pcm "loudspeaker_wav"; format S16_LE; rate 48000; channels 2 }}
}}
pcm.loudspeaker_wav {{
    type file
    slave.pcm "null"
    file "{ALSA_WAV}"
    format "wav"
}}
"""


@dataclass
class Lab:
    broker: MosquittoBroker
    media: MediaServer
    operator: SigningKey
    watcher: Subscriber


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("lab")
    media_dir = root / "media"
    media_dir.mkdir()
    write_tone(media_dir / "tone440.wav", 440.0, 1.5)
    with MosquittoBroker(root / "mosquitto") as broker:
        media = MediaServer(media_dir)
        watcher = Subscriber(broker, ["loa/v1/dev/#"]).start()
        try:
            yield Lab(broker, media, SigningKey.generate("op-sys"), watcher)
        finally:
            watcher.close()
            media.close()


def real_config(lab: Lab, env: str = "lab") -> str:
    return f"""device_id: {DEVICE}
env: {env}
groups: [{GROUP}]
broker:
  host: 127.0.0.1
  port: {lab.broker.port}
  reconnect_min_s: 0.2
  reconnect_max_s: 2.0
trust:
  keys:
    - id: {lab.operator.id}
      ed25519: {lab.operator.public_b64}
      roles: [operator]
      scopes: ["*"]
player:
  output: alsa
  alsa_device: loudspeaker
  default_volume: 100
gpio:
  pin_factory: mock
  warm_up_s: 0.2
  tail_s: 0.3
media:
  allowed_schemes: [http]
  allowed_hosts: ["127.0.0.1:{lab.media.port}"]
clock:
  trust_system_clock: always
"""


def event(lab: Lab, kind: str, ref: str, timeout: float = 30) -> dict[str, object]:
    def matches(message: Received) -> bool:
        if not message.topic.endswith("/events"):
            return False
        data = json.loads(message.payload)
        return bool(data.get("kind") == kind and data.get("ref") == ref)

    found: dict[str, object] = json.loads(lab.watcher.wait_for(matches, timeout).payload)
    return found


def relay_off_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("relay-off: ")]


# --- 1. the installer, and a first boot with the example config ------------------------------


def test_first_install_leaves_a_service_that_never_loops(container: Container) -> None:
    result = container.sh(
        "bash /src/scripts/install.sh --no-apt --pip-args '--no-index --find-links /wheels'"
    )
    assert "installed, not enabled" in result.stdout
    # Not enabled: the next boot does not start it with the example's placeholders.
    assert container.sh(f"systemctl is-enabled {UNIT}", check=False).stdout.strip() == "disabled"
    assert container.show()["ActiveState"] == "inactive"

    # Started anyway (a technician who skipped check-config): one failure, exit 78, no loop.
    cursor = container.cursor()
    started = container.sh(f"systemctl start {UNIT}", check=False)
    assert started.returncode != 0
    state = container.wait(lambda s: s["ActiveState"] == "failed", "the failed start")
    assert (state["ExecMainStatus"], state["Result"]) == ("78", "exit-code")
    time.sleep(RESTART_S + 3)
    assert container.show()["NRestarts"] == "0" and container.show()["ActiveState"] == "failed"
    log = container.journal(cursor)
    assert "broker.host: 'mqtt.example.vn' is the example's placeholder" in log
    assert "Traceback" not in log
    # The example names lgpio, which this root lacks: relay-off says so in one line.
    (line,) = relay_off_lines(log)
    assert "relay GPIO17 (lgpio, active high) NOT switched: pin factory 'lgpio' is not" in line


# --- 2. a real config: READY, watchdog, kill -9, stop ------------------------------------------


def test_with_a_real_config_it_starts_and_reports_ready(container: Container, lab: Lab) -> None:
    container.write(CONFIG, real_config(lab), mode="0640", owner="root:loa-receiver")
    container.write("/etc/asound.conf", ASOUND_CONF)
    container.write(
        f"/etc/systemd/system/{UNIT}.d/watchdog.conf", f"[Service]\nWatchdogSec={WATCHDOG_S}\n"
    )
    container.sh("systemctl daemon-reload && systemctl reset-failed")
    assert "OK" in container.sh(f"receiver check-config {CONFIG}").stdout
    # Type=notify: `systemctl start` returns once the daemon has sent READY=1.
    container.sh(f"systemctl enable --now {UNIT}")
    state = container.show()
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
    online = lab.watcher.wait_for(
        lambda m: m.topic.endswith("/state") and json.loads(m.payload).get("online") is True, 30
    )
    assert json.loads(online.payload)["device"] == DEVICE


def test_a_signed_play_sounds_through_alsa_in_the_sandbox(container: Container, lab: Lab) -> None:
    tone = lab.media.directory / "tone440.wav"
    data = tone.read_bytes()
    body = {
        "priority": "normal",
        "source": {
            "files": [
                {
                    "url": lab.media.url("tone440.wav"),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "title": "tone 440",
                }
            ]
        },
        "max_duration_s": 60,
    }
    payload = command_payload("play", body, env="lab", aud=[f"grp:{GROUP}"], message_id="sys-1")
    lab.watcher.publish(f"loa/v1/dev/{DEVICE}/cmd", sign_command(payload, [lab.operator]))
    event(lab, "started", "sys-1")
    event(lab, "finished", "sys-1")
    raw = container.sh(f"base64 -w0 {ALSA_WAV}").stdout
    (REPO / ".systemtest-alsa.wav").write_bytes(base64.b64decode(raw))  # kept for a look
    sound = read_alsa_wav(base64.b64decode(raw))
    assert sound[1] == 48000  # what the plug slave asked for: ALSA really converted
    # The null device has no clock: libVLC, waiting on a card that never fills, pads with
    # silence between its blocks. The sound itself is all there, in order.
    samples = without_gaps(sound[0])
    assert 1.3 < len(samples) / sound[1] < 1.7, len(samples) / sound[1]
    assert dominant_of(samples, sound[1], (440.0, 1000.0)) == 440.0


def without_gaps(samples: tuple[int, ...], shortest: int = 240) -> tuple[int, ...]:
    """``samples`` without the runs of exact zeros at least ``shortest`` long (5 ms at 48 kHz)."""
    kept: list[int] = []
    zeros = 0
    for value in samples:
        if value == 0:
            zeros += 1
            continue
        if zeros and zeros < shortest and kept:
            kept.extend([0] * zeros)
        zeros = 0
        kept.append(value)
    return tuple(kept)


def read_alsa_wav(data: bytes) -> tuple[tuple[int, ...], int]:
    """Channel 0 and the rate of the ALSA file plugin's WAV (its sizes may be unset while open)."""
    import array

    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", data[:16]
    stream = io.BytesIO(data[12:])
    rate = channels = 0
    while True:
        header = stream.read(8)
        assert len(header) == 8, "no data chunk"
        name, size = header[:4], int.from_bytes(header[4:], "little")
        if name == b"fmt ":
            fmt = stream.read(size)
            channels = int.from_bytes(fmt[2:4], "little")
            rate = int.from_bytes(fmt[4:8], "little")
            assert int.from_bytes(fmt[14:16], "little") == 16
        elif name == b"data":
            pcm = stream.read()
            break
        else:
            stream.read(size)
    samples = array.array("h")
    samples.frombytes(pcm[: len(pcm) - len(pcm) % (2 * channels)])
    return tuple(samples[0::channels]), rate


def test_the_watchdog_kills_a_stopped_loop_then_relay_off_and_a_restart(
    container: Container,
) -> None:
    before = container.show()
    cursor = container.cursor()
    container.sh(f"kill -STOP {before['MainPID']}")
    state = container.wait(
        lambda s: int(s["NRestarts"]) > int(before["NRestarts"]) and s["SubState"] == "running",
        "the watchdog's restart",
        timeout=WATCHDOG_S + RESTART_S + 60,
    )
    assert state["MainPID"] != before["MainPID"]
    log = container.journal(cursor)
    assert "Watchdog timeout" in log, log
    assert any(line.startswith(RELAY_OFF) for line in relay_off_lines(log)), log


def test_kill_9_is_followed_by_relay_off_and_a_restart(container: Container) -> None:
    before = container.show()
    cursor = container.cursor()
    container.sh(f"kill -9 {before['MainPID']}")
    state = container.wait(
        lambda s: int(s["NRestarts"]) > int(before["NRestarts"]) and s["SubState"] == "running",
        "the restart after kill -9",
    )
    assert state["MainPID"] != before["MainPID"]
    log = container.journal(cursor)
    assert "status=9/KILL" in log, log
    assert [line.startswith(RELAY_OFF) for line in relay_off_lines(log)] == [True], log


def test_systemctl_stop_stops_it_and_the_relay(container: Container) -> None:
    pid = container.show()["MainPID"]
    cursor = container.cursor()
    container.sh(f"systemctl stop {UNIT}")
    state = container.show()
    assert (state["ActiveState"], state["Result"]) == ("inactive", "success"), state
    assert container.sh(f"test -d /proc/{pid}", check=False).returncode != 0
    assert [line.startswith(RELAY_OFF) for line in relay_off_lines(container.journal(cursor))] == [
        True
    ]


# --- 3. a config error: 78 once, and relay-off acts anyway ------------------------------------


def test_an_unrelated_config_error_exits_78_without_a_loop_and_relay_off_acts(
    container: Container, lab: Lab
) -> None:
    container.write(CONFIG, real_config(lab, env="Prod"), mode="0640", owner="root:loa-receiver")
    cursor = container.cursor()
    assert container.sh(f"systemctl start {UNIT}", check=False).returncode != 0
    state = container.wait(lambda s: s["ActiveState"] == "failed", "the failed start")
    assert state["ExecMainStatus"] == "78"
    time.sleep(RESTART_S + 3)
    assert container.show()["NRestarts"] == "0"
    log = container.journal(cursor)
    assert "env: 'Prod' is not a valid id" in log
    (line,) = relay_off_lines(log)
    assert line.startswith(f"{RELAY_OFF}, settings from {CONFIG}; the config has errors:"), line
    container.write(CONFIG, real_config(lab), mode="0640", owner="root:loa-receiver")
    container.sh("systemctl reset-failed")


# --- 4. the sandbox at run time ---------------------------------------------------------------


def test_a_probe_with_the_units_sandbox(container: Container) -> None:
    unit = container.sh(f"cat /etc/systemd/system/{UNIT}").stdout
    probe = re.sub(
        r"(?m)^(ExecStart|ExecStopPost|Restart|WatchdogSec|NotifyAccess|Type)=.*\n", "", unit
    )
    probe = probe.replace(
        "[Service]\n",
        "[Service]\nType=oneshot\n"
        "ExecStart=/opt/loa-receiver/venv/bin/python /usr/local/lib/loa-probe.py\n",
    )
    container.write("/usr/local/lib/loa-probe.py", (REPO / "systemtest" / "probe.py").read_text())
    container.write("/etc/systemd/system/loa-probe.service", probe)
    cursor = container.cursor()
    container.sh("systemctl daemon-reload && systemctl start loa-probe.service")
    out = container.journal(cursor, unit="loa-probe.service")
    found = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    verdict = {name: value.split(" ")[0] for name, value in found.items()}
    assert verdict == {
        "write /etc": "denied",
        "write /opt/loa-receiver": "denied",
        "write /var/lib/loa-receiver": "allowed",
        "write /var/cache/loa-receiver": "allowed",
        "write /tmp (private)": "allowed",
        "list /root": "denied",
        "list /home": "denied",
        "read /etc/loa-receiver/receiver.yaml": "allowed",
        "socket AF_INET": "allowed",
        "socket AF_INET6": "allowed",
        "socket AF_UNIX": "allowed",
        "socket AF_NETLINK": "denied",
        "socket AF_PACKET": "denied",
        "read the NTP state (adjtimex)": "allowed",
        "set the clock": "denied",
        "writable+executable memory": "denied",
        "real-time priority": "denied",
        "lower its own resource limit": "allowed",
        "lower its own priority (setpriority)": "denied",
        "new user namespace": "denied",
        "become root": "denied",
        "open /dev/net/tun": "denied",
    }, found
    # Denied by the sandbox itself, not because the thing is absent.
    assert found["open /dev/net/tun"] == "denied (EPERM)", found
    assert found["set the clock"] == "denied (EPERM)", found
    print(json.dumps(found, indent=1))  # what was denied, and how, for the record


def test_systemd_analyze_security_online(container: Container) -> None:
    out = container.sh(f"systemd-analyze security --no-pager {UNIT}").stdout
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert match is not None, out
    assert float(match.group(1)) <= 1.9, out
    print(match.group(0))


def test_the_daemon_still_runs_after_it_all(container: Container, lab: Lab) -> None:
    container.sh(f"systemctl start {UNIT}")
    assert container.show()["SubState"] == "running"
