"""Slips ``receiver-admin`` let by without a word, or answered in a parser's words: a mistyped
group, a key made valid everywhere without saying so, a programme file's YAML error, an id
refused with a regular expression.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from receiver.central.admin import main
from receiver.central.signing import SigningKey, key_entry
from tests.central.conftest import Secured, Spy, device_state, leave_states


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


ID_WORDS = (
    "1-64 characters: lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
)
_REGEX_MARKS = ("^", "$", "{0,", "[a-z", "[A-Z", "]*", "(?:", "\\.")


def _no_regex(text: str) -> None:
    assert not [mark for mark in _REGEX_MARKS if mark in text], text


@pytest.mark.parametrize(
    "argv",
    [
        ["fleet", "--group", "Commune-1", "--host", "127.0.0.1"],
        ["watch", "--device", "loa 001", "--host", "127.0.0.1"],
        ["schedule", "show", "--group", "c/1", "--host", "127.0.0.1"],
    ],
)
def test_an_id_option_is_refused_in_words(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The id rule is said the same way everywhere, as the words beside the regex."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"is not an id: {ID_WORDS}" in err.splitlines()[-1]


def _refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    _no_regex(captured.err)
    return captured.err


def test_a_command_refused_for_its_form_says_the_form_in_words(
    operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--url ftp:/x`` was refused with ``does not match ^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]+``."""
    base = ["--key", str(operator_key), "--env", "prod"]
    err = _refusal(
        ["play", *base, "--aud", "grp:c", "--url", "ftp:/x", "--sha256", "a" * 64, "--size", "3"],
        capsys,
    )
    assert 'url: "ftp:/x" is not a URL: scheme://host/path' in err
    err = _refusal(["stop", *base, "--aud", "grp:Commune-1", "--id", "a b"], capsys)
    audience = 'aud[0]: "grp:Commune-1" is not an audience: dev:<device id> or grp:<group id>'
    assert f"{audience}, an id {ID_WORDS}" in err
    assert 'id: "a b" is not an id: 1-64 characters: letters, digits' in err
    err = _refusal(["stop", *base[:2], "--env", "Prod", "--aud", "grp:c"], capsys)
    assert f'env: "Prod" is not an id: {ID_WORDS}' in err


