"""What the fleet's retained documents say is checked before anything is signed or sent.

A mistyped ``--env`` (``prd`` for ``prod``) was signed and sent (exit 0) although the retained
keyring names the environment: every board refuses it (``wrong_env``), and a retained keyring or
programme replaced the good one. ``schedule --dry-run`` exited 0 for a run that would be refused
(a stale version, a key the fleet's keyring refuses). A programme named ``GOOD.YAML`` was read as
JSON; one in YAML under another name was said to be "not JSON" only. Against the lab Mosquitto.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from receiver.central.admin import main
from receiver.central.signing import SigningKey, key_entry
from tests.central.conftest import Secured, read_retained
from tests.central.test_nothing_unchecked import (
    GROUP_SCHEDULE,
    entry,
    programme,
    schedule_args,
)

TRUST = "loa/v1/trust"


def _retain_keyring(
    secured: Secured, operator_key: Path, tmp_path: Path, version: int = 3
) -> list[str]:
    """A prod keyring retained on loa/v1/trust; the trust arguments that made it."""
    root = tmp_path / "root-a.pem"
    SigningKey.generate("root-a").save(root)
    entries = [
        key_entry(SigningKey.load(root), ["root"]),
        key_entry(SigningKey.load(operator_key), ["operator"]),
    ]
    keyring = tmp_path / "keyring.json"
    keyring.write_text(json.dumps(entries))
    trust = ["trust", "--keys", str(keyring), "--key", str(root), "--thresholds", "root=1"]
    trust += secured.login()
    assert main([*trust, "--version", str(version), "--env", "prod"]) == 0
    return trust


def _refusal(capsys: pytest.CaptureFixture[str]) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if "warning" not in line]


def test_a_trust_document_for_another_env_does_not_replace_the_retained_keyring(
    secured: Secured, operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trust = _retain_keyring(secured, operator_key, tmp_path)
    capsys.readouterr()

    code = main([*trust, "--version", "4", "--env", "prd"])

    lines = _refusal(capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "--env prd" in lines[0] and "prod" in lines[0] and TRUST in lines[0]
    assert "replace" in lines[0] and "nothing was sent" in lines[0]
    held = read_retained(secured, TRUST)
    assert held is not None and held["version"] == 3 and held["env"] == "prod"


def test_a_schedule_for_another_env_is_refused_and_the_good_one_stays(
    secured: Secured, operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _retain_keyring(secured, operator_key, tmp_path)
    first = programme(tmp_path, 1, [entry("a", "06:00")])
    assert main(schedule_args(secured, operator_key, first)) == 0
    assert read_retained(secured, GROUP_SCHEDULE) is not None
    argv = schedule_args(secured, operator_key, programme(tmp_path, 2, [entry("b", "07:00")]))
    argv[argv.index("prod")] = "prd"
    capsys.readouterr()

    code = main(argv)

    lines = _refusal(capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "--env prd" in lines[0] and "prod" in lines[0] and TRUST in lines[0]
    held = read_retained(secured, GROUP_SCHEDULE)
    assert held is not None and held["version"] == 1

    code = main([*argv, "--dry-run"])  # the preview says so too
    assert code == 2 and "--env prd" in capsys.readouterr().err


def test_a_command_for_another_env_is_refused(
    secured: Secured, operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _retain_keyring(secured, operator_key, tmp_path)
    capsys.readouterr()
    argv = ["volume", "--level", "5", "--key", str(operator_key), "--aud", "dev:loa-01"]

    code = main([*argv, "--env", "prd", *secured.login()])

    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "warning" not in line]
    assert code == 2 and captured.out == "" and len(lines) == 1, captured.err
    assert "--env prd" in lines[0] and "prod" in lines[0] and TRUST in lines[0]
    assert main([*argv, "--env", "prod", *secured.login()]) == 0


def test_without_a_retained_keyring_the_env_is_not_judged(
    secured: Secured, operator_key: Path, tmp_path: Path
) -> None:
    argv = schedule_args(secured, operator_key, programme(tmp_path, 1, [entry("a", "06:00")]))
    argv[argv.index("prod")] = "prd"
    assert main(argv) == 0


def test_the_preview_of_a_stale_version_exits_2_after_its_listing(
    secured: Secured, operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = programme(tmp_path, 5, [entry("a", "06:00")])
    assert main(schedule_args(secured, operator_key, first)) == 0
    capsys.readouterr()

    argv = schedule_args(secured, operator_key, programme(tmp_path, 3, [entry("b", "07:00")]))
    code = main([*argv, "--dry-run"])

    captured = capsys.readouterr()
    assert code == 2
    assert "  morning: version 5 -> 3 (REFUSED: stale)" in captured.out.splitlines()
    assert "holds morning version 5" in captured.err and "give --version 6 or above" in captured.err
    held = read_retained(secured, GROUP_SCHEDULE)
    assert held is not None and held["version"] == 5


def test_the_preview_of_a_key_the_keyring_refuses_exits_2(
    secured: Secured, operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _retain_keyring(secured, operator_key, tmp_path)
    first = programme(tmp_path, 5, [entry("a", "06:00")])
    assert main(schedule_args(secured, operator_key, first)) == 0
    stranger = tmp_path / "op-9.pem"
    SigningKey.generate("op-9").save(stranger)
    capsys.readouterr()

    argv = schedule_args(secured, stranger, programme(tmp_path, 6, [entry("b", "07:00")]))
    code = main([*argv, "--dry-run"])

    captured = capsys.readouterr()
    assert code == 2
    assert "  morning: version 5 -> 6" in captured.out.splitlines()
    assert "the fleet's keyring (trust version 3" in captured.err
    assert "(unknown_key)" in captured.err
    held = read_retained(secured, GROUP_SCHEDULE)
    assert held is not None and held["version"] == 5


YAML_SOURCE = """\
id: morning
version: 2
media_url: https://media.example.vn/c1/
entries:
  - title: News
    days: weekdays
    at: 06:30
    priority: normal
    file: news.mp3
    max_duration: 30m
"""


def _signing(source: Path, key: Path) -> list[str]:
    return ["schedule", "--file", str(source), "--key", str(key), "--env", "prod", "--aud", "grp:c"]


@pytest.mark.parametrize("name", ["GOOD.YAML", "good.Yml"])
def test_a_yaml_programme_is_read_whatever_the_case_of_its_suffix(
    name: str, operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "news.mp3").write_bytes(b"news" * 100)
    source = tmp_path / name
    source.write_text(YAML_SOURCE, encoding="utf-8")

    code = main(_signing(source, operator_key))

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "not JSON" not in captured.err


def test_a_yaml_programme_under_another_suffix_is_named_as_yaml(
    operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "good.txt"
    source.write_text(YAML_SOURCE, encoding="utf-8")

    code = main(_signing(source, operator_key))

    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "is not JSON; it reads as YAML: name it .yaml" in err
