"""``schedule show --group`` checks the group's name, as ``fleet --group`` does.

``schedule show --group commune-25-0787`` (for commune-25-07873) printed "no schedule is
retained", exit 0, as for a real group that has none yet: the operator concluded the commune had
no programme. Now what is retained is still shown, then one line on stderr names the closest
group the devices' states list, exit 1; ``--registry`` judges by the states the devices signed.
With no state on the broker there is nothing to judge by, and nothing is said. Against the lab
Mosquitto.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.central import admin
from receiver.central.admin import main
from receiver.central.broker import BrokerError
from receiver.device_key import DeviceKey
from tests.central.conftest import Secured, leave_states, signed_state

TYPO, RIGHT = "commune-25-0787", "commune-25-07873"


def _show(secured: Secured, *more: str) -> list[str]:
    return ["schedule", "show", *more, *secured.login()]


def test_show_of_a_mistyped_group_names_the_close_one_and_exits_1(
    secured: Secured,
    keys: dict[str, DeviceKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    leave_states(secured, {"loa-001": signed_state(keys["loa-001"], [RIGHT, "prov-25"])})

    assert main(_show(secured, "--group", TYPO)) == 1

    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == f"group {TYPO} (loa/v1/grp/{TYPO}/schedule):"
    assert captured.err.splitlines() == [
        f"receiver-admin: --group: no device's state lists group {TYPO}; did you mean {RIGHT}?"
    ]
    assert main(_show(secured, "--group", RIGHT)) == 0
    assert capsys.readouterr().err == ""


def test_show_of_a_device_and_a_mistyped_group_says_so_too(
    secured: Secured,
    keys: dict[str, DeviceKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    leave_states(secured, {"loa-001": signed_state(keys["loa-001"], [RIGHT])})
    assert main(_show(secured, "--device", "loa-001", "--group", TYPO)) == 1
    err = capsys.readouterr().err
    assert f"lists group {TYPO}; did you mean {RIGHT}?" in err, err
    assert main(_show(secured, "--device", "loa-001")) == 0  # its own groups: no doubt
    assert capsys.readouterr().err == ""


def test_show_with_the_registry_judges_by_the_signed_states(
    secured: Secured,
    keys: dict[str, DeviceKey],
    registry: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    forged = signed_state(DeviceKey("loa-002", Ed25519PrivateKey.generate()), [TYPO])
    leave_states(secured, {"loa-001": signed_state(keys["loa-001"], [RIGHT]), "loa-002": forged})
    assert main(_show(secured, "--group", TYPO)) == 0  # unverified, the forged state hides it
    capsys.readouterr()

    assert main(_show(secured, "--group", TYPO, "--registry", str(registry))) == 1
    err = capsys.readouterr().err
    assert f"lists group {TYPO}; did you mean {RIGHT}?" in err, err


def test_show_with_no_state_to_judge_by_says_nothing_of_the_group(
    secured: Secured, capsys: pytest.CaptureFixture[str]
) -> None:
    """As ``fleet --group``: with no state on the broker there is nothing to judge a name by."""
    assert main(_show(secured, "--group", TYPO)) == 0
    assert capsys.readouterr().err == ""


def test_show_with_a_bad_registry_is_refused_before_anything_is_read(
    secured: Secured, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = tmp_path / "absent.jsonl"
    assert main(_show(secured, "--group", RIGHT, "--registry", str(absent))) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and str(absent) in lines[0], captured.err


def test_show_says_when_it_could_not_check_the_group(
    secured: Secured,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The programme was read and shown: a check that could not be made is said, exit 0."""

    def unanswered(*_args: object, **_kwargs: object) -> None:
        raise BrokerError("no answer from the broker in 10 s")

    monkeypatch.setattr(admin, "_retained_states", unanswered)
    assert main(_show(secured, "--group", TYPO)) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"group {TYPO} ")
    assert captured.err.splitlines() == [
        "receiver-admin: warning: --group was not checked against the devices' states "
        "(no answer from the broker in 10 s)"
    ]


def test_show_with_the_registry_and_only_forged_states_says_nothing_vouches_for_the_group(
    secured: Secured, registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ``--registry`` and every retained state forged (whoever can write the state topics
    left them), the check judged by no state at all and stayed silent, exit 0: the forger could
    switch the check off. ``fleet --group`` did the same."""
    forged = signed_state(DeviceKey("loa-002", Ed25519PrivateKey.generate()), [TYPO])
    leave_states(secured, {"loa-002": forged})
    assert main(_show(secured, "--group", TYPO, "--registry", str(registry))) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"receiver-admin: --group: no device lists group {TYPO} in a verified state: is the "
        "group right? (1 state set aside as unverified)"
    ]
    assert main(["fleet", "--group", TYPO, "--registry", str(registry), *secured.login()]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"receiver-admin: --group: no device lists group {TYPO} in a verified state: is the "
        "group right? (1 state set aside as unverified)"
    )


def test_show_of_a_device_whose_state_is_set_aside_does_not_claim_what_it_holds(
    secured: Secured, registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ``--registry`` a state its device did not sign is set aside; stdout then said
    "device loa-002 holds: no schedule", as if the board had none (the operator would publish
    again for nothing). What it holds is unknown, and said so."""
    forged = signed_state(DeviceKey("loa-002", Ed25519PrivateKey.generate()), [RIGHT])
    leave_states(secured, {"loa-002": forged})
    argv = _show(secured, "--device", "loa-002", "--group", RIGHT, "--registry", str(registry))
    main(argv)
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == (
        "device loa-002 holds: unknown (its state is not verified)"
    ), captured.out
    assert "the device holds version" not in captured.out
    assert "is not signed by its enrolled key" in captured.err
