"""Each board's bundle on its architecture: installed, upgraded, removed and run in a Debian 12
root of that architecture (arm64: Raspberry Pi OS 64-bit; armhf: 32-bit).

The root runs under qemu-user-static through binfmt_misc (scripts/debian-root.sh registers
it); systemd-nspawn runs commands in it without booting, with the root kept unchanged
(--volatile=overlay). apt installs the .deb and fetches only Debian's own packages (libVLC,
python3-venv, and on armhf python3-yaml and python3-cffi, which the root lacks so that the
package's Depends: must bring them): the other Python dependencies come from the wheels inside
the bundle. Then `receiver check-config` and one signed play through the host's Mosquitto into
a WAV.

The architectures come from LOA_BUNDLE_ARCHES (scripts/bundletest.sh sets it); each needs
LOA_BUNDLE_ROOT_<ARCH> and LOA_BUNDLE_DEB_<ARCH>.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from receiver.central.signing import SigningKey, command_payload, sign_command
from tests.lab.audio import dominant_of, read_wav, trim_silence, write_tone
from tests.lab.broker import MosquittoBroker, Received, Subscriber
from tests.lab.web import MediaServer

DEVICE, GROUP = "loa-arm-001", "commune-arm"
ARCHES = os.environ.get("LOA_BUNDLE_ARCHES", "arm64 armhf").split()
# What `uname -m` says on each architecture under qemu (armhf: qemu-arm emulates an ARMv7).
MACHINES = {"arm64": "aarch64", "armhf": "armv7l"}
DEB_IN_ROOT = "/bundle/loa-receiver.deb"

# Everything the technician would type, in order; `|| exit` keeps the first failure visible.
SCRIPT = f"""set -eu
echo "arch: $(dpkg --print-architecture) $(uname -m)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {DEB_IN_ROOT}
echo "installed: $(dpkg-query -W -f='${{Version}} ${{Architecture}}' loa-receiver)"
dpkg-query -W -f='from Debian: ${{Package}}\\n' python3-yaml python3-cffi 2>/dev/null || true
/opt/loa-receiver/venv/bin/python -c 'import cryptography, yaml
for module in (cryptography, yaml): print("module", module.__name__, module.__file__)'
refused=0; receiver check-config /etc/loa-receiver/receiver.yaml || refused=$?
echo "example config: check-config exit $refused"
echo '# kept-by-upgrade' >> /etc/loa-receiver/receiver.yaml
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall {DEB_IN_ROOT}
grep -q kept-by-upgrade /etc/loa-receiver/receiver.yaml && echo "upgrade kept the config"
mkdir -p /var/lib/loa-receiver && echo floors > /var/lib/loa-receiver/state.db
DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq loa-receiver
test ! -e /opt/loa-receiver && test -f /etc/loa-receiver/receiver.yaml \\
  && test -f /var/lib/loa-receiver/state.db && echo "remove kept config and state"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {DEB_IN_ROOT}
receiver check-config /out/receiver.yaml
echo "starting the daemon"
exec receiver run --config /out/receiver.yaml
"""


def _env(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run this tier with `make systemtest`", pytrace=False)
    return Path(value)


@pytest.fixture(params=ARCHES)
def arch(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def board_daemon(tmp_path: Path, arch: str) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    yield_value: tuple[subprocess.Popen[str], Path]
    upper = arch.upper()
    root, deb = _env(f"LOA_BUNDLE_ROOT_{upper}"), _env(f"LOA_BUNDLE_DEB_{upper}")
    if not (root / ".complete").exists() or not deb.is_file():
        pytest.fail(f"missing {root} or {deb} (scripts/bundletest.sh {arch} builds both)")
    out = tmp_path / "out"
    out.mkdir()
    log = tmp_path / "board.log"
    process = subprocess.Popen(
        [
            "systemd-nspawn", "--register=no", "--keep-unit", "--volatile=overlay",
            "--as-pid2", "--console=pipe", "-D", str(root),
            f"--bind-ro={deb}:{DEB_IN_ROOT}", f"--bind={out}:/out",
            "/bin/sh", "-c", SCRIPT,
        ],
        stdin=subprocess.DEVNULL,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    yield_value = (process, out)
    try:
        yield yield_value
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        print(log.read_text(errors="replace"))  # shown when the test failed


def wait_while_running(
    process: subprocess.Popen[str],
    watcher: Subscriber,
    predicate: Callable[[Received], bool],
    timeout: float,
) -> None:
    """Wait for a message, but fail at once if the root's script has ended (its log says why)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the board's script ended with {process.returncode}"
        try:
            watcher.wait_for(predicate, 5)
        except AssertionError:
            continue
        return
    raise AssertionError("timed out")


