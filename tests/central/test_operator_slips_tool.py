"""More of an operator's slips with ``receiver-admin`` itself: a key file with a passphrase, a
key id file left empty, a prefix the receivers refuse, an option name cut short, a pipe into
``head``, and help that says what the subcommand really does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
)

from receiver.central.admin import build_parser, main
from receiver.central.signing import SigningKey, key_entry
from receiver.core.envelope import parse_envelope

ROOT = Path(__file__).resolve().parents[2]


def _encrypted_key(tmp_path: Path, name: str = "enc.pem") -> Path:
    """A key as ``openssl genpkey -algorithm ed25519 -aes256`` writes it, with its id file."""
    key = SigningKey.generate("op-enc")
    path = tmp_path / name
    path.write_bytes(
        key.private.private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"secret passphrase")
        )
    )
    path.chmod(0o600)
    path.with_name(name + ".id").write_text("op-enc\n")
    return path


def _one_clear_line(err: str, path: Path) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "TypeError" not in err
    assert lines[0].startswith(f"receiver-admin: --key {path}: ")


def test_a_key_with_a_passphrase_is_named_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``volume --key enc.pem`` with a passphrase-protected key printed a TypeError traceback,
    exit 1; every other unusable key file is one line and exit 2."""
    encrypted = _encrypted_key(tmp_path)
    code = main(
        [
            *("volume", "--key", str(encrypted), "--level", "50"),
            *("--env", "lab", "--aud", "grp:commune-25-07873"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    _one_clear_line(err, encrypted)
    assert "encrypted with a passphrase" in err
    assert f"openssl pkey -in {encrypted} -out {tmp_path / 'enc-plain.pem'}" in err
    assert "copy enc.pem.id to enc-plain.pem.id" in err


def test_a_root_key_with_a_passphrase_is_named_for_trust_and_key_entry(
    tmp_path: Path, operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The root keys of ``trust`` and the key of ``key-entry`` are read the same way."""
    encrypted = _encrypted_key(tmp_path, "root.pem")
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([key_entry(SigningKey.load(operator_key), ["operator"])]))
    trust = ["trust", "--version", "2", "--keys", str(keys), "--env", "lab"]
    for argv in (
        [*trust, "--key", str(encrypted)],
        ["key-entry", "--key", str(encrypted), "--roles", "root"],
    ):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, err
        _one_clear_line(err, encrypted)
        assert "encrypted with a passphrase" in err


@pytest.mark.parametrize(
    ("written", "said"),
    [
        ("", "is empty"),
        ("\n", "is empty"),
        ("op 2026\n", "must not contain spaces"),
        ("x" * 65 + "\n", "at most 64"),
    ],
)
def test_a_key_id_file_the_receivers_would_refuse_is_named(
    tmp_path: Path, written: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty ``op.pem.id`` signed with ``keyid: ""`` (the envelope schema refuses it), and
    ``op 2026`` was used although ``keygen --id 'op 2026'`` is refused."""
    path = tmp_path / "op.pem"
    SigningKey.generate("op-1").save(path)
    id_file = tmp_path / "op.pem.id"
    id_file.write_text(written)
    code = main(["stop", "--key", str(path), "--env", "lab", "--aud", "dev:loa-001"])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.out == ""
    _one_clear_line(captured.err, path)
    assert f"its key id file {id_file} " in captured.err
    assert said in captured.err


def test_a_key_without_an_id_file_signs_under_its_name_if_that_is_a_key_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no ``.id`` file the key is known by its file's name; a name that is no key id
    (``op 2026.pem``) is named instead of signing under an id no receiver takes."""
    good = tmp_path / "op-2026.pem"
    SigningKey.generate("ignored").save(good)
    (tmp_path / "op-2026.pem.id").unlink()
    assert main(["stop", "--key", str(good), "--env", "lab", "--aud", "dev:loa-001"]) == 0
    envelope = json.loads(capsys.readouterr().out)
    assert envelope["signatures"][0]["keyid"] == "op-2026"

    spaced = tmp_path / "op 2026.pem"
    good.rename(spaced)
    code = main(["stop", "--key", str(spaced), "--env", "lab", "--aud", "dev:loa-001"])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    _one_clear_line(captured.err, spaced)
    assert "no op 2026.pem.id beside it, the key id is the file's name" in captured.err
    assert "must not contain spaces" in captured.err


@pytest.mark.parametrize("prefix", ["loa/v1/", "/loa/v1", "loa/+/v1", "loa/#", "loa//v1", ""])
def test_a_prefix_the_receivers_config_refuses_is_refused_as_typed(
    operator_key: Path, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--prefix loa/v1/`` sent to ``loa/v1//grp/.../cmd``, where no receiver listens (their
    config refuses such a prefix); ``--prefix loa/+/v1`` printed paho's "Publish topic cannot
    contain wildcards"."""
    argv = ["volume", "--key", str(operator_key), "--level", "50", "--env", "lab"]
    argv += ["--aud", "grp:commune-1", "--prefix", prefix, "--host", "127.0.0.1", "--port", "9"]
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --prefix: {prefix!r} is not a topic prefix" in err
    assert "no wildcards and no leading or trailing '/'" in err
    assert "Publish topic" not in err


def test_a_prefix_the_receivers_take_is_used(
    operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["stop", "--key", str(operator_key), "--env", "lab", "--aud", "dev:loa-001"]
    assert main([*argv, "--prefix", "prov-25/loa.v1"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["watch", "--device", "loa-001", "--broker", "127.0.0.1"], "required: --host"),
        (["fleet", "--broker", "127.0.0.1"], "required: --host"),
        (["collect", "--db", "x.db", "--broker", "127.0.0.1"], "required: --host"),
        (["proof", "--db", "x.db", "--dev", "loa-001"], "unrecognized arguments: --dev"),
        (["keygen", "--id", "op-1", "--ou", "op.pem"], "required: --out"),
    ],
)
def test_an_option_name_cut_short_is_not_taken_for_another(
    argv: list[str],
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``watch --broker 127.0.0.1`` (for ``--host``) was taken as ``--broker-timeout`` and
    said "'127.0.0.1' is not a number of seconds"."""
    monkeypatch.chdir(tmp_path)  # ``keygen --ou op.pem`` wrote a key here
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert said in error
    assert "--broker-timeout" not in error


def test_no_parser_of_receiver_admin_takes_abbreviations() -> None:
    """Every subcommand's parser, those the collector and the report add included."""
    parser = build_parser()
    assert parser.allow_abbrev is False
    subparsers = [
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    ]
    assert subparsers
    for name, subparser in subparsers[0].choices.items():
        assert subparser.allow_abbrev is False, name


def _into_a_closed_pipe(
    python_options: list[str], argv: list[str]
) -> subprocess.CompletedProcess[str]:
    """``receiver-admin ARGV | head -1`` once ``head`` has gone: every write to stdout fails."""
    reading, writing = os.pipe()
    os.close(reading)
    try:
        program = "import receiver_entry; receiver_entry.receiver_admin()"
        return subprocess.run(
            [sys.executable, *python_options, "-c", program, *argv],
            cwd=ROOT,
            stdout=writing,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(writing)


@pytest.mark.parametrize("python_options", [[], ["-u"]], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("what", ["command", "help"])
def test_a_reader_that_went_away_ends_the_tool_quietly(
    operator_key: Path, python_options: list[str], what: str
) -> None:
    """``receiver-admin schedule show ... | head -1`` ended with "receiver-admin: [Errno 32]
    Broken pipe", exit 2 (bad input), or Python's "Exception ignored ... BrokenPipeError"."""
    argv = (
        ["stop", "--key", str(operator_key), "--env", "lab", "--aud", "dev:loa-001"]
        if what == "command"
        else ["--help"]
    )
    ended = _into_a_closed_pipe(python_options, argv)
    assert ended.stderr == ""
    # 141 as a shell reports a tool that SIGPIPE ended; argparse itself lets a help it could
    # not write end as a help does
    assert ended.returncode == (141 if what == "command" else 0)


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--help"])
    assert stopped.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # as one line, whatever the wrapping


@pytest.mark.parametrize(
    ("argv", "prints_without_host"),
    [
        (["watch"], False),
        (["fleet"], False),
        (["collect"], False),
        (["schedule", "show"], False),
        (["volume"], True),
        (["schedule"], True),
        (["trust"], True),
    ],
)
def test_the_help_of_host_says_whether_it_may_be_left_out(
    argv: list[str], prints_without_host: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """``watch --help``, ``fleet --help`` and ``collect --help`` said ``--host ... (omit to
    print only)`` where ``--host`` is required."""
    text = _help(argv, capsys)
    assert "--host HOST broker host" in text
    assert ("omit to print only" in text) is prints_without_host


def test_the_proof_reports_help_names_the_words_that_run_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``proof --help`` said ``usage: receiver-admin report ...``, and ``report ...`` without
    ``--db`` is the command that asks the devices for their state."""
    text = _help(["proof"], capsys)
    assert text.startswith("usage: receiver-admin proof --db DB ")
    assert "also run as receiver-admin report --db DB" in text


def _names_proof(text: str) -> bool:
    """The subcommand's internal name, not the words "proof of play"."""
    return re.search(r"\bproof\b(?! of play)", text, re.IGNORECASE) is not None


@pytest.mark.parametrize("db", [["--db", "x.db"], ["--db=x.db"]])
def test_report_db_help_shows_the_words_the_operator_typed(
    db: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``report --db x.db --help`` said ``usage: receiver-admin proof ...``: a name the
    operator never typed, for the command they did."""
    text = _help(["report", *db], capsys)
    assert text.startswith("usage: receiver-admin report --db DB ")
    assert not _names_proof(text)
    assert "without --db, receiver-admin report asks the devices" in text


def test_schedule_show_help_shows_the_words_the_operator_typed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = _help(["schedule", "show"], capsys)
    assert text.startswith("usage: receiver-admin schedule show ")
    assert "schedule-show" not in text


def test_the_report_help_from_the_console_script_names_report() -> None:
    """The console script ``receiver-admin`` itself, as an operator runs it."""
    program = "import receiver_entry; receiver_entry.receiver_admin()"
    ran = subprocess.run(
        [sys.executable, "-c", program, "report", "--db", "x.db", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("usage: receiver-admin report --db DB ")
    assert not _names_proof(ran.stdout)
    assert ran.stderr == ""


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["report", "--db", "x.db", "--bogus"], "unrecognized arguments: --bogus"),
        (["report", "--db", "x.db", "--lang", "fr"], "argument --lang: invalid choice: 'fr'"),
        (["report", "--db", "x.db", "--from"], "argument --from/--since: expected one argument"),
        (["report", "--db"], "argument --db: expected one argument"),
        (["report", "--db=x.db", "--csv=yes"], "argument --csv: ignored explicit argument"),
    ],
)
def test_a_report_db_usage_error_names_report(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``report --db x.db --bogus`` printed the whole tool's usage, which lists ``proof`` and
    ``schedule-show``; ``--lang fr`` said ``receiver-admin proof: error``."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: receiver-admin report --db DB ")
    assert err.strip().splitlines()[-1].startswith(f"receiver-admin report: error: {said}")
    assert "proof" not in err
    assert "schedule-show" not in err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["schedule", "show", "--host", "h", "--bogus"], "unrecognized arguments: --bogus"),
        (["schedule", "show", "--group"], "argument --group: expected one argument"),
        (["schedule", "show"], "the following arguments are required: --host"),
    ],
)
def test_a_schedule_show_usage_error_names_schedule_show(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: receiver-admin schedule show ")
    assert err.strip().splitlines()[-1].startswith(f"receiver-admin schedule show: error: {said}")
    assert "schedule-show" not in err
    assert "proof" not in err


def test_a_bad_day_for_report_db_names_neither_proof_nor_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``report --db x.db --from nonsense``: one line of the tool's own, exit 2."""
    db = tmp_path / "reports.db"
    db.touch()
    assert main(["report", "--db", str(db), "--from", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert err == "receiver-admin: --from 'nonsense': give a date YYYY-MM-DD\n"


@pytest.mark.parametrize("flag", ["--cafile", "--certfile", "--keyfile"])
def test_a_directory_given_for_a_tls_file_is_named_a_directory(
    operator_key: Path, tmp_path: Path, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--cafile /etc/ssl/certs`` said "no such file" of a directory that is there."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not used: the directory is refused first\n")
    files = {"--cafile": str(ca), "--certfile": str(ca), "--keyfile": str(ca), flag: str(tmp_path)}
    argv = ["stop", "--key", str(operator_key), "--env", "lab", "--aud", "dev:loa-001"]
    argv += ["--host", "127.0.0.1", "--port", "9", *(w for f in files.items() for w in f)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"receiver-admin: {flag} {tmp_path}: a directory; give the file" in err
    assert "no such file" not in err


def test_a_hash_or_size_that_disagrees_with_the_file_is_refused_not_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``play --file media.mp3 --sha256 000…`` signed the file's own hash and dropped the one
    given without a word: which of the two is the file the boards will download?"""
    key = tmp_path / "op.pem"
    SigningKey.generate("op-1").save(key)
    media = tmp_path / "media.mp3"
    media.write_bytes(b"ID3 not really audio" * 10)
    common = [
        *("play", "--key", str(key), "--env", "lab", "--aud", "grp:commune-25-07873"),
        *("--url", "https://media.example/media.mp3", "--file", str(media)),
    ]
    assert main([*common, "--sha256", "0" * 64]) == 2
    err = capsys.readouterr().err
    assert "--sha256" in err and str(media) in err and "does not match" in err, err
    assert main([*common, "--size", "5"]) == 2
    assert "--size 5 does not match" in capsys.readouterr().err
    real = hashlib.sha256(media.read_bytes()).hexdigest()
    assert main([*common, "--sha256", real.upper(), "--size", str(media.stat().st_size)]) == 0
    body = json.loads(parse_envelope(capsys.readouterr().out.strip().encode()).body)
    assert body["body"]["source"]["files"][0]["sha256"] == real
