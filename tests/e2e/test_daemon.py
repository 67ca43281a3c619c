"""The daemon as a process: signed commands through a real Mosquitto, sound in a WAV file."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from receiver.central.signing import SigningKey, command_payload, sign_command
from receiver.timefmt import rfc3339
from tests.e2e.conftest import Site
from tests.lab.audio import dominant_of, read_wav, trim_silence, write_tone
from tests.lab.broker import Received, Subscriber
from tests.lab.daemon import DEVICE, GROUP, Daemon


def _json(message: Received) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(message.payload)
    return value


def wait_event(
    watcher: Subscriber, site: Site, kind: str, ref: str | None = None, timeout: float = 15
) -> dict[str, Any]:
    def matches(message: Received) -> bool:
        if message.topic != site.events_topic:
            return False
        event = _json(message)
        return bool(event["kind"] == kind and (ref is None or event.get("ref") == ref))

    return _json(watcher.wait_for(matches, timeout))


def wait_online(watcher: Subscriber, site: Site) -> dict[str, Any]:
    def online(message: Received) -> bool:
        return message.topic == site.state_topic and _json(message).get("online") is True

    return _json(watcher.wait_for(online, 15))


def play_payload(site: Site, name: str, **extra: Any) -> dict[str, Any]:
    data = (site.media.directory / name).read_bytes()
    body = {
        "priority": "normal",
        "source": {
            "files": [
                {
                    "url": site.media.url(name),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "title": name,
                }
            ]
        },
        "max_duration_s": 60,
    }
    return command_payload("play", body, env="lab", aud=[f"grp:{GROUP}"], **extra)


def wait_relay_switches(daemon: Daemon, count: int) -> None:
    daemon.wait_log(lambda _: len(daemon.logged("relay_switched")) >= count)


def events_of(watcher: Subscriber, site: Site) -> list[dict[str, Any]]:
    return [_json(m) for m in watcher.seen if m.topic == site.events_topic]


def test_signed_play_end_to_end_and_forged_and_replayed_commands_are_refused(
    site: Site, start_daemon: Callable[[], Daemon], watcher: Subscriber
) -> None:
    daemon = start_daemon()
    state = wait_online(watcher, site)
    assert state["relays"] == {"amp": "off"} and state["state"] == "idle"

    # The operator's own tool signs and publishes, as it would in the field.
    key_file = site.root / "op.pem"
    site.operator.save(key_file)
    tone = site.media.directory / "tone440.wav"
    subprocess.run(
        [sys.executable, "-m", "receiver.central.admin", "play", "--key", str(key_file),
         "--env", "lab", "--aud", f"grp:{GROUP}", "--url", site.media.url("tone440.wav"),
         "--file", str(tone), "--title", "tone 440", "--id", "first-play",
         "--host", "127.0.0.1", "--port", str(site.broker.port)],
        check=True,
    )  # fmt: skip
    assert wait_event(watcher, site, "accepted", "first-play")
    started = wait_event(watcher, site, "started", "first-play")
    finished = wait_event(watcher, site, "finished", "first-play")
    assert started["n"] < finished["n"]

    # What came out of the amplifier: 1.5 s of a 440 Hz tone.
    wait_relay_switches(daemon, 3)
    sound = read_wav(site.wav)
    assert 1.3 < sound.duration_s < 1.8
    assert dominant_of(trim_silence(sound.samples), sound.rate, (440.0, 1000.0)) == 440.0

    # The relay went on before the sound started and off after it finished.
    relay = [(line["on"], line["mono"]) for line in daemon.logged("relay_switched")]
    started_at = daemon.logged("started")[0]["mono"]
    finished_at = daemon.logged("finished")[0]["mono"]
    assert [on for on, _ in relay] == [False, True, False]  # off at boot, on, off after the tail
    assert relay[1][1] < started_at and relay[2][1] > finished_at

    # A forgery (a stranger's key under the operator's key id) and a replay: refused, silent.
    wav_before = site.wav.read_bytes()
    older = sign_command(
        play_payload(site, "tone1000.wav", message_id="older", seq=1), [site.operator]
    )
    newer = sign_command(play_payload(site, "tone440.wav", message_id="newer"), [site.operator])
    stranger = SigningKey("op-e2e", SigningKey.generate("x").private)
    forged = sign_command(play_payload(site, "tone1000.wav", message_id="forged"), [stranger])
    watcher.publish(site.cmd_topic, newer)
    wait_event(watcher, site, "finished", "newer")
    wait_relay_switches(daemon, 5)
    wav_before = site.wav.read_bytes()
    watcher.publish(site.cmd_topic, forged)
    assert wait_event(watcher, site, "rejected", None)["reason"] == "bad_signature"
    watcher.publish(site.cmd_topic, older)
    assert wait_event(watcher, site, "rejected", "older")["reason"] == "replayed"
    watcher.publish(site.cmd_topic, b"\x00not json at all")
    assert wait_event(watcher, site, "rejected")["reason"] == "malformed"

    # Nothing more was played or switched; the daemon is alive and reports idle.
    watcher.publish(site.cmd_topic, sign_command(
        command_payload("report", {}, env="lab", aud=[f"dev:{DEVICE}"], message_id="rep"),
        [site.operator]))  # fmt: skip
    wait_event(watcher, site, "accepted", "rep")
    assert site.wav.read_bytes() == wav_before
    kinds = [(e["kind"], e.get("ref")) for e in events_of(watcher, site)]
    assert ("started", "forged") not in kinds and ("started", "older") not in kinds
    assert [line["on"] for line in daemon.logged("relay_switched")] == [
        False,
        True,
        False,
        True,
        False,
    ]
    assert daemon.stop() == 0


def test_the_replay_floor_survives_a_daemon_restart(
    site: Site, start_daemon: Callable[[], Daemon], watcher: Subscriber
) -> None:
    first = start_daemon()
    wait_online(watcher, site)
    volume = sign_command(
        command_payload("volume", {"level": 40}, env="lab", aud=[f"dev:{DEVICE}"], message_id="v1"),
        [site.operator],
    )
    watcher.publish(site.cmd_topic, volume)
    wait_event(watcher, site, "accepted", "v1")
    assert first.stop() == 0

    start_daemon()
    wait_online(watcher, site)
    watcher.publish(site.cmd_topic, volume)  # an exact copy: acknowledged, nothing done
    duplicate = wait_event(watcher, site, "accepted", "v1")
    assert duplicate["detail"] == "duplicate of the last accepted"
    older = sign_command(
        command_payload(
            "volume", {"level": 90}, env="lab", aud=[f"dev:{DEVICE}"], message_id="v0", seq=5
        ),
        [site.operator],
    )
    watcher.publish(site.cmd_topic, older)
    assert wait_event(watcher, site, "rejected", "v0")["reason"] == "replayed"


def test_a_file_that_404s_is_reported_failed_and_the_amplifier_stays_off(
    site: Site, start_daemon: Callable[[], Daemon], watcher: Subscriber
) -> None:
    daemon = start_daemon()
    wait_online(watcher, site)
    payload = play_payload(site, "tone440.wav", message_id="gone")
    payload["body"]["source"]["files"][0]["url"] = site.media.url("missing.wav")
    watcher.publish(site.cmd_topic, sign_command(payload, [site.operator]))
    failed = wait_event(watcher, site, "failed", "gone")
    assert failed["reason"] == "download_failed"
    assert [line["on"] for line in daemon.logged("relay_switched")] == [False]
    assert not site.wav.exists()


def test_a_bad_config_exits_78_and_names_the_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("device_id: Bad Id\nenv: lab\ngroups: []\nbrokr: {host: x}\n")
    result = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 78
    assert f"{config}:1:12: device_id:" in result.stderr
    assert "did you mean 'broker'?" in result.stderr


def test_a_play_at_an_instant_is_prerolled_and_sounds_whole_from_it(
    site: Site, start_daemon: Callable[[], Daemon], watcher: Subscriber
) -> None:
    """docs/behaviour.md "Synchronised start": the file is opened paused a second before the
    instant, handed to the player's process with the instant a moment before it, and resumed
    there at the instant; the whole tone comes out, once, and the relay goes off after."""
    daemon = start_daemon()
    wait_online(watcher, site)
    start_at = time.time() + 3.0
    payload = play_payload(site, "tone440.wav", message_id="at-instant", ttl_s=60)
    payload["body"]["start_at"] = rfc3339(start_at)
    watcher.publish(site.cmd_topic, sign_command(payload, [site.operator]))
    assert wait_event(watcher, site, "accepted", "at-instant")
    started = wait_event(watcher, site, "started", "at-instant")
    wait_event(watcher, site, "finished", "at-instant")
    wait_relay_switches(daemon, 3)
    (preroll,) = daemon.logged("preroll")
    (play,) = daemon.logged("play")
    (sounded,) = [line for line in daemon.logged("started") if line.get("ref") == "at-instant"]
    (kept,) = daemon.logged("started_at_instant")
    assert preroll["token"] == play["token"] == kept["token"]  # resumed, not opened again
    assert 0.8 <= play["at"] - preroll["mono"] <= 1.2  # opened a second ahead
    assert play["mono"] < play["at"]  # handed over ahead of the instant
    assert kept["at"] == play["at"] and kept["playing_mono"] >= play["at"]  # not before it
    assert sounded["mono"] >= play["at"]
    assert started["ts"] >= rfc3339(start_at - 0.001)  # not before the instant
    sound = read_wav(site.wav)
    assert 1.3 < sound.duration_s < 1.8  # the whole 1.5 s tone, from its start
    assert dominant_of(trim_silence(sound.samples), sound.rate, (440.0, 1000.0)) == 440.0
    assert [line["on"] for line in daemon.logged("relay_switched")] == [False, True, False]


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM, signal.SIGINT])
def test_a_hangup_or_quit_stops_the_daemon_cleanly_with_the_relay_off(
    signum: signal.Signals,
    site: Site,
    start_daemon: Callable[[], Daemon],
    watcher: Subscriber,
) -> None:
    """A technician's SSH link that drops (SIGHUP) or a Ctrl-\\ (SIGQUIT) during a hand-run
    ended the daemon on the spot while it played: the amplifier relay stayed on, the board said
    nothing. Each ends it as SIGTERM does: the sound stops, the relay goes off, the last word is
    published."""
    write_tone(site.media.directory / "long.wav", 440.0, 20.0)
    daemon = start_daemon()
    wait_online(watcher, site)
    watcher.publish(
        site.cmd_topic,
        sign_command(play_payload(site, "long.wav", message_id="long"), [site.operator]),
    )
    wait_event(watcher, site, "started", "long")
    assert daemon.process is not None
    daemon.process.send_signal(signum)
    assert daemon.process.wait(timeout=15) == 0
    switched = daemon.logged("relay_switched")
    assert switched[-1]["on"] is False and switched[-1]["why"] == "shutdown", switched
    watcher.wait_for(lambda m: m.topic == site.state_topic and _json(m).get("online") is False, 10)
    size = site.wav.stat().st_size if site.wav.exists() else 0
    time.sleep(1.0)
    assert (site.wav.stat().st_size if site.wav.exists() else 0) == size  # no sound after it