def test_the_bundle_installs_upgrades_removes_and_plays_on_its_architecture(
    tmp_path: Path, arch: str, board_daemon: tuple[subprocess.Popen[str], Path]
) -> None:
    process, out = board_daemon
    media_dir = tmp_path / "media"
    media_dir.mkdir()
    write_tone(media_dir / "tone440.wav", 440.0, 1.5)
    operator = SigningKey.generate("op-arm")
    with (
        MosquittoBroker(tmp_path / "mosquitto") as broker,
        Subscriber(broker, ["loa/v1/dev/#"]) as watcher,
    ):
        media = MediaServer(media_dir)
        try:
            (out / "receiver.yaml").write_text(
                f"device_id: {DEVICE}\nenv: lab\ngroups: [{GROUP}]\n"
                f"broker: {{host: 127.0.0.1, port: {broker.port}, reconnect_max_s: 2}}\n"
                f"trust:\n  keys:\n    - {{id: {operator.id}, ed25519: '{operator.public_b64}', "
                "roles: [operator], scopes: ['*']}\n"
                "player: {output: file, wav_file: /out/out.wav, default_volume: 100}\n"
                "gpio: {pin_factory: mock, warm_up_s: 0.2, tail_s: 0.3}\n"
                f"media: {{allowed_schemes: [http], allowed_hosts: ['127.0.0.1:{media.port}']}}\n"
                "storage: {state_dir: /out/state, cache_dir: /out/cache}\n"
                "clock: {trust_system_clock: always}\n",
                encoding="utf-8",
            )
            (out / "state").mkdir()

            def online(message: Received) -> bool:
                return message.topic.endswith("/state") and b'"online":true' in message.payload

            # apt and pip under qemu take minutes; the daemon says "online" when it is up.
            wait_while_running(process, watcher, online, 900)
            data = (media_dir / "tone440.wav").read_bytes()
            body = {
                "priority": "normal",
                "source": {"files": [{
                    "url": media.url("tone440.wav"), "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data), "title": "tone 440",
                }]},
                "max_duration_s": 60,
            }  # fmt: skip
            payload = command_payload(
                "play", body, env="lab", aud=[f"grp:{GROUP}"], message_id="arm-1"
            )
            watcher.publish(f"loa/v1/dev/{DEVICE}/cmd", sign_command(payload, [operator]))

            def finished(message: Received) -> bool:
                return message.topic.endswith("/events") and b'"finished"' in message.payload

            wait_while_running(process, watcher, finished, 120)
        finally:
            media.close()
    assert process.poll() is None, "the daemon stopped"
    sound = read_wav(out / "out.wav")
    samples = trim_silence(sound.samples)
    assert 1.3 < len(samples) / sound.rate < 1.7
    assert dominant_of(samples, sound.rate, (440.0, 1000.0)) == 440.0
    log = (tmp_path / "board.log").read_text(errors="replace")
    assert f"arch: {arch} {MACHINES[arch]}" in log
    assert "installed: 0." in log and f" {arch}" in log
    # Where the daemon's Python packages came from: the bundle's wheels (in the program's venv)
    # or, on armhf, Debian's packages that the .deb's Depends: brought in.
    modules = dict(line.split()[1:3] for line in log.splitlines() if line.startswith("module "))
    assert modules["cryptography"].startswith("/opt/loa-receiver/"), modules
    if arch == "armhf":
        assert modules["yaml"].startswith("/usr/lib/python3/dist-packages/"), modules
        assert "from Debian: python3-yaml" in log and "from Debian: python3-cffi" in log
    else:
        assert modules["yaml"].startswith("/opt/loa-receiver/"), modules
    assert "upgrade kept the config" in log and "remove kept config and state" in log
    # The installed example is valid but holds placeholders: refused, as the daemon would.
    assert "/etc/loa-receiver/receiver.yaml: valid (device" in log
    assert "example config: check-config exit 78" in log
    assert f"/out/receiver.yaml: OK — device {DEVICE}" in log
