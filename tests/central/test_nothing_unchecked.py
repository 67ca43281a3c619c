"""Nothing leaves unchecked: a command or document a receiver would refuse is never published.

The breaks issue 9 reports, against a real Mosquitto with passwords and ACLs: a programme with
``time`` where ``at`` belongs and no ``sha256`` was published as the group's retained schedule
(exit 0) and replaced the good one; ``--aud commune-25-07873`` went to ``loa/v1/grp//cmd``;
``--env``, ``--priority`` and ``--level`` were not checked. Now each problem is named by its
path, the exit status is 2, and the broker sees nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from receiver.central.admin import main
from receiver.central.signing import SigningKey, key_entry
from receiver.core.schedule import parse_schedule
from tests.central.conftest import Secured, Spy, read_retained

SHA = "b" * 64
GROUP_SCHEDULE = "loa/v1/grp/commune-1/schedule"


def entry(entry_id: str, at: str, days: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": entry_id,
        "days": days or ["mon", "wed"],
        "at": at,
        "priority": "normal",
        "source": {
            "files": [{"url": f"https://m.example/{entry_id}.mp3", "sha256": SHA, "size": 9}]
        },
        "max_duration_s": 600,
    }
    body.update(extra)
    return body


def programme(tmp_path: Path, version: int, entries: list[dict[str, Any]]) -> str:
    path = tmp_path / f"programme-v{version}.json"
    path.write_text(json.dumps({"id": "morning", "version": version, "entries": entries}))
    return str(path)


def schedule_args(secured: Secured, key: Path, file: str, *more: str) -> list[str]:
    return [
        "schedule",
        "--file",
        file,
        "--key",
        str(key),
        "--env",
        "prod",
        "--aud",
        "grp:commune-1",
        *more,
        *secured.login(),
    ]


def test_the_issues_programme_is_refused_by_path_and_the_good_one_stays_retained(
    secured: Secured, operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = programme(tmp_path, 3, [entry("news", "06:30")])
    assert main(schedule_args(secured, operator_key, good)) == 0
    capsys.readouterr()
    broken_entry = entry("weather", "07:00")
    broken_entry["time"] = broken_entry.pop("at")
    del broken_entry["source"]["files"][0]["sha256"]
    broken = programme(tmp_path, 4, [entry("news", "06:30"), broken_entry])

    code = main(schedule_args(secured, operator_key, broken))

    err = capsys.readouterr().err
    assert code == 2
    assert "nothing was signed or sent" in err
    assert "entries[1].at: is missing" in err
    assert "entries[1].time: is not a known field; did you mean at?" in err
    assert "entries[1].source.files[0].sha256: is missing" in err
    assert "Traceback" not in err
    held = read_retained(secured, GROUP_SCHEDULE)
    assert held is not None and held["version"] == 3
    parse_schedule(held)  # and it is still one a receiver takes


def test_a_version_not_above_the_retained_one_is_refused_before_signing(
    secured: Secured, operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(schedule_args(secured, operator_key, programme(tmp_path, 5, [entry("a", "06:00")])))
        == 0
    )
    capsys.readouterr()
    code = main(schedule_args(secured, operator_key, programme(tmp_path, 5, [entry("b", "07:00")])))
    err = capsys.readouterr().err
    assert code == 2
    assert "holds morning version 5" in err and "give --version 6 or above" in err
    held = read_retained(secured, GROUP_SCHEDULE)
    assert held is not None and [e["id"] for e in held["entries"]] == ["a"]


def test_dry_run_shows_added_removed_and_retimed_entries_and_sends_nothing(
    secured: Secured, operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = [entry("news", "06:30"), entry("music", "11:00"), entry("weather", "17:00")]
    assert main(schedule_args(secured, operator_key, programme(tmp_path, 7, old))) == 0
    capsys.readouterr()
    new = [entry("news", "06:45"), entry("weather", "17:00", volume=60), entry("notice", "19:00")]

    code = main(schedule_args(secured, operator_key, programme(tmp_path, 8, new), "--dry-run"))

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == f"{GROUP_SCHEDULE}:"
    assert "  morning: version 7 -> 8" in out
    assert "  ~ news: mon,wed 06:30 -> mon,wed 06:45 (retimed)" in out
    assert "  ~ weather: volume changed" in out
    assert "  + notice: mon,wed 19:00 (added)" in out
    assert "  - music: mon,wed 11:00 (removed)" in out
    held = read_retained(secured, GROUP_SCHEDULE)
    assert held is not None and held["version"] == 7


COMMAND = ["--key", "{key}", "--env", "prod", "--aud", "grp:commune-1"]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (
            ["stop", "--aud", "commune-25-07873"],
            'aud[0]: "commune-25-07873" is not an audience: dev:<device id> or grp:<group id>',
        ),
        (["stop", "--env", "Prod"], 'env: "Prod" is not an id'),
        (
            ["stream", "--url", "http://s.example/live", "--priority", "urgent"],
            'body.priority: must be one of normal, priority, emergency, not "urgent"',
        ),
        (["volume", "--level", "130"], "body.level: must be at most 100, not 130"),
        (["volume", "--level", "-1"], "body.level: must be at least 0, not -1"),
        (["relay", "--state", "on"], "body.duration_s: is missing"),
        (
            ["play", "--url", "https://m.example/a.mp3", "--sha256", "ABC", "--size", "3"],
            'body.source.files[0].sha256: "ABC" is not a SHA-256',
        ),
        (["stop", "--ttl", "-5"], "--ttl -5: a command needs a positive lifetime"),
        (["stop", "--id", "bad id with spaces"], 'id: "bad id with spaces" is not an id'),
    ],
)
def test_a_command_a_receiver_would_refuse_is_named_and_not_sent(
    argv: list[str],
    named: str,
    secured: Secured,
    operator_key: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    defaults = {"--key": str(operator_key), "--env": "prod", "--aud": "grp:commune-1"}
    for flag, value in defaults.items():
        if flag not in argv:
            argv = [*argv, flag, value]
    with Spy(secured, retained=False) as spy:
        code = main([*argv, *secured.login()])
        err = capsys.readouterr().err
        # A valid stop sent afterwards arrives; the refused command, sent before it, never did.
        main(["stop", *(f.format(key=operator_key) for f in COMMAND), *secured.login()])
        spy.wait_for("loa/v1/grp/commune-1/cmd")
        assert spy.topics() == ["loa/v1/grp/commune-1/cmd"]
    assert code == 2
    assert named in err
    assert "Traceback" not in err


def test_an_unsigned_check_still_prints_nothing_when_invalid(
    operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --host the envelope is printed; an invalid command prints no envelope."""
    code = main(
        ["volume", "--level", "101", "--key", str(operator_key), "--env", "prod", "--aud", "grp:x"]
    )
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "body.level: must be at most 100, not 101" in captured.err


