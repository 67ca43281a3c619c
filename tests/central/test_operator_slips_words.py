"""Slips ``receiver-admin`` let by without a word, or answered in a parser's words: a mistyped
group, a key made valid everywhere without saying so, a programme file's YAML error, an id
refused with a regular expression.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from receiver.central.admin import main
from tests.central.conftest import Secured, Spy, device_state


def _stop(key: Path, audience: str, secured: Secured, user: str = "central") -> list[str]:
    return ["stop", "--key", str(key), "--env", "prod", "--aud", audience, *secured.login(user)]


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "warning" in line]


def test_a_mistyped_group_is_sent_with_a_warning_naming_the_close_one(
    secured: Secured, operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--aud grp:commune-25-0787`` (for commune-25-07873) said "sent stop ... to
    loa/v1/grp/commune-25-0787/cmd", exit 0, and nothing else: no board listens there."""
    now = time.time()
    with Spy(secured) as spy:
        for device, groups in (("loa-001", ["commune-25-07873", "prov-25"]), ("loa-002", [])):
            state = device_state(device, now, groups=groups)
            spy.publish(f"loa/v1/dev/{device}/state", state)
        spy.publish("loa/v1/dev/loa-003/state", b'{"device": "loa-003", "online": false}')

    assert main(_stop(operator_key, "grp:commune-25-07873", secured)) == 0
    assert _warnings(capsys.readouterr().err) == []

    assert main(_stop(operator_key, "grp:commune-25-0787", secured)) == 0
    captured = capsys.readouterr()
    warned = _warnings(captured.err)
    assert len(warned) == 1, captured.err
    assert warned[0].startswith(
        f"receiver-admin: warning: no device on {secured.broker.host}:{secured.broker.port} "
        "lists group commune-25-0787; did you mean commune-25-07873?"
    )
    assert "sent stop" in captured.out and "loa/v1/grp/commune-25-0787/cmd" in captured.out


def test_a_group_no_device_resembles_is_named_and_the_acl_too(
    secured: Secured, operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without any close name the warning still comes; where the broker shows no state at all
    (an ACL that hides them filters silently) it says that it could not tell."""
    with Spy(secured) as spy:
        spy.publish("loa/v1/dev/loa-001/state", device_state("loa-001", time.time(), groups=["x"]))

    assert main(_stop(operator_key, "grp:prov-99", secured)) == 0
    warned = _warnings(capsys.readouterr().err)
    assert len(warned) == 1
    assert "no device on" in warned[0] and "lists group prov-99" in warned[0]
    assert "did you mean" not in warned[0]


def test_a_group_with_no_state_readable_says_the_acl_may_hide_them(
    secured: Secured, operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    assert main(_stop(operator_key, "grp:commune-1", secured)) == 0
    assert time.monotonic() - started < 5  # bounded: a command is not held up by the check
    warned = _warnings(capsys.readouterr().err)
    assert len(warned) == 1
    assert "no device has left a state on" in warned[0]
    assert "so none lists group commune-1" in warned[0]
    assert "the broker's ACL hides them from user 'central'" in warned[0]


@pytest.mark.parametrize("subcommand", ["keygen", "key-entry"])
def test_a_key_made_valid_everywhere_without_asking_says_so(
    tmp_path: Path, operator_key: Path, subcommand: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``keygen`` without ``--scopes`` printed ``scopes: ["*"]`` and nothing else: a key meant
    for one commune was made valid on every board of the province without a word."""

    def run(*scopes: str) -> tuple[str, str]:
        if subcommand == "keygen":
            out = tmp_path / f"op-{len(list(tmp_path.iterdir()))}.pem"
            argv = ["keygen", "--id", "op-2", "--out", str(out)]
        else:
            argv = ["key-entry", "--key", str(operator_key), "--roles", "operator"]
        assert main([*argv, *scopes]) == 0
        captured = capsys.readouterr()
        return captured.out, captured.err

    out, err = run()
    assert '"*"' in out  # the default is kept: scripts rely on it
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("receiver-admin: note: no --scopes: ")
    assert "valid on every device and in every group" in lines[0]
    assert "--scopes commune-25-07873 loa-25-07873-001" in lines[0]

    assert run("--scopes", "*")[1] == ""  # asked for: no note
    out, err = run("--scopes", "prov-25")
    assert (err, '"prov-25"' in out) == ("", True)


_HEAD = "id: morning\nversion: 1\nmedia_url: https://m.example.vn/\nentries:\n"
_ENTRY = "  - title: News\n    days: weekdays\n    at: '06:30'\n    file: news.mp3\n"


@pytest.mark.parametrize(
    "case",
    [
        (
            _HEAD + _ENTRY.replace("    days", "\tdays"),
            "6:1",
            "a tab used for indentation: indent with spaces only",
            "found character '\\t' that cannot start any token",
        ),
        (
            _HEAD.replace("version: 1", "version:1") + _ENTRY,
            "2:1",
            "no space after the ':' of this key: write 'version: 1', not 'version:1'",
            "could not find expected ':'",
        ),
        (
            _HEAD + _ENTRY.replace("title: News", "title:News"),
            "5:5",
            "no space after the ':' of this key: write 'title: News', not 'title:News'",
            "mapping values are not allowed here",
        ),
        (
            _HEAD + _ENTRY.replace("    days", "      days"),
            "6:11",
            "this line is indented further than the line above it",
            "mapping values are not allowed here",
        ),
        (
            _HEAD + _ENTRY.replace("    at", "   at"),
            "7:4",
            "this line is not indented like the lines above it",
            "expected <block end>, but found '<block mapping start>'",
        ),
        (
            _HEAD + _ENTRY.replace("title: News", 'title: "News'),
            "5:12",
            "the quote opened here is not closed",
            "found unexpected end of stream",
        ),
        (
            _HEAD + _ENTRY.replace("title: News", "title: News: today"),
            "5:16",
            "a value that holds ': ' needs quotes: write title: \"News: today\"",
            "mapping values are not allowed here",
        ),
    ],
    ids=[
        "tab",
        "no-space-key",
        "no-space-entry",
        "indented-more",
        "indented-less",
        "quote",
        "colon",
    ],
)
def test_a_programme_yaml_error_is_one_line_in_plain_words(
    tmp_path: Path,
    operator_key: Path,
    case: tuple[str, str, str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``mapping values are not allowed here`` with PyYAML's own marks: the operator had to
    know YAML's grammar to find the missing space after a colon."""
    text, where, said, parser = case
    (tmp_path / "news.mp3").write_bytes(b"news" * 10)
    source = tmp_path / "programme.yaml"
    source.write_text(text, encoding="utf-8")
    argv = ["schedule", "--file", str(source), "--key", str(operator_key), "--env", "prod"]
    assert main([*argv, "--aud", "grp:commune-1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"receiver-admin: {source}:{where}: not valid YAML: {said}")
    assert lines[0].endswith(f"(the YAML reader: {parser})")


def test_a_programme_file_that_is_not_utf8_is_named(
    tmp_path: Path, operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A programme saved in a legacy code page printed Python's "'utf-8' codec can't decode
    byte 0xff in position 10: invalid start byte"."""
    source = tmp_path / "programme.yaml"
    source.write_bytes(b"id: morning\ntitle: B\xe1n tin\n")
    argv = ["schedule", "--file", str(source), "--key", str(operator_key), "--env", "prod"]
    assert main([*argv, "--aud", "grp:commune-1"]) == 2
    err = capsys.readouterr().err
    assert err == f"receiver-admin: {source}: cannot read it (not UTF-8 text)\n"
