"""The warnings of a command's audience (a ``grp:`` no state lists, a ``dev:`` without a state)
judged by the states the devices signed: ``--registry`` on the command subcommands.

The states are read from the broker, where anyone the ACL lets write a device's state topic can
leave one: a forged state that lists the mistyped group hid the warning, and one listing a
decoy group had it offered as "did you mean". Against the lab Mosquitto with states sealed by
device keys, as the boards seal them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.central.admin import main
from receiver.device_key import DeviceKey
from tests.central.conftest import Secured, Spy, device_state, leave_states, signed_state


def _forged(device: str, groups: list[str]) -> bytes:
    """A state sealed by a key that is not the device's enrolled one."""
    return signed_state(DeviceKey(device, Ed25519PrivateKey.generate()), groups)


def _stop(key: Path, secured: Secured, *audiences: str) -> list[str]:
    argv = ["stop", "--key", str(key), "--env", "prod", *secured.login()]
    for audience in audiences:
        argv += ["--aud", audience]
    return argv


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "warning" in line]


def test_a_forged_state_listing_the_mistyped_group_no_longer_hides_the_warning(
    secured: Secured,
    operator_key: Path,
    keys: dict[str, DeviceKey],
    registry: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    leave_states(
        secured,
        {
            "loa-001": signed_state(keys["loa-001"], ["commune-25-07873"]),
            "loa-002": _forged("loa-002", ["commune-25-0787"]),
        },
    )
    argv = _stop(operator_key, secured, "grp:commune-25-0787")

    assert main(argv) == 0  # unverified, the forged state hides the mistyped group
    assert _warnings(capsys.readouterr().err) == []

    assert main([*argv, "--registry", str(registry)]) == 0
    captured = capsys.readouterr()
    warned = _warnings(captured.err)
    assert len(warned) == 1, captured.err
    assert "lists group commune-25-0787; did you mean commune-25-07873?" in warned[0]
    assert "1 state set aside as unverified" in warned[0]
    assert "sent stop" in captured.out and "loa/v1/grp/commune-25-0787/cmd" in captured.out


def test_a_decoy_group_in_a_state_the_registry_does_not_vouch_for_is_not_offered(
    secured: Secured,
    operator_key: Path,
    keys: dict[str, DeviceKey],
    registry: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stranger = DeviceKey("loa-099", Ed25519PrivateKey.generate())  # signs, never enrolled
    leave_states(
        secured,
        {
            "loa-001": signed_state(keys["loa-001"], ["commune-25-07873"]),
            "loa-002": _forged("loa-002", ["commune-25-07870"]),
            "loa-003": device_state("loa-003", time.time(), groups=["commune-25-07871"]),
            "loa-099": signed_state(stranger, ["commune-25-07872"]),
        },
    )
    argv = [*_stop(operator_key, secured, "grp:commune-25-0787"), "--registry", str(registry)]

    assert main(argv) == 0
    err = capsys.readouterr().err
    warned = _warnings(err)
    assert len(warned) == 1, err
    assert "did you mean commune-25-07873?" in warned[0]
    for decoy in ("commune-25-07870", "commune-25-07871", "commune-25-07872"):
        assert decoy not in err
    assert "3 states set aside as unverified" in warned[0]


def test_a_device_whose_only_state_is_forged_is_warned_of_with_the_registry(
    secured: Secured,
    operator_key: Path,
    registry: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A ``dev:`` audience with a mistyped id a forged state was left under."""
    leave_states(secured, {"loa-0001": _forged("loa-0001", [])})
    argv = _stop(operator_key, secured, "dev:loa-0001")

    assert main(argv) == 0
    assert _warnings(capsys.readouterr().err) == []

    assert main([*argv, "--registry", str(registry)]) == 0
    captured = capsys.readouterr()
    warned = _warnings(captured.err)
    assert len(warned) == 1, captured.err
    assert "no device loa-0001 has left a verified state" in warned[0]
    assert "set aside as unverified" in warned[0]
    assert "sent stop" in captured.out


def test_signed_states_that_list_the_group_send_without_a_word(
    secured: Secured,
    operator_key: Path,
    keys: dict[str, DeviceKey],
    registry: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    leave_states(
        secured,
        {
            "loa-001": signed_state(keys["loa-001"], ["commune-25-07873"]),
            "loa-002": signed_state(keys["loa-002"], []),
        },
    )
    argv = _stop(operator_key, secured, "grp:commune-25-07873", "dev:loa-002")
    assert main([*argv, "--registry", str(registry)]) == 0
    assert capsys.readouterr().err == ""
    assert main(argv) == 0  # nor without it: no note on a send that has nothing to warn of
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("bad", ["missing", "malformed", "empty"])
def test_a_bad_registry_is_refused_before_anything_is_sent(
    secured: Secured,
    operator_key: Path,
    tmp_path: Path,
    bad: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "devices.jsonl"
    if bad == "malformed":
        path.write_text("loa-001 AAAA\n")
    elif bad == "empty":
        path.write_text("")
    with Spy(secured, "loa/v1/+/+/cmd") as spy:
        code = main(
            [
                *_stop(operator_key, secured, "grp:commune-25-07873", "dev:loa-001"),
                "--registry",
                str(path),
            ]
        )
        spy.settle()
        assert spy.topics() == []
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("receiver-admin: ") and str(path) in lines[0]
    assert "Traceback" not in captured.err


def test_a_bad_registry_is_refused_when_printing_only_too(
    operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = tmp_path / "absent.jsonl"
    argv = ["stop", "--key", str(operator_key), "--env", "prod", "--aud", "grp:commune-1"]
    assert main([*argv, "--registry", str(absent)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and str(absent) in captured.err


def test_without_the_registry_the_warning_says_once_its_states_were_not_verified(
    secured: Secured,
    operator_key: Path,
    keys: dict[str, DeviceKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    leave_states(
        secured, {"loa-001": signed_state(keys["loa-001"], ["commune-25-07873", "prov-25"])}
    )

    assert main(_stop(operator_key, secured, "grp:commune-25-0787", "grp:prov-52")) == 0
    err = capsys.readouterr().err
    warned = _warnings(err)
    assert len(warned) == 2, err
    assert "did you mean commune-25-07873?" in warned[0]
    assert err.count("--registry") == 1
    assert "unverified" in warned[0] and "--registry" in warned[0]


def test_fleet_group_with_the_registry_judges_a_mistyped_group_by_signed_states(
    secured: Secured,
    keys: dict[str, DeviceKey],
    registry: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``fleet --group`` with a mistyped group exits 1 and names the close group; a forged
    state listing the mistyped group kept it quiet (exit 0, its row as if the group had a
    board), and one listing a decoy had the decoy offered, even with ``--registry``."""
    leave_states(
        secured,
        {
            "loa-001": signed_state(keys["loa-001"], ["commune-25-07873"]),
            "loa-002": _forged("loa-002", ["commune-25-0787", "commune-25-07870"]),
        },
    )
    argv = ["fleet", "--timeout", "3", "--group", "commune-25-0787", *secured.login()]

    assert main([*argv, "--registry", str(registry)]) == 1
    err = capsys.readouterr().err
    assert "lists group commune-25-0787; did you mean commune-25-07873?" in err, err
    assert "commune-25-07870" not in err
