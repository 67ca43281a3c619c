"""Every broker failure, for every subcommand that talks to a broker: one line, the cause, exit 3.

Against a real Mosquitto with passwords and ACLs (and one with TLS): a refused login, an
anonymous client where logins are required, nothing listening, a CA that did not sign the
broker's certificate, a port that accepts but never answers, and ACLs refusing a publish or a
subscription. Before this, a refused login crashed play, stop, schedule and report with a
traceback, and fleet and watch printed nothing and exited 0.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from receiver.central.admin import main
from tests.central.conftest import Secured, Spy, device_state
from tests.lab.broker import MosquittoBroker, tls_listener_config
from tests.lab.ca import TestCa

ROOT = Path(__file__).resolve().parents[2]
SHA = "a" * 64

Args = Callable[[Path, Path], list[str]]  # (tmp_path, key) -> the subcommand's own arguments


def _schedule_file(tmp: Path) -> str:
    path = tmp / "programme.json"
    entry = {
        "id": "news",
        "days": ["mon"],
        "at": "06:30",
        "priority": "normal",
        "source": {"files": [{"url": "https://media.example/n.mp3", "sha256": SHA, "size": 9}]},
        "max_duration_s": 600,
    }
    path.write_text(json.dumps({"id": "morning", "version": 2, "entries": [entry]}))
    return str(path)


def _keyring_file(tmp: Path, key: Path) -> str:
    from receiver.central.signing import SigningKey, key_entry

    path = tmp / "keyring.json"
    path.write_text(json.dumps([key_entry(SigningKey.load(key), ["root", "operator"])]))
    return str(path)


SIGNED = ["--env", "prod", "--aud", "grp:commune-1"]
SUBCOMMANDS: dict[str, Args] = {
    "play": lambda _t, k: [
        "play",
        "--key",
        str(k),
        *SIGNED,
        "--url",
        "https://media.example/n.mp3",
        "--sha256",
        SHA,
        "--size",
        "9",
    ],
    "stream": lambda _t, k: ["stream", "--key", str(k), *SIGNED, "--url", "http://s.example/l"],
    "stop": lambda _t, k: ["stop", "--key", str(k), *SIGNED],
    "volume": lambda _t, k: ["volume", "--key", str(k), *SIGNED, "--level", "50"],
    "relay": lambda _t, k: ["relay", "--key", str(k), *SIGNED, "--state", "off"],
    "report": lambda _t, k: ["report", "--key", str(k), *SIGNED],
    "schedule": lambda t, k: ["schedule", "--file", _schedule_file(t), "--key", str(k), *SIGNED],
    "trust": lambda t, k: [
        "trust",
        "--version",
        "2",
        "--keys",
        _keyring_file(t, k),
        "--env",
        "prod",
        "--key",
        str(k),
    ],
    "schedule show": lambda _t, _k: ["schedule", "show", "--group", "commune-1"],
    "fleet": lambda _t, _k: ["fleet", "--timeout", "0.5"],
    "watch": lambda _t, _k: ["watch", "--device", "loa-001", "--timeout", "0.5"],
    "collect": lambda t, _k: ["collect", "--db", str(t / "events.db"), "--duration", "0.5"],
}


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got: {err!r}"
    assert lines[0].startswith("receiver-admin: ")
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_a_wrong_password_is_one_line_and_exit_3(
    name: str,
    secured: Secured,
    operator_key: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = SUBCOMMANDS[name](tmp_path, operator_key) + secured.login("central", "not the pw")
    code, out, err = run(capsys, argv)
    assert code == 3
    assert_one_line(err, "refused the login of user 'central'", "bad user name or password")
    assert "sent" not in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_no_login_where_one_is_required_says_so(
    name: str,
    secured: Secured,
    operator_key: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    broker = secured.broker
    where = ["--host", broker.host, "--port", str(broker.port)]
    argv = [*SUBCOMMANDS[name](tmp_path, operator_key), *where]
    code, _out, err = run(capsys, argv)
    assert code == 3
    assert_one_line(err, "not authorized", "--username")


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_nothing_listening_is_one_line_and_exit_3(
    name: str,
    stopped_broker: MosquittoBroker,
    operator_key: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    where = ["--host", stopped_broker.host, "--port", str(stopped_broker.port)]
    code, _out, err = run(capsys, SUBCOMMANDS[name](tmp_path, operator_key) + where)
    assert code == 3
    assert_one_line(err, f"cannot connect to {stopped_broker.host}:", "connection refused")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a wedged broker, a TLS port)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        server.close()


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_no_answer_in_time_is_one_line_and_exit_3(
    name: str,
    silent_port: int,
    operator_key: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    where = ["--host", "127.0.0.1", "--port", str(silent_port), "--broker-timeout", "0.5"]
    code, _out, err = run(capsys, SUBCOMMANDS[name](tmp_path, operator_key) + where)
    assert code == 3
    assert_one_line(err, "gave no MQTT answer within 0.5 s", "needs --cafile")


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MosquittoBroker, Path]]:
    directory = tmp_path_factory.mktemp("tls")
    ca = TestCa(directory / "ca")
    server = ca.issue("broker", server_hosts=["127.0.0.1"])
    config = tls_listener_config(ca, server, require_client_cert=False)
    with MosquittoBroker(directory / "mosquitto", extra_config=config) as broker:
        yield broker, ca.cert_file


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_a_ca_that_did_not_sign_the_broker_is_one_line_and_exit_3(
    name: str,
    tls_broker: tuple[MosquittoBroker, Path],
    operator_key: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    broker, _right_ca = tls_broker
    other_ca = TestCa(tmp_path / "other", name="another CA").cert_file
    where = ["--host", broker.host, "--port", str(broker.port), "--cafile", str(other_ca)]
    code, _out, err = run(capsys, SUBCOMMANDS[name](tmp_path, operator_key) + where)
    assert code == 3
    assert_one_line(err, "TLS with", "not trusted", str(other_ca))


def test_the_right_ca_connects(
    tls_broker: tuple[MosquittoBroker, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    broker, right_ca = tls_broker
    where = ["--host", broker.host, "--port", str(broker.port), "--cafile", str(right_ca)]
    code, out, _err = run(capsys, ["fleet", "--timeout", "0.3", *where])
    assert code == 0
    assert "no device has a retained state here" in out


def test_an_acl_refusing_the_command_is_said_and_exit_3(
    secured: Secured, operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = SUBCOMMANDS["stop"](tmp_path, operator_key) + secured.login("viewer")
    code, out, err = run(capsys, argv)
    assert code == 3
    assert_one_line(err, "refused the message to loa/v1/grp/commune-1/cmd", "'viewer'", "ACL")
    assert "sent" not in out


def test_an_acl_that_delivers_nothing_is_named_as_a_cause(
    secured: Secured, capsys: pytest.CaptureFixture[str]
) -> None:
    # Mosquitto 2.0 grants the subscription and then delivers nothing the ACL forbids.
    argv = ["watch", "--device", "loa-001", "--timeout", "0.5", *secured.login("viewer")]
    code, _out, err = run(capsys, argv)
    assert code == 1
    assert_one_line(err, "nothing from loa/v1/dev/loa-001/state", "may user 'viewer' read")


def test_the_right_login_works_under_acls(
    secured: Secured, operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Spy(secured) as spy:  # a member of the group, or the tool warns of a mistyped group
        state = device_state("loa-001", time.time(), groups=["commune-1"])
        spy.publish("loa/v1/dev/loa-001/state", state)
    code, out, err = run(capsys, SUBCOMMANDS["stop"](tmp_path, operator_key) + secured.login())
    assert (code, err) == (0, "")
    assert out.startswith("sent stop ")


def test_as_a_program_a_refused_login_prints_no_traceback(
    secured: Secured, operator_key: Path, tmp_path: Path
) -> None:
    argv = SUBCOMMANDS["play"](tmp_path, operator_key) + secured.login("central", "wrong")
    done = subprocess.run(
        [sys.executable, "-m", "receiver.central.admin", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    assert_one_line(done.stderr, "bad user name or password")


def test_a_missing_password_file_is_bad_input(
    secured: Secured, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = secured.broker
    argv = ["fleet", "--host", broker.host, "--port", str(broker.port), "--username", "central"]
    code, _out, err = run(capsys, [*argv, "--password-file", str(tmp_path / "nope")])
    assert code == 2
    assert_one_line(err, "--password-file", "cannot read it")


def test_an_unknown_host_is_said_plainly() -> None:
    from receiver.central.broker import BrokerOptions, _connect_error

    options = BrokerOptions(host="mqtt.example.invalid", port=8883)
    said = str(_connect_error(options, socket.gaierror(-2, "Name or service not known")))
    assert (
        said == "cannot connect to mqtt.example.invalid:8883: unknown host 'mqtt.example.invalid'"
    )
