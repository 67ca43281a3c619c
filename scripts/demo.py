"""``make demo``: a whole receiver on this machine, driven the way central would drive it.

Starts a local Mosquitto, serves a chime over HTTP, makes a throwaway operator key and a demo
config, runs the daemon, sends it one signed play command with ``receiver-admin``, and prints
the device's events as they arrive. The chime goes to the speakers when the machine has a sound
card, otherwise into a WAV file whose path is printed at the end.
"""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import sys
import threading
import time
import wave
from array import array
from pathlib import Path

from receiver.central.signing import SigningKey
from tests.lab.broker import MosquittoBroker
from tests.lab.web import MediaServer

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "demo-run"
BIN = Path(sys.executable).parent
DEVICE = "demo-receiver-01"
GROUP = "commune-demo"


def write_chime(path: Path, rate: int = 44100) -> None:
    """Three soft notes (C5, E5, G5), the kind of signal that opens a bulletin."""
    samples = array("h")
    for freq in (523.25, 659.25, 783.99):
        n = int(0.45 * rate)
        for i in range(n):
            envelope = min(1.0, i / 400) * math.exp(-3.0 * i / n)
            samples.append(int(12000 * envelope * math.sin(2 * math.pi * freq * i / rate)))
    if sys.byteorder != "little":
        samples.byteswap()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())


def has_sound_card() -> bool:
    try:
        return "playback" in Path("/proc/asound/pcm").read_text()
    except OSError:
        return False


def write_config(
    path: Path, broker_port: int, media_port: int, key: SigningKey, wav: Path | None
) -> None:
    output = f"  output: file\n  wav_file: {wav}\n" if wav else "  output: alsa\n"
    path.write_text(
        f"""# Demo config written by `make demo`; see config/receiver.example.yaml for every key.
device_id: {DEVICE}
env: lab
groups: [{GROUP}]
broker:
  host: 127.0.0.1
  port: {broker_port}
trust:
  keys:
    - id: {key.id}
      ed25519: {key.public_b64}
      roles: [operator]
      scopes: ["{GROUP}"]
player:
{output}  default_volume: 80
gpio:
  pin_factory: mock
  amp_pin: GPIO17
  warm_up_s: 0.5
  tail_s: 1.0
media:
  allowed_schemes: [http]
  allowed_hosts: ["127.0.0.1:{media_port}"]
storage:
  state_dir: {WORK / "state"}
  cache_dir: {WORK / "cache"}
logging:
  level: info
  format: console
clock:
  trust_system_clock: always
""",
        encoding="utf-8",
    )


def echo_daemon_log(stream: subprocess.Popen[bytes]) -> None:
    """Echo the daemon's log lines, indented, as they come."""
    assert stream.stdout is not None  # noqa: S101 - started with stdout=PIPE
    for line in stream.stdout:
        sys.stdout.write("    daemon | " + line.decode("utf-8", "replace"))
        sys.stdout.flush()


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "media").mkdir(parents=True)
    chime = WORK / "media" / "chime.wav"
    write_chime(chime)
    wav = None if has_sound_card() else WORK / "played.wav"
    key = SigningKey.generate("demo-operator")
    key_file = WORK / "operator.pem"
    key.save(key_file)

    with MosquittoBroker(WORK / "broker") as broker:
        media = MediaServer(WORK / "media")
        media_port = media.port
        config = WORK / "receiver.yaml"
        write_config(config, broker.port, media_port, key, wav)
        print(f"==> broker on 127.0.0.1:{broker.port}, media on 127.0.0.1:{media_port}")
        print(f"==> config {config}")
        subprocess.run([BIN / "receiver", "check-config", str(config)], check=True)
        daemon = subprocess.Popen(
            [BIN / "receiver", "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        echo = threading.Thread(target=echo_daemon_log, args=(daemon,), daemon=True)
        echo.start()
        try:
            watcher = subprocess.Popen(
                [
                    BIN / "receiver-admin",
                    "watch",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(broker.port),
                    "--device",
                    DEVICE,
                    "--until",
                    "finished",
                    "failed",
                    "--timeout",
                    "30",
                ],
            )
            time.sleep(1.5)
            print("==> operator signs and sends: play chime.wav to the commune group")
            subprocess.run(
                [
                    BIN / "receiver-admin",
                    "play",
                    "--key",
                    str(key_file),
                    "--env",
                    "lab",
                    "--aud",
                    f"grp:{GROUP}",
                    "--url",
                    f"http://127.0.0.1:{media_port}/chime.wav",
                    "--file",
                    str(chime),
                    "--title",
                    "Demo chime",
                    "--max-duration",
                    "60",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(broker.port),
                ],
                check=True,
            )
            watcher.wait(timeout=40)
            time.sleep(2.0)  # let the amplifier's tail run out, as it would on a pole
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=15)
            echo.join(timeout=2)
            media.close()
    if wav is not None and wav.exists():
        with wave.open(str(wav)) as played:
            seconds = played.getnframes() / played.getframerate()
        print(f"==> no sound card here: the receiver played into {wav} ({seconds:.2f} s of audio)")
    elif wav is not None:
        print("==> nothing was played: see the daemon's log above", file=sys.stderr)
        return 1
    else:
        print("==> played on the speakers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