def test_a_trust_document_with_a_bad_key_entry_is_named(
    operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keyring = tmp_path / "keyring.json"
    keyring.write_text(
        json.dumps([{"id": "op", "ed25519": "not base64!", "roles": ["operater"], "scopes": ["*"]}])
    )
    code = main(
        [
            "trust",
            "--version",
            "2",
            "--keys",
            str(keyring),
            "--env",
            "prod",
            "--key",
            str(operator_key),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "keys[0].roles[0]: must be one of" in err


def test_signatures_the_fleets_keyring_refuses_are_not_published(
    secured: Secured, operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a keyring retained on loa/v1/trust, the boards' own admission runs before sending."""
    roots = []
    for name in ("root-a", "root-b"):
        path = tmp_path / f"{name}.pem"
        SigningKey.generate(name).save(path)
        roots.append(path)
    entries = [key_entry(SigningKey.load(path), ["root"]) for path in roots]
    entries.append(key_entry(SigningKey.load(operator_key), ["operator"], ["commune-1"]))
    keyring = tmp_path / "keyring.json"
    keyring.write_text(json.dumps(entries))
    signed_by_roots = [arg for path in roots for arg in ("--key", str(path))]
    trust = ["trust", "--version", "2", "--keys", str(keyring), "--env", "prod", *signed_by_roots]
    assert main([*trust, *secured.login()]) == 0
    good = programme(tmp_path, 1, [entry("news", "06:30")])
    assert main(schedule_args(secured, operator_key, good)) == 0
    capsys.readouterr()

    stranger = tmp_path / "op-9.pem"
    SigningKey.generate("op-9").save(stranger)
    code = main(schedule_args(secured, stranger, programme(tmp_path, 2, [entry("news", "07:00")])))
    err = capsys.readouterr().err
    assert code == 2
    assert "the fleet's keyring (trust version 2" in err and "(unknown_key)" in err

    alarm = programme(tmp_path, 3, [entry("siren", "07:00", priority="emergency")])
    code = main(schedule_args(secured, operator_key, alarm))
    err = capsys.readouterr().err
    assert code == 2
    assert "emergency entries need the emergency role (not_authorized)" in err

    other_group = [
        *schedule_args(secured, operator_key, programme(tmp_path, 4, [entry("n", "08:00")]))
    ]
    other_group[other_group.index("grp:commune-1")] = "grp:commune-2"  # outside the key's scope
    code = main(other_group)
    assert code == 2 and "(not_authorized)" in capsys.readouterr().err

    held = read_retained(secured, GROUP_SCHEDULE)
    assert held is not None and held["version"] == 1
    assert read_retained(secured, "loa/v1/grp/commune-2/schedule") is None
