"""A mistyped subcommand or option is answered with the closest name, in both tools, and the
technician's tool says argparse's own words (usage, errors, help) in the technician's language.

``receiver stauts`` printed "invalid choice: 'stauts' (choose from ...)" and ``receiver status
--confg x`` "unrecognized arguments: --confg", both under the whole tool's usage, in English
under ``LANG=vi_VN`` where every other line the technician reads is Vietnamese.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(program: str, *argv: str, lang: str = "C.UTF-8") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LANGUAGE", "LC_ALL", "LC_MESSAGES")}
    env["LANG"] = lang
    return subprocess.run(
        [sys.executable, "-m", program, *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("program", "argv", "usage", "hint"),
    [
        ("receiver.cli", ["stauts"], "usage: receiver [-h]", "did you mean 'status'?"),
        ("receiver.cli", ["check-confg", "x.yaml"], "usage: receiver [-h]", "'check-config'?"),
        (
            "receiver.cli",
            ["status", "--confg", "x.yaml"],
            "usage: receiver status [-h]",
            "did you mean '--config'?",
        ),
        ("receiver.central.admin", ["plya"], "usage: receiver-admin [-h]", "'play'?"),
        (
            "receiver.central.admin",
            ["fleet", "--hots", "localhost"],
            "usage: receiver-admin fleet",
            "did you mean '--host'?",
        ),
        (
            "receiver.central.admin",
            ["stop", "--key", "k.pem", "--env", "lab", "--aud", "dev:x", "--regsitry=r.jsonl"],
            "usage: receiver-admin stop",
            "did you mean '--registry'?",
        ),
    ],
)
def test_a_typo_is_answered_with_the_closest_name(
    program: str, argv: list[str], usage: str, hint: str
) -> None:
    done = _run(program, *argv)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(usage), done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.endswith(hint), last


def test_nothing_close_is_not_guessed() -> None:
    done = _run("receiver.cli", "xyzzy")
    assert done.returncode == 2
    assert "did you mean" not in done.stderr
    assert "invalid choice: 'xyzzy'" in done.stderr


def test_the_technicians_tool_speaks_argparse_in_vietnamese() -> None:
    done = _run("receiver.cli", "stauts", lang="vi_VN.UTF-8")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("cách dùng: receiver [-h]"), done.stderr
    assert lines[-1].startswith("receiver: lỗi: "), lines[-1]
    assert "có phải ý bạn là 'status'?" in lines[-1]
    assert "invalid choice" not in done.stderr

    missing = _run("receiver.cli", "status", "--config", lang="vi_VN.UTF-8")
    assert missing.returncode == 2
    assert "expected one argument" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1].startswith("receiver status: lỗi: ")


def test_the_technicians_help_is_for_the_technician_in_their_language() -> None:
    """``receiver --help`` printed the module's docstring, its ``double backquotes`` and all,
    in English whatever the language."""
    english = _run("receiver.cli", "--help")
    assert english.returncode == 0
    assert "``" not in english.stdout
    assert "show the device's last state" in english.stdout
    vietnamese = _run("receiver.cli", "--help", lang="vi_VN.UTF-8")
    assert vietnamese.returncode == 0
    assert "``" not in vietnamese.stdout
    assert vietnamese.stdout.startswith("cách dùng: receiver")
    assert "show this help message and exit" not in vietnamese.stdout
    assert "show the device's last state" not in vietnamese.stdout
    status = _run("receiver.cli", "status", "--help", lang="vi_VN.UTF-8")
    assert "the YAML config file" not in status.stdout
    assert "/etc/loa-receiver/receiver.yaml" in status.stdout


def test_the_operators_help_has_no_markup() -> None:
    done = _run("receiver.central.admin", "--help")
    assert done.returncode == 0
    assert "``" not in done.stdout


@pytest.mark.parametrize(
    ("program", "argv"),
    [
        ("receiver.central.admin", ["fleet", "--broker", "127.0.0.1"]),  # meant --host
        ("receiver.central.admin", ["proof", "--db", "x.db", "--dev", "loa-001"]),
        ("receiver.cli", ["stat"]),
    ],
)
def test_a_name_cut_short_is_not_guessed_at(program: str, argv: list[str]) -> None:
    """``--broker`` begins ``--broker-timeout``, but the operator meant ``--host``: a name that
    only begins like the word typed is no slip of the fingers, and a guess would mislead."""
    done = _run(program, *argv)
    assert done.returncode == 2
    assert "did you mean" not in done.stderr, done.stderr


def test_the_technicians_words_do_not_stay_argparse_s_in_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``receiver`` let argparse speak through its catalog and left it so: anything parsed in
    the same process after (a test runner's own tools, receiver-admin run in-process) spoke the
    technician's language."""
    import argparse

    from receiver import cli

    own = vars(argparse)["_"]
    monkeypatch.setattr(cli, "_", lambda message: f"[vi] {message}")
    with pytest.raises(SystemExit):
        cli.main(["stauts"])
    assert vars(argparse)["_"] is own


@pytest.mark.parametrize(
    ("program", "argv", "hint"),
    [
        ("receiver.cli", ["statu"], "did you mean 'status'?"),
        ("receiver.central.admin", ["keygen", "--id", "op-1", "--ou", "op.pem"], "'--out'?"),
    ],
)
def test_a_dropped_last_letter_is_answered(program: str, argv: list[str], hint: str) -> None:
    """One letter short of a name is a slip of the fingers, not a name cut short on purpose:
    ``receiver statu`` got no hint."""
    done = _run(program, *argv)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(hint), done.stderr
