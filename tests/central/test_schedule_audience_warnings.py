"""A programme published for a group no device lists is warned of, as commands are.

``receiver-admin schedule --aud grp:commune-25-0787`` (for commune-25-07873) said "sent schedule
morning version 1 to loa/v1/grp/commune-25-0787/schedule, retained", exit 0, and nothing else:
no board listens there, and the commune missed its daily programme without a word. Now the
schedule is still published (a board being installed has no state yet), then one warning names
the closest group; ``--registry`` judges by the states the devices signed, and a registry that
cannot be read is refused before anything is retained. Against the lab Mosquitto.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.central.admin import main
from receiver.device_key import DeviceKey
from tests.central.conftest import Secured, Spy, leave_states, read_retained, signed_state

TYPO, RIGHT = "commune-25-0787", "commune-25-07873"


def _programme(tmp_path: Path, version: int = 1) -> str:
    path = tmp_path / f"programme-v{version}.json"
    entry = {
        "id": "news",
        "days": ["mon"],
        "at": "06:30",
        "priority": "normal",
        "source": {"files": [{"url": "https://m.example/a.mp3", "sha256": "b" * 64, "size": 9}]},
        "max_duration_s": 600,
    }
    path.write_text(json.dumps({"id": "morning", "version": version, "entries": [entry]}))
    return str(path)


def _schedule(file: str, key: Path, secured: Secured | None, *audiences: str) -> list[str]:
    argv = ["schedule", "--file", file, "--key", str(key), "--env", "prod"]
    for audience in audiences:
        argv += ["--aud", audience]
    return argv + (secured.login() if secured is not None else [])


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "warning" in line]


def test_a_programme_for_a_mistyped_group_is_published_with_a_warning_naming_the_close_one(
    secured: Secured,
    operator_key: Path,
    keys: dict[str, DeviceKey],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    leave_states(secured, {"loa-001": signed_state(keys["loa-001"], [RIGHT, "prov-25"])})

    assert main(_schedule(_programme(tmp_path), operator_key, secured, f"grp:{TYPO}")) == 0
    captured = capsys.readouterr()
    assert captured.out == (
        f"sent schedule morning version 1 to loa/v1/grp/{TYPO}/schedule, retained\n"
    )
    warned = _warnings(captured.err)
    assert len(warned) == 1, captured.err
    assert warned[0].startswith("receiver-admin: warning: ")
    assert f"lists group {TYPO}; did you mean {RIGHT}?" in warned[0]
    assert "--registry" in warned[0]  # judged by states nobody verified: says how to
    assert read_retained(secured, f"loa/v1/grp/{TYPO}/schedule") is not None  # still published


def test_with_the_registry_a_forged_state_listing_the_mistyped_group_no_longer_hides_it(
    secured: Secured,
    operator_key: Path,
    keys: dict[str, DeviceKey],
    registry: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tmp_path = registry.parent
    forged = signed_state(DeviceKey("loa-002", Ed25519PrivateKey.generate()), [TYPO])
    leave_states(secured, {"loa-001": signed_state(keys["loa-001"], [RIGHT]), "loa-002": forged})
    argv = _schedule(_programme(tmp_path, 1), operator_key, secured, f"grp:{TYPO}")
    assert main(argv) == 0  # unverified, the forged state hides the mistyped group
    assert _warnings(capsys.readouterr().err) == []

    argv = _schedule(_programme(tmp_path, 2), operator_key, secured, f"grp:{TYPO}")
    assert main([*argv, "--registry", str(registry)]) == 0
    captured = capsys.readouterr()
    warned = _warnings(captured.err)
    assert len(warned) == 1, captured.err
    assert f"lists group {TYPO}; did you mean {RIGHT}?" in warned[0]
    assert "1 state set aside as unverified" in warned[0]
    assert f"sent schedule morning version 2 to loa/v1/grp/{TYPO}/schedule" in captured.out


def test_a_programme_for_the_right_groups_is_published_without_a_word(
    secured: Secured,
    operator_key: Path,
    keys: dict[str, DeviceKey],
    registry: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tmp_path = registry.parent
    leave_states(
        secured,
        {
            "loa-001": signed_state(keys["loa-001"], [RIGHT, "prov-25"]),
            "loa-002": signed_state(keys["loa-002"], ["prov-25"]),
        },
    )
    argv = _schedule(_programme(tmp_path, 1), operator_key, secured, f"grp:{RIGHT}", "grp:prov-25")
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.count("sent schedule morning version 1") == 2

    argv = _schedule(_programme(tmp_path, 2), operator_key, secured, f"grp:{RIGHT}")
    assert main([*argv, "--registry", str(registry)]) == 0
    assert capsys.readouterr().err == ""


def test_a_refused_programme_says_only_why(
    secured: Secured,
    operator_key: Path,
    keys: dict[str, DeviceKey],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Nothing was published: the refusal is the one line, no warning of its audience."""
    leave_states(secured, {"loa-001": signed_state(keys["loa-001"], [RIGHT])})
    argv = _schedule(_programme(tmp_path), operator_key, secured, f"grp:{TYPO}")
    assert main(argv) == 0
    capsys.readouterr()

    assert main(argv) == 2  # the same version again: a receiver refuses it (stale_version)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "stale_version" in lines[0], lines


@pytest.mark.parametrize("bad", ["missing", "malformed", "empty"])
def test_a_bad_registry_is_refused_before_anything_is_retained(
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
    argv = _schedule(_programme(tmp_path), operator_key, secured, f"grp:{TYPO}", f"grp:{RIGHT}")

    code = main([*argv, "--registry", str(path)])

    with Spy(secured, "loa/v1/grp/+/schedule") as spy:  # a fresh subscriber: what is retained
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
    argv = _schedule(_programme(tmp_path), operator_key, None, f"grp:{RIGHT}")
    assert main([*argv, "--registry", str(absent)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and str(absent) in captured.err


def test_a_device_in_a_programme_s_audience_is_warned_of(
    operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--aud dev:loa-009`` beside a group was taken without a word, as if that board would
    get the programme: a board listens for programmes on its groups' topics only, so it gets
    this one only as a member of one of them (and then the group already names it)."""
    argv = _schedule(_programme(tmp_path), operator_key, None, f"grp:{RIGHT}", "dev:loa-009")
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert _warnings(captured.err) == [
        f"receiver-admin: warning: --aud dev:loa-009: a board gets programmes on its groups' "
        f"topics only: loa-009 gets this one only if it is in group {RIGHT} (then the group "
        "names it already); to give it a programme of its own, publish one to a group it alone "
        "is in"
    ], captured.err
    assert captured.out.startswith("{")  # printed, signed, as without it
