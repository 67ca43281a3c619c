"""Options an operator can give too large a value, or the wrong form of: each refused in one
line that names the option (exit 2), never a traceback, and nothing published."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.central import admin
from receiver.central.admin import main
from tests.central.conftest import Secured, Spy, read_retained
from tests.central.test_operator_slips import _programme_file


def command(key: Path, *more: str) -> list[str]:
    return ["--key", str(key), "--env", "prod", *more]


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("ttl", ["5e9", "1e20", "2592001"])
def test_a_command_ttl_beyond_thirty_days_is_named(
    secured: Secured, operator_key: Path, ttl: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--ttl 5e9 --host ...`` ended in ``struct.error`` (MQTT's message expiry is 32 bits);
    ``--ttl 1e20`` in ``OverflowError`` even without a broker."""
    with Spy(secured, retained=False) as spy:
        argv = ["volume", *command(operator_key, "--aud", "dev:loa-001"), "--level", "50"]
        err = _refused([*argv, "--ttl", ttl, *secured.login()], capsys)
        spy.settle()
        assert spy.topics() == []
    assert f"--ttl: {ttl!r}" in err
    assert "30 days" in err


def test_a_command_ttl_of_thirty_days_is_taken(
    operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["stop", *command(operator_key, "--aud", "dev:loa-001"), "--ttl", "2592000"])
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    ("words", "option"),
    [
        (["fleet", "--broker-timeout", "1e300"], "--broker-timeout"),
        (["fleet", "--timeout", "1e10"], "--timeout"),
        (["watch", "--device", "loa-001", "--timeout", "1e300"], "--timeout"),
        (["watch", "--device", "loa-001", "--client-id", "w" * 70000], "--client-id"),
        (["watch", "--device", "loa-001", "--client-id", "é" * 40000], "--client-id"),
        (["collect", "--db", "x.db", "--client-id", "c" * 70000], "--client-id"),
        (["collect", "--db", "x.db", "--duration", "1e300"], "--duration"),
    ],
)
def test_a_wait_or_a_client_id_too_long_is_named(
    secured: Secured, words: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--broker-timeout 1e300``, ``fleet --timeout 1e10``, ``watch --client-id`` of 70000
    characters each ended in a traceback."""
    err = _refused([*words, *secured.login()], capsys)
    assert f"argument {option}:" in err
    assert len(err.strip().splitlines()[-1]) < 300


def test_a_collector_without_a_client_id_is_refused(
    secured: Secured, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``collect --client-id ""`` was taken: the broker then gives each run a new session and
    keeps none, so the events of every gap between two runs were lost without a word."""
    db = tmp_path / "x.db"
    err = _refused(["collect", "--db", str(db), "--client-id", "", *secured.login()], capsys)
    assert "argument --client-id: an empty client id" in err
    assert "keeps none" in err
    assert not db.exists()


def test_a_document_lifetime_beyond_ten_years_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    """``trust --ttl-days 3650000`` said only "year 12020 is out of range"."""
    err = _refused(["trust", "--ttl-days", "3650000"], capsys)
    assert "--ttl-days: '3650000'" in err
    assert "3650" in err


@pytest.mark.parametrize("node", ["mqtt://127.0.0.1:{port}", "mqtts://mqtt-2/:{port}"])
def test_a_node_written_as_a_url_publishes_nowhere(
    secured: Secured,
    operator_key: Path,
    tmp_path: Path,
    node: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--node mqtt://127.0.0.1:P`` was taken (``--host mqtt://...`` is refused): the schedule
    was retained on the first broker, then the node failed (exit 3), the cluster split."""
    node = node.format(port=secured.broker.port)
    argv = ["schedule", "--file", _programme_file(tmp_path), "--node", node]
    code = main([*argv, *command(operator_key, "--aud", "grp:commune-1"), *secured.login()])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"--node {node!r}" in err
    assert "without a scheme" in err
    assert read_retained(secured, "loa/v1/grp/commune-1/schedule") is None


@pytest.mark.parametrize(
    "topic", ["dev/loa-001/cmd", "loa/v2/dev/loa-001/cmd", "x/loa/v1/dev/loa-001/cmd"]
)
def test_a_topic_outside_the_prefix_is_refused(
    secured: Secured, operator_key: Path, topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--aud dev:loa-001 --topic dev/loa-001/cmd`` was sent there, exit 0: no board listens
    outside its prefix (loa/v1), so none got it."""
    with Spy(secured, retained=False) as spy:
        argv = ["stop", *command(operator_key, "--aud", "dev:loa-001"), "--topic", topic]
        code = main([*argv, *secured.login()])
        spy.settle()
        assert spy.topics() == []
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"--topic {topic}" in err
    assert "loa/v1/dev/loa-001/cmd" in err


def test_a_topic_of_one_of_the_audiences_is_sent_there(
    secured: Secured, operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Spy(secured, retained=False) as spy:
        audiences = ["--aud", "dev:loa-001", "--aud", "grp:commune-1"]
        argv = ["stop", *command(operator_key, *audiences), "--topic", "loa/v1/grp/commune-1/cmd"]
        code = main([*argv, *secured.login()])
        spy.settle()
        assert spy.topics() == ["loa/v1/grp/commune-1/cmd"]
    assert code == 0, capsys.readouterr().err


def _login_with(secured: Secured, path: Path) -> list[str]:
    login = secured.login()
    login[login.index("--password-file") + 1] = str(path)
    return login


def test_a_password_file_notepad_saved_with_a_bom_logs_in(
    secured: Secured, operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A password file saved by Windows Notepad (UTF-8 with a BOM) was sent with the BOM: the
    broker refused it as "bad user name or password?", exit 3."""
    path = tmp_path / "notepad.password"
    path.write_bytes("\ufeffcentral pw\r\n".encode())
    with Spy(secured, retained=False) as spy:
        argv = ["stop", *command(operator_key, "--aud", "dev:loa-001")]
        code = main([*argv, *_login_with(secured, path)])
        spy.settle()
        assert spy.topics() == ["loa/v1/dev/loa-001/cmd"]
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"\n", b"\xef\xbb\xbf\r\n"])
def test_an_empty_password_file_is_named(
    secured: Secured,
    operator_key: Path,
    tmp_path: Path,
    content: bytes,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An empty password file was sent as an empty password: "bad user name or password?",
    exit 3, with nothing saying the file was empty."""
    path = tmp_path / "empty.password"
    path.write_bytes(content)
    argv = ["stop", *command(operator_key, "--aud", "dev:loa-001")]
    code = main([*argv, *_login_with(secured, path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"--password-file {path}: empty" in err


def test_watch_until_without_a_kind_is_refused(
    secured: Secured, capsys: pytest.CaptureFixture[str]
) -> None:
    """``watch --until --timeout 3`` (the kind forgotten) printed the state and exited 0, as if
    what it waited for had come; without --timeout it waited for ever."""
    argv = ["watch", "--device", "loa-001", "--until", "--timeout", "3"]
    err = _refused([*argv, *secured.login()], capsys)
    assert "argument --until:" in err


def test_fleet_stopped_by_ctrl_c_while_collecting_says_it_was_not_done(
    secured: Secured, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plain ``fleet`` stopped by Ctrl-C while it still collected the states exited 0 with
    nothing printed: a script took the empty output for a fleet with no device."""

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the states are still coming

    monkeypatch.setattr(admin, "_collect_states", interrupted)
    code = main(["fleet", *secured.login()])
    assert code == 130
    assert capsys.readouterr().out == ""
