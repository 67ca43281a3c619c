"""The preview (``schedule --dry-run``) warns of a programme's audience as the real run does.

``schedule --dry-run --aud grp:commune-25-0787`` (for commune-25-07873) printed the change
against the retained programme, exit 0, and nothing else: the preview, where an operator checks
before publishing, said nothing of the mistyped group the real run then warned of. Now it gives
the same warning (judged by the signed states with ``--registry``) ending "nothing sent", warns
of a ``dev:`` beside the groups as before, and says when it could not check the groups (no
``--host``, or the states could not be read). Nothing is ever published. Against the lab
Mosquitto.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.central import admin
from receiver.central.admin import main
from receiver.central.broker import BrokerError
from receiver.device_key import DeviceKey
from tests.central.conftest import Secured, Spy, leave_states, signed_state

TYPO, RIGHT = "commune-25-0787", "commune-25-07873"


def _programme(tmp_path: Path) -> str:
    path = tmp_path / "programme.json"
    entry = {
        "id": "news",
        "days": ["mon"],
        "at": "06:30",
        "priority": "normal",
        "source": {"files": [{"url": "https://m.example/a.mp3", "sha256": "b" * 64, "size": 9}]},
        "max_duration_s": 600,
    }
    path.write_text(json.dumps({"id": "morning", "version": 1, "entries": [entry]}))
    return str(path)


def _schedule(file: str, key: Path, secured: Secured | None, *audiences: str) -> list[str]:
    argv = ["schedule", "--file", file, "--key", str(key), "--env", "prod"]
    for audience in audiences:
        argv += ["--aud", audience]
    return argv + (secured.login() if secured is not None else [])


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "warning" in line]


def _retained_schedules(secured: Secured) -> list[str]:
    with Spy(secured, "loa/v1/grp/+/schedule") as spy:  # a fresh subscriber: what is retained
        spy.settle()
        return spy.topics()


def test_the_preview_warns_of_a_mistyped_group_and_publishes_nothing(
    secured: Secured,
    operator_key: Path,
    keys: dict[str, DeviceKey],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    leave_states(secured, {"loa-001": signed_state(keys["loa-001"], [RIGHT, "prov-25"])})
    argv = _schedule(_programme(tmp_path), operator_key, secured, f"grp:{TYPO}")

    assert main([*argv, "--dry-run"]) == 0

    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == f"loa/v1/grp/{TYPO}/schedule:"
    warned = _warnings(captured.err)
    assert len(warned) == 1, captured.err
    assert warned[0].startswith("receiver-admin: warning: ")
    assert f"lists group {TYPO}; did you mean {RIGHT}?" in warned[0]
    assert "nothing sent (--dry-run)" in warned[0] and "sent all the same" not in warned[0]
    assert "--registry" in warned[0]  # judged by states nobody verified: says how to
    assert _retained_schedules(secured) == []


def test_the_preview_judges_by_the_signed_states_with_the_registry(
    secured: Secured,
    operator_key: Path,
    keys: dict[str, DeviceKey],
    registry: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    forged = signed_state(DeviceKey("loa-002", Ed25519PrivateKey.generate()), [TYPO])
    leave_states(secured, {"loa-001": signed_state(keys["loa-001"], [RIGHT]), "loa-002": forged})
    argv = _schedule(_programme(registry.parent), operator_key, secured, f"grp:{TYPO}")

    assert main([*argv, "--dry-run", "--registry", str(registry)]) == 0

    captured = capsys.readouterr()
    warned = _warnings(captured.err)
    assert len(warned) == 1, captured.err
    assert f"lists group {TYPO}; did you mean {RIGHT}?" in warned[0]
    assert "1 state set aside as unverified" in warned[0]
    assert _retained_schedules(secured) == []


def test_the_preview_of_a_programme_for_the_right_group_says_nothing_more(
    secured: Secured,
    operator_key: Path,
    keys: dict[str, DeviceKey],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    leave_states(secured, {"loa-001": signed_state(keys["loa-001"], [RIGHT])})
    argv = _schedule(_programme(tmp_path), operator_key, secured, f"grp:{RIGHT}")
    assert main([*argv, "--dry-run"]) == 0
    assert capsys.readouterr().err == ""


def test_the_preview_warns_of_a_device_beside_the_groups(
    secured: Secured,
    operator_key: Path,
    keys: dict[str, DeviceKey],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    leave_states(secured, {"loa-001": signed_state(keys["loa-001"], [RIGHT])})
    argv = _schedule(_programme(tmp_path), operator_key, secured, f"grp:{RIGHT}", "dev:loa-009")
    assert main([*argv, "--dry-run"]) == 0
    warned = _warnings(capsys.readouterr().err)
    assert len(warned) == 1, warned
    assert "--aud dev:loa-009: a board gets programmes on its groups' topics only" in warned[0]
    assert _retained_schedules(secured) == []


def test_the_preview_without_a_broker_says_the_groups_were_not_checked(
    operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _schedule(_programme(tmp_path), operator_key, None, f"grp:{TYPO}", "dev:loa-009")
    assert main([*argv, "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"loa/v1/grp/{TYPO}/schedule:")
    lines = captured.err.splitlines()
    assert len(lines) == 2, captured.err
    assert "--aud dev:loa-009" in lines[0]
    assert lines[1] == (
        "receiver-admin: note: no --host: not compared with the retained programme, nor the "
        "groups checked against the devices' states (give --host to check both)"
    )


def test_the_preview_says_when_it_could_not_read_the_states(
    secured: Secured,
    operator_key: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real run has published when it reads the states; the preview has nothing else to
    show for the check, so a check it could not make is said, not passed over."""

    def unanswered(*_args: object, **_kwargs: object) -> None:
        raise BrokerError("no answer from the broker in 10 s")

    monkeypatch.setattr(admin, "_retained_states", unanswered)
    argv = _schedule(_programme(tmp_path), operator_key, secured, f"grp:{TYPO}")
    assert main([*argv, "--dry-run"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "receiver-admin: warning: the groups were not checked against the devices' states "
        "(no answer from the broker in 10 s)"
    ]


def test_the_preview_without_a_broker_does_not_claim_nothing_is_retained(
    operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without ``--host`` nothing was read from the broker: "nothing retained: morning version 1
    would be the first" said what it could not know (the group may hold version 5, and the real
    run would then be refused as stale). The preview lists the entries, and says it did not
    compare."""
    argv = _schedule(_programme(tmp_path), operator_key, None, f"grp:{RIGHT}")
    assert main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "nothing retained" not in out
    assert out.splitlines() == [
        f"loa/v1/grp/{RIGHT}/schedule:",
        "  not compared with what the group holds (no --host): morning version 1",
        "  + news: mon 06:30 (added)",
    ]


def test_a_programme_for_devices_alone_is_said_to_reach_no_board(
    operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--aud dev:X`` with no group: the warning said "X gets this one only if it is in group
    (none)". No board listens for programmes off its groups' topics, so none would get it."""
    argv = _schedule(_programme(tmp_path), operator_key, None, "dev:loa-009")
    assert main([*argv, "--dry-run"]) == 0
    (warned,) = _warnings(capsys.readouterr().err)
    assert "(none)" not in warned
    assert warned == (
        "receiver-admin: warning: --aud dev:loa-009: a board gets programmes on its groups' "
        "topics only, and no --aud grp:<id> is given: no board would get this one; publish it "
        "to a group loa-009 is in (or one it alone is in)"
    )


def test_the_preview_prints_a_forged_retained_programme_as_text_and_does_not_stop(
    secured: Secured, operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The retained programme the preview compares with is whatever a client the ACL lets write
    the group's topic left there (it is not verified here): an entry id holding a terminal
    escape reached the operator's terminal, and days that were not text ended the preview in
    a TypeError traceback."""
    from receiver.central.signing import SigningKey, sign_command

    forged = {
        "id": "morning",
        "version": 1,
        "entries": [
            {"id": "news", "days": [1, 2], "at": "06:00"},
            {"id": "old\x1b]0;owned\x07", "days": "mon", "at": "07:00\x1b[2J"},
        ],
    }
    with Spy(secured) as spy:
        spy.publish(
            f"loa/v1/grp/{RIGHT}/schedule",
            sign_command(forged, [SigningKey.generate("anyone")]),
            retain=True,
        )
    argv = _schedule(_programme(tmp_path), operator_key, secured, f"grp:{RIGHT}")
    # Above the forged version 1: a stale one is refused by the preview as by the real run.
    assert main([*argv, "--version", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out, repr(out)
    assert "~ news: 1,2 06:00 -> mon 06:30 (retimed)" in out, out


def test_a_programme_signed_without_a_broker_says_what_was_not_checked(
    operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without ``--host`` the real run prints the signed programme for publishing by hand; it
    said nothing of the group it could not check, so a mistyped group went out unwarned."""
    argv = _schedule(_programme(tmp_path), operator_key, None, f"grp:{TYPO}")
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["payloadType"]  # the envelope alone on stdout, for piping
    assert captured.err.splitlines() == [
        "receiver-admin: note: no --host: printed, not sent; the groups were not checked "
        "against the devices' states, nor the version against the retained programme, nor the "
        "key against the fleet's keyring (give --host to check and send)"
    ]
    assert main(_schedule(_programme(tmp_path), operator_key, None, "dev:loa-0001")) == 0
    assert capsys.readouterr().err.splitlines()[-1] == (
        "receiver-admin: note: no --host: printed, not sent; the key was not checked against "
        "the fleet's keyring, and with no grp: audience there is no group's programme to "
        "compare it with (give --host and a grp: audience to check and send)"
    )


def test_a_command_signed_without_a_broker_says_what_was_not_checked(
    operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["stop", "--key", str(operator_key), "--env", "prod", "--aud", f"grp:{TYPO}"]
    assert main([*argv, "--aud", "dev:loa-0001"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["payloadType"]
    assert captured.err.splitlines() == [
        "receiver-admin: note: no --host: printed, not sent; the devices and groups were not "
        "checked against the devices' states, nor the key against the fleet's keyring (give "
        "--host to check and send)"
    ]