def test_a_schedule_or_keyring_refused_for_its_form_says_the_form_in_words(
    operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A JSON schedule with ``tz: "Asia Ho Chi Minh"`` and ``at: "6:30"``, and a keyring with a
    public key cut short, were refused with the schemas' regular expressions."""
    entry = {
        "id": "news",
        "days": ["mon"],
        "at": "6:30",
        "priority": "normal",
        "source": {"files": [{"url": "https://m.example/n.mp3", "sha256": "a" * 64, "size": 9}]},
    }
    doc = {"id": "morning", "version": 1, "tz": "Asia Ho Chi Minh", "entries": [entry]}
    source = tmp_path / "programme.json"
    source.write_text(json.dumps(doc))
    base = ["--key", str(operator_key), "--env", "prod", "--aud", "grp:c"]
    err = _refusal(["schedule", "--file", str(source), *base], capsys)
    assert 'entries[0].at: "6:30" is not a local time HH:MM, 00:00 to 23:59' in err
    assert 'tz: "Asia Ho Chi Minh" is not a time zone name such as Asia/Ho_Chi_Minh' in err

    keys = tmp_path / "keys.json"
    entry_text = key_entry(SigningKey.load(operator_key), ["operator"])
    entry_text["ed25519"] = entry_text["ed25519"][:-2] + "x="
    keys.write_text(json.dumps([entry_text]))
    root = tmp_path / "root.pem"
    SigningKey.generate("root-1").save(root)
    argv = ["trust", "--version", "2", "--keys", str(keys), "--env", "prod", "--key", str(root)]
    err = _refusal(argv, capsys)
    assert "keys[0].ed25519: " in err and "is not an Ed25519 public key in base64" in err


def test_every_pattern_of_the_schemas_has_words() -> None:
    """What an operator may get wrong is never refused with a regular expression: each pattern
    in schemas/ has words beside it (the fallback would name no form at all)."""
    from receiver.central import validate

    assert validate.patterns_without_words() == []


def test_group_names_from_states_reach_the_warning_only_as_ids(
    secured: Secured, operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A retained state is not verified here, and any client the ACL lets publish one may have
    left it: a group name holding a terminal escape was printed as the "did you mean" on the
    operator's terminal (and one that lists the mistyped name with an escape hid the warning)."""
    now = time.time()
    forged = ["commune-25-0787\x1b[8m", "commune-25-07874\x1b]0;owned\x07", "x" * 5000]
    with Spy(secured) as spy:
        spy.publish("loa/v1/dev/loa-001/state", device_state("loa-001", now, groups=forged))
        spy.publish(
            "loa/v1/dev/loa-002/state", device_state("loa-002", now, groups=["commune-25-07873"])
        )

    assert main(_stop(operator_key, "grp:commune-25-0787", secured)) == 0
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "xxxx" not in err, repr(err)
    warned = _warnings(err)
    assert len(warned) == 1, err
    assert "lists group commune-25-0787; did you mean commune-25-07873?" in warned[0]


def test_a_group_check_that_could_not_read_the_states_says_so(
    secured: Secured,
    operator_key: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The command went; reading the devices' states for the group check then failed (a broker
    that stops answering, an ACL that refuses the states' topics): the check was skipped without
    a word, as if the group were right."""
    from receiver.central import admin
    from receiver.central.broker import BrokerError

    def unanswered(*_args: object, **_kwargs: object) -> None:
        raise BrokerError("no answer from the broker in 10 s")

    monkeypatch.setattr(admin, "_retained_states", unanswered)
    assert main(_stop(operator_key, "grp:commune-25-0787", secured)) == 0
    captured = capsys.readouterr()
    assert "sent stop" in captured.out
    assert _warnings(captured.err) == [
        "receiver-admin: warning: the groups were not checked against the devices' states "
        "(no answer from the broker in 10 s)"
    ]


def test_a_states_strings_reach_the_fleet_table_and_schedule_show_only_as_text(
    secured: Secured, capsys: pytest.CaptureFixture[str]
) -> None:
    """A retained state is whatever a client the ACL lets write it left there. A schedule id or
    a title holding a terminal escape went raw into ``fleet``'s table, and ``schedule show
    --device`` printed the state's schedule ids raw and took its groups (a ``+`` among them) as
    topic levels, subscribing to every group's programme."""
    now = time.time()
    hostile = {
        "schedules": {"morning\x1b[2J": 3},
        "playing": {"title": "news\x1b]0;owned\x07", "priority": "normal"},
        "state": "playing",
        "groups": ["commune-1", "+", "x\x1b[8m"],
    }
    leave_states(secured, {"loa-001": device_state("loa-001", now, **hostile)})
    assert main(["fleet", *secured.login()]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out, repr(out)
    assert "loa-001" in out

    assert main(["schedule", "show", "--device", "loa-001", *secured.login()]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out, repr(out)
    assert "group commune-1 (loa/v1/grp/commune-1/schedule):" in out
    assert "grp/+/" not in out, out

    from receiver.central.signing import schedule_payload, sign_command

    entry = {
        "id": "news",
        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
        "at": "06:30",
        "priority": "normal",
        "max_duration_s": 600,
        "source": {
            "files": [
                {
                    "url": "https://m.example/a.mp3",
                    "sha256": "b" * 64,
                    "size": 9,
                    "title": "news",
                }
            ]
        },
    }
    payload = schedule_payload("morning", 3, [entry], env="lab", aud=["grp:commune-1"])
    schedule = sign_command(payload, [SigningKey.generate("op-x")])
    with Spy(secured) as spy:  # retained by whoever may write the group's topic
        spy.publish("loa/v1/grp/commune-1/schedule", schedule)
    # A programme's own strings are refused by its parser; the device's are not.
    held = {"schedules": {"morning": "2\x1b]0;owned\x07"}, "groups": ["commune-1"]}
    leave_states(secured, {"loa-001": device_state("loa-001", now, **held)})
    assert main(["schedule", "show", "--device", "loa-001", *secured.login()]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out, repr(out)


def test_watch_prints_a_report_as_one_line_of_text() -> None:
    """``watch`` printed a payload that was not JSON as its bytes decoded, escapes and all, and
    a JSON one through ``json.dumps``, which escapes only the characters below 0x20: the 8-bit
    CSI (0x9b), DEL and bidi overrides (U+202E) reached the terminal."""
    from types import SimpleNamespace

    from receiver.central.reports import message_text

    raw = SimpleNamespace(body=None, raw=b"\x1b[2Jhi\r\nthere", verdict="unchecked", detail="")
    said = message_text(raw)
    assert "\x1b" not in said and "\r" not in said and "\n" not in said, repr(said)
    body = {"device": "loa-001", "title": "a\x9bb\u202ec\x7f"}
    parsed = SimpleNamespace(body=body, raw=b"", verdict="signed", detail="")
    said = message_text(parsed)
    assert not {"\x9b", "\u202e", "\x7f"} & set(said), repr(said)
    assert json.loads(said.split("  [")[0])["device"] == "loa-001"  # still JSON to a reader
