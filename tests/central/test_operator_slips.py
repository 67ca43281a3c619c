"""The operator's tool tried as its users try it: the slips a province's staff make, and what
the tool must do about each (refuse it plainly, or do what was meant), against a real Mosquitto
with passwords and ACLs.
"""

from __future__ import annotations

import errno
import json
import queue
import signal
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from receiver.central import programme
from receiver.central.admin import main
from receiver.central.inputs import InputError
from receiver.central.signing import SigningKey, key_entry
from receiver.config import parse_config
from receiver.device_key import STATE_TYPE, DeviceKey, seal_report
from tests.central.conftest import Secured, Spy, device_event, device_state, read_retained
from tests.central.test_collector import Devices, admin, subscribed
from tests.lab.daemon import read_stream_lines, stopping
from tests.lab.tools import pick_port


def command(key: Path, *more: str) -> list[str]:
    return ["--key", str(key), "--env", "prod", *more]


def test_schedule_show_reads_a_device_state_the_device_signed(
    secured: Secured, operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """From protocol v1.1 the state is a signed envelope: ``schedule show --device`` read the
    envelope's fields and said the device held nothing and named no group."""
    key = DeviceKey("loa-001", Ed25519PrivateKey.generate())
    state = device_state("loa-001", time.time(), schedules={"morning": 2}, groups=["commune-1"])
    with Spy(secured) as spy:
        spy.publish("loa/v1/dev/loa-001/state", seal_report(key, STATE_TYPE, state))

    code = main(["schedule", "show", "--device", "loa-001", *secured.login()])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[0] == "device loa-001 holds: morning v2"
    assert lines[1] == "group commune-1 (loa/v1/grp/commune-1/schedule):"


def test_a_command_for_two_audiences_reaches_both(
    secured: Secured, operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--aud grp:commune-1 --aud dev:loa-009`` was published on the group's topic alone, exit 0:
    loa-009, not in that group, never got it."""
    with Spy(secured, retained=False) as spy:
        code = main(
            [
                "volume",
                *command(operator_key, "--aud", "grp:commune-1", "--aud", "dev:loa-009"),
                "--level",
                "40",
                *secured.login(),
            ]
        )
        assert code == 0, capsys.readouterr().err
        spy.wait_for("loa/v1/grp/commune-1/cmd")
        spy.wait_for("loa/v1/dev/loa-009/cmd")
    out = capsys.readouterr().out
    assert "loa/v1/grp/commune-1/cmd" in out
    assert "loa/v1/dev/loa-009/cmd" in out


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("ftp://media.example.vn/a.mp3", "scheme 'ftp'"),
        ("https://user:secret@media.example.vn/a.mp3", "credentials"),
    ],
)
def test_a_url_every_receiver_refuses_is_not_sent(
    secured: Secured,
    operator_key: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    url: str,
    said: str,
) -> None:
    """Receivers fetch and play http and https only, never with credentials in the URL (their
    policy): such a play was signed and sent with exit 0, and every board refused it."""
    media = tmp_path / "a.mp3"
    media.write_bytes(b"audio" * 10)
    with Spy(secured, retained=False) as spy:
        code = main(
            [
                "play",
                *command(operator_key, "--aud", "grp:commune-1"),
                "--url",
                url,
                "--file",
                str(media),
                *secured.login(),
            ]
        )
        spy.settle()
        assert spy.topics() == []
    err = capsys.readouterr().err
    assert code == 2
    assert "body.source.files[0].url" in err
    assert said in err


def _days_of(tmp_path: Path, days: str) -> list[str]:
    (tmp_path / "news.mp3").write_bytes(b"news" * 10)
    source = tmp_path / "programme.yaml"
    source.write_text(
        "id: morning\nversion: 1\nmedia_url: https://m.example.vn/\nentries:\n"
        f"  - title: News\n    days: {days}\n    at: '06:30'\n    file: news.mp3\n",
        encoding="utf-8",
    )
    entries = programme.compile_source(source)["entries"]
    return list(entries[0]["days"])


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("mon-fri", ["mon", "tue", "wed", "thu", "fri"]),
        ("sat-sun", ["sat", "sun"]),
        ("fri-mon", ["mon", "fri", "sat", "sun"]),
        ("mon wed fri", ["mon", "wed", "fri"]),
        ("monday, friday", ["mon", "fri"]),
        ("[Monday, thursday]", ["mon", "thu"]),
    ],
)
def test_days_as_people_write_them(tmp_path: Path, written: str, meant: list[str]) -> None:
    """``days: mon-fri`` became Monday alone (the first three letters), without a word."""
    assert _days_of(tmp_path, written) == meant


@pytest.mark.parametrize("written", ["mon-fry", "weekends", "mo", "[mon, holiday]", "mondays"])
def test_days_that_are_not_days_are_named(tmp_path: Path, written: str) -> None:
    with pytest.raises(InputError, match=r"entries\[0\]\.days"):
        _days_of(tmp_path, written)


@pytest.mark.parametrize(
    "argv",
    [
        ["key-entry", "--roles", "operater"],
        ["keygen", "--id", "op-2", "--roles", "operater"],
    ],
)
def test_a_role_receivers_do_not_know_is_refused(
    operator_key: Path, tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A misspelt role made a key entry (exit 0) that every trust document then carried."""
    made = tmp_path / "k"
    target = ["--key", str(operator_key)] if argv[0] == "key-entry" else ["--out", str(made)]
    with pytest.raises(SystemExit) as exited:
        main([*argv, *target])
    assert exited.value.code == 2
    assert "operater" in capsys.readouterr().err
    assert not made.exists()


@pytest.mark.parametrize(
    "argv", [["fleet", "--limit", "-1"], ["schedule", "show", "--group", "c-1", "--days", "-1"]]
)
def test_a_count_below_one_is_refused(
    secured: Secured, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``fleet --limit -1`` printed no row and "1 more", exit 0; ``schedule show --days -1``
    printed "no occurrence in the next -1 days", exit 0."""
    with pytest.raises(SystemExit) as exited:
        main([*argv, *secured.login()])
    assert exited.value.code == 2
    assert f"{argv[-2]}: -1 is below 1" in capsys.readouterr().err


def test_schedule_show_looks_at_most_a_year_ahead(
    secured: Secured, capsys: pytest.CaptureFixture[str]
) -> None:
    """``schedule show --days 99999999999`` listed every occurrence up to then: it ran until
    memory ran out."""
    with pytest.raises(SystemExit) as exited:
        main(["schedule", "show", "--group", "c-1", "--days", "99999999999", *secured.login()])
    assert exited.value.code == 2
    assert "--days: 99999999999: give at most 366 days" in capsys.readouterr().err


def test_the_key_entry_is_json_a_trust_keyring_takes(
    operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["key-entry", "--key", str(operator_key), "--roles", "operator"]) == 0
    assert json.loads(capsys.readouterr().out)["roles"] == ["operator"]


@pytest.mark.parametrize(
    "argv",
    [
        ["watch", "--device", "loa-#", "--timeout", "2"],
        ["watch", "--device", "loa-001/events", "--timeout", "2"],
        ["schedule", "show", "--group", "commune/#"],
        ["schedule", "show", "--device", "loa+"],
        ["fleet", "--group", "Commune-1"],
    ],
)
def test_an_id_with_a_wildcard_or_a_slash_is_refused_as_typed(
    secured: Secured, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``watch --device 'loa-#'`` printed a traceback from the MQTT thread, then waited 10 s and
    blamed the broker ("gave no MQTT answer ... a TLS listener needs --cafile"), exit 3."""
    started = time.monotonic()
    with pytest.raises(SystemExit) as exited:
        main([*argv, *secured.login()])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert "is not an id" in err
    assert "Traceback" not in err
    assert time.monotonic() - started < 5


def test_watch_refuses_a_negative_timeout(
    secured: Secured, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--timeout -1`` said "nothing ... within -1 s" and blamed the ACL, exit 1."""
    with pytest.raises(SystemExit) as exited:
        main(["watch", "--device", "loa-001", "--timeout", "-1", *secured.login()])
    assert exited.value.code == 2
    assert "--timeout" in capsys.readouterr().err


@pytest.mark.parametrize("duration", ["-1", "nan"])
def test_collect_refuses_a_duration_that_is_not_seconds(
    secured: Secured, tmp_path: Path, duration: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``collect --duration -1`` stopped at once and said "stored 0 events", exit 0."""
    database = tmp_path / "events.db"
    with pytest.raises(SystemExit) as exited:
        main(["collect", "--db", str(database), "--duration", duration, *secured.login()])
    assert exited.value.code == 2
    assert f"--duration: {duration!r}" in capsys.readouterr().err
    assert not database.exists()


@pytest.mark.parametrize("ttl", ["nan", "inf", "5m"])
def test_a_ttl_that_is_not_seconds_is_named(
    operator_key: Path, ttl: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--ttl nan`` said only "Invalid value NaN (not a number)"."""
    with pytest.raises(SystemExit) as exited:
        main(["stop", *command(operator_key, "--aud", "dev:loa-001"), "--ttl", ttl])
    assert exited.value.code == 2
    assert f"--ttl: {ttl!r}" in capsys.readouterr().err


def _programme_file(tmp_path: Path) -> str:
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


def test_a_mistyped_node_publishes_nowhere(
    secured: Secured, operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--node mqtt-2`` (no port) was refused only after the document was already retained on
    the first broker, with exit 2 and "nothing was sent" implied."""
    argv = ["schedule", "--file", _programme_file(tmp_path), "--node", "mqtt-2"]
    code = main([*argv, *command(operator_key, "--aud", "grp:commune-1"), *secured.login()])
    assert code == 2
    assert "--node 'mqtt-2'" in capsys.readouterr().err
    assert read_retained(secured, "loa/v1/grp/commune-1/schedule") is None


def test_a_node_that_is_down_is_named_with_what_was_published(
    secured: Secured, operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cluster node that is down failed the command (exit 3) without saying that the other
    node already holds the document: the operator must know to publish it there again."""
    down = f"127.0.0.1:{pick_port()}"
    argv = ["schedule", "--file", _programme_file(tmp_path), "--node", down]
    code = main([*argv, *command(operator_key, "--aud", "grp:commune-1"), *secured.login()])
    err = capsys.readouterr().err
    assert code == 3
    assert down in err
    assert f"retained on {secured.broker.host}:{secured.broker.port}" in err
    assert read_retained(secured, "loa/v1/grp/commune-1/schedule") is not None


def test_watch_until_an_event_stopped_by_ctrl_c_does_not_say_it_saw_it(secured: Secured) -> None:
    """``watch --until finished`` interrupted before any ``finished`` exited 0, which a script
    reads as "the play finished"."""
    devices = Devices(secured)
    try:
        with stopping(
            admin(secured, "watch", "--device", "loa-001", "--until", "finished")
        ) as watch:
            assert watch.stdout is not None
            lines: queue.Queue[str] = queue.Queue()
            read_stream_lines(watch.stdout, lines)
            # Interrupted only once it printed the retained state: connected, subscribed and
            # waiting (a SIGINT during its imports would be Python's own traceback and -2).
            subscribed(devices, lines)
            watch.send_signal(signal.SIGINT)
            assert watch.wait(timeout=30) == 130  # a loaded machine can be slow to let go
            assert watch.stderr is not None
            assert "Traceback" not in watch.stderr.read()
    finally:
        devices.close()


def test_watch_until_that_times_out_says_what_it_waited_for(
    secured: Secured, capsys: pytest.CaptureFixture[str]
) -> None:
    """``watch --until finished --timeout 1`` that saw the device's state but no ``finished``
    exited 1 without a word: a script's log showed a failure and no cause."""
    with Spy(secured) as spy:
        spy.publish("loa/v1/dev/loa-001/state", device_state("loa-001", time.time()))
        spy.publish(
            "loa/v1/dev/loa-001/events", device_event("loa-001", 1, "accepted"), retain=False
        )

    code = main(
        ["watch", "--device", "loa-001", "--until", "finished", "--timeout", "1", *secured.login()]
    )

    captured = capsys.readouterr()
    assert code == 1
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("receiver-admin: no finished event from loa-001 within 1 s")
    assert "Traceback" not in captured.err


def test_a_programme_too_large_for_the_receivers_is_not_retained(
    secured: Secured, operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Receivers refuse any message over 16 KiB (``too_large``): a long programme passed every
    check, was signed and replaced the group's retained schedule with one no board takes."""
    good = _programme_file(tmp_path)
    login = [*command(operator_key, "--aud", "grp:commune-1"), *secured.login()]
    assert main(["schedule", "--file", good, *login]) == 0
    capsys.readouterr()
    entries = [
        {
            "id": f"notice-{index:03d}",
            "days": ["mon", "tue", "wed", "thu", "fri"],
            "at": f"{6 + index // 12:02d}:{index % 12 * 5:02d}",
            "priority": "normal",
            "source": {
                "files": [
                    {
                        "url": f"https://media.example.vn/commune-25-07873/notice-{index:03d}.mp3",
                        "sha256": f"{index:064x}",
                        "size": 1000 + index,
                        "title": f"Thông báo số {index}",
                    }
                ]
            },
            "max_duration_s": 240,
        }
        for index in range(60)
    ]
    long = tmp_path / "long.json"
    long.write_text(json.dumps({"id": "morning", "version": 2, "entries": entries}))

    code = main(["schedule", "--file", str(long), *login])

    err = capsys.readouterr().err
    assert code == 2
    assert "16384" in err
    held = read_retained(secured, "loa/v1/grp/commune-1/schedule")
    assert held is not None and held["version"] == 1


def test_a_keyring_its_own_root_keys_did_not_sign_enough_is_not_published(
    secured: Secured, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A receiver takes a new keyring only if the new keyring's own root threshold signed it
    (2 unless ``--thresholds`` says otherwise). With one root key, or no root key in the keyring
    at all, the first trust document was signed and retained, exit 0; every board refused it."""
    root = tmp_path / "root.pem"
    SigningKey.generate("root-1").save(root)
    operator = tmp_path / "op.pem"
    SigningKey.generate("op-1").save(operator)
    ring = [
        key_entry(SigningKey.load(root), ["root"], ["*"]),
        key_entry(SigningKey.load(operator), ["operator"], ["*"]),
    ]
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(ring))
    no_root = tmp_path / "no-root.json"
    no_root.write_text(json.dumps(ring[1:]))
    base = ["trust", "--version", "1", "--env", "prod", "--key", str(root), *secured.login()]

    for more in (
        ["--keys", str(keys)],  # the receivers' default root threshold is 2
        ["--keys", str(keys), "--thresholds", "root=2"],
        ["--keys", str(no_root), "--thresholds", "root=1"],
    ):
        code = main([*base, *more])
        err = capsys.readouterr().err
        assert code == 2, more
        assert "its own root keys" in err
        assert read_retained(secured, "loa/v1/trust") is None

    assert main([*base, "--keys", str(keys), "--thresholds", "root=1"]) == 0  # taken


def test_a_yaml_key_written_twice_is_named_not_silently_replaced(tmp_path: Path) -> None:
    """YAML keeps the last of two equal keys: a programme with ``entries:`` twice (one pasted
    below the other) lost the first list without a word."""
    (tmp_path / "news.mp3").write_bytes(b"news" * 10)
    entry = "  - title: {title}\n    days: weekdays\n    at: '{at}'\n    file: news.mp3\n"
    source = tmp_path / "programme.yaml"
    source.write_text(
        "id: morning\nversion: 1\nmedia_url: https://m.example.vn/\n"
        "entries:\n"
        + entry.format(title="News", at="06:30")
        + "entries:\n"
        + entry.format(title="Weather", at="07:00"),
        encoding="utf-8",
    )
    with pytest.raises(InputError, match=r"programme.yaml:9:1: .entries. is given twice$"):
        programme.compile_source(source)


def test_a_json_key_written_twice_is_named_not_silently_replaced(
    operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "programme.json"
    text = Path(_programme_file(tmp_path)).read_text()
    path.write_text(text.replace('"version": 1', '"version": 1, "version": 2'))
    code = main(["schedule", "--file", str(path), *command(operator_key, "--aud", "grp:c-1")])
    assert code == 2
    assert "duplicate key 'version'" in capsys.readouterr().err


@pytest.mark.parametrize("host", ["mqtt://127.0.0.1", "127.0.0.1:1883", "mqtts://broker.vn:8883"])
def test_a_host_written_as_a_url_is_refused_as_typed(
    operator_key: Path, host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--host mqtt://...`` or ``host:port`` said "unknown host" (and "...:1883:1883"), exit 3:
    the broker was blamed for a typo."""
    with pytest.raises(SystemExit) as exited:
        main(["stop", *command(operator_key, "--aud", "dev:loa-001"), "--host", host])
    assert exited.value.code == 2
    assert "without a scheme or port" in capsys.readouterr().err


def test_a_command_the_fleets_keyring_refuses_is_not_sent(
    secured: Secured, operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Documents were checked against the retained keyring, commands not: a ``stop`` signed with
    a key the fleet does not know, or a play for a group outside the key's scope, went out with
    exit 0 and every board refused it."""
    roots = []
    for name in ("root-a", "root-b"):
        path = tmp_path / f"{name}.pem"
        SigningKey.generate(name).save(path)
        roots.append(path)
    ring = [key_entry(SigningKey.load(path), ["root"]) for path in roots]
    ring.append(key_entry(SigningKey.load(operator_key), ["operator"], ["commune-1"]))
    keyring = tmp_path / "keyring.json"
    keyring.write_text(json.dumps(ring))
    signed = [arg for path in roots for arg in ("--key", str(path))]
    trust = ["trust", "--version", "2", "--keys", str(keyring), "--env", "prod", *signed]
    assert main([*trust, *secured.login()]) == 0
    stranger = tmp_path / "op-9.pem"
    SigningKey.generate("op-9").save(stranger)
    capsys.readouterr()

    with Spy(secured, retained=False) as spy:
        for key, audience, said in (
            (stranger, "grp:commune-1", "(unknown_key)"),
            (operator_key, "grp:commune-2", "(not_authorized)"),
            (roots[0], "grp:commune-1", "(not_authorized)"),
        ):
            code = main(["stop", *command(key, "--aud", audience), *secured.login()])
            err = capsys.readouterr().err
            assert code == 2, (key, audience)
            assert "the fleet's keyring (trust version 2" in err and said in err
        spy.settle()
        assert [t for t in spy.topics() if t.endswith("/cmd")] == []

        assert (
            main(["stop", *command(operator_key, "--aud", "grp:commune-1"), *secured.login()]) == 0
        )
        spy.wait_for("loa/v1/grp/commune-1/cmd")


def test_a_command_for_one_board_is_judged_as_its_groups_may_judge_it(
    secured: Secured, operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key scoped to commune-1 was refused (``not_authorized``, exit 2) for ``--aud
    dev:loa-001``: the tool judged the command as a board in no group would, though a board of
    commune-1 takes it (``report`` to one board after an ACL change, operations.md §8). The
    tool cannot know the board's groups: it refuses only what no board could take."""
    roots = []
    for name in ("root-a", "root-b"):
        path = tmp_path / f"{name}.pem"
        SigningKey.generate(name).save(path)
        roots.append(path)
    ring = [key_entry(SigningKey.load(path), ["root"]) for path in roots]
    ring.append(key_entry(SigningKey.load(operator_key), ["operator"], ["commune-1"]))
    keyring = tmp_path / "keyring.json"
    keyring.write_text(json.dumps(ring))
    signed = [arg for path in roots for arg in ("--key", str(path))]
    trust = ["trust", "--version", "2", "--keys", str(keyring), "--env", "prod", *signed]
    assert main([*trust, *secured.login()]) == 0
    stranger = tmp_path / "op-9.pem"
    SigningKey.generate("op-9").save(stranger)
    capsys.readouterr()

    with Spy(secured, retained=False) as spy:
        assert (
            main(["report", *command(operator_key, "--aud", "dev:loa-001"), *secured.login()]) == 0
        )
        spy.wait_for("loa/v1/dev/loa-001/cmd")
        for key, said in ((stranger, "(unknown_key)"), (roots[0], "(not_authorized)")):
            code = main(["report", *command(key, "--aud", "dev:loa-001"), *secured.login()])
            assert code == 2 and said in capsys.readouterr().err, key


@pytest.mark.parametrize(
    "topic", ["loa/v1/grp/commune-2/cmd", "loa/v1/trust", "loa/v1/dev/loa-001/state"]
)
def test_a_topic_no_audience_of_the_command_listens_on_is_refused(
    secured: Secured, operator_key: Path, topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--aud grp:commune-1 --topic loa/v1/grp/commune-2/cmd`` was sent, exit 0: the boards of
    commune-2 refused it (not their audience) and commune-1 never saw it."""
    with Spy(secured, retained=False) as spy:
        argv = ["stop", *command(operator_key, "--aud", "grp:commune-1"), "--topic", topic]
        code = main([*argv, *secured.login()])
        spy.settle()
        assert spy.topics() == []
    assert code == 2
    assert f"--topic {topic}" in capsys.readouterr().err


def test_watch_until_a_kind_no_event_has_is_refused(
    secured: Secured, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--until finsihed`` (a typo) could never match: watch waited until its timeout, or for
    ever, then said nothing had come."""
    with pytest.raises(SystemExit) as exited:
        main(["watch", "--device", "loa-001", "--until", "finsihed", *secured.login()])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "finsihed" in err and "finished" in err


@pytest.mark.parametrize("timeout", ["0", "-5"])
def test_fleet_refuses_a_timeout_it_cannot_collect_in(
    secured: Secured, timeout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``fleet --timeout 0`` (or below) collected nothing and said "no device has a retained
    state here", exit 0, against a broker full of them."""
    with pytest.raises(SystemExit) as exited:
        main(["fleet", "--timeout", timeout, *secured.login()])
    assert exited.value.code == 2
    assert "--timeout" in capsys.readouterr().err


def test_keygen_into_a_directory_that_does_not_exist_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It printed "[Errno 2] No such file or directory: '.../keys/op.pem'", naming the file that
    was to be made rather than the directory that is missing."""
    out = tmp_path / "keys" / "op.pem"
    assert main(["keygen", "--id", "op-2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: the directory {out.parent} does not exist" in err


# --- keys, ports, documents and start times, as operators mistype them ----------------------


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["keygen", "--id", "op 2"], "--id: 'op 2' must not contain spaces"),
        (
            ["keygen", "--id", "op-2", "--scopes", "prov 25"],
            "--scopes: 'prov 25' is neither '*' nor a device",
        ),
        (["keygen", "--id", "op-2", "--scopes", "Commune-1"], "--scopes: 'Commune-1' is neither"),
    ],
)
def test_keygen_refuses_an_entry_the_receivers_config_refuses(
    tmp_path: Path, argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``keygen --id 'op 2'`` made the key and printed a trust.keys entry that every receiver's
    check-config then refused ("must not contain spaces"), exit 0."""
    out = tmp_path / "op.pem"
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--out", str(out)])
    assert exited.value.code == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


def test_keygen_into_a_directory_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out keys/`` said "keys exists already; not overwriting a key"."""
    assert main(["keygen", "--id", "op-2", "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path}: a directory; give the key file's name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_port_out_of_range_is_bad_input_not_the_broker(
    operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--port 18830`` typed ``188830`` said "connection refused (is the broker running
    there?)", exit 3: the operator went to look at a broker that was fine."""
    with pytest.raises(SystemExit) as exited:
        main(["stop", *command(operator_key, "--aud", "dev:loa-001"), "--host", "127.0.0.1",
              "--port", "188830"])  # fmt: skip
    assert exited.value.code == 2
    assert "--port: 188830 is not a port: give 1 to 65535" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("start_at", "said"),
    [
        ("2020-12-07T06:30:00+07:00", "in the past; the boards would play it at once"),
        ("2062-12-07T06:30:00+07:00", "more than 7 days ahead; check the year"),
    ],
)
def test_a_start_time_in_the_past_or_years_ahead_is_not_sent(
    secured: Secured,
    operator_key: Path,
    start_at: str,
    said: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A year typed wrong was signed and sent: 2020 played at once on every board; 2062 sat in
    every board's queue as a play nobody would hear."""
    with Spy(secured, "loa/v1/#", retained=False) as spy:
        code = main(
            ["stream", *command(operator_key, "--aud", "grp:commune-1"),
             "--url", "https://radio.example.vn/live", "--start-at", start_at,
             *secured.login()]
        )  # fmt: skip
        spy.settle()
        assert spy.topics() == []
    assert code == 2
    err = capsys.readouterr().err
    assert f"--start-at {start_at}: that is " in err and said in err


def test_a_start_time_a_moment_ahead_is_sent(
    operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 120))
    argv = ["stream", *command(operator_key, "--aud", "grp:commune-1")]
    assert main([*argv, "--url", "https://radio.example.vn/live", "--start-at", soon]) == 0
    envelope = json.loads(capsys.readouterr().out)
    assert envelope["payloadType"] == "application/vnd.loa.command.v1+json"


def test_a_schedule_version_given_as_0_is_refused_not_replaced_by_the_files(
    operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--version 0`` was taken as "no --version": the file's version 1 was signed, exit 0."""
    argv = ["schedule", "--file", _programme_file(tmp_path), "--version", "0"]
    assert main([*argv, *command(operator_key, "--aud", "grp:commune-1")]) == 2
    captured = capsys.readouterr()
    assert "version: must be at least 1, not 0" in captured.err
    assert captured.out == ""


@pytest.mark.parametrize("ttl_days", ["0", "-1", "nan", "a month"])
def test_a_document_lifetime_that_is_not_days_is_named(
    operator_key: Path, tmp_path: Path, ttl_days: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--ttl-days 0`` said "(document): a receiver refuses it: exp is not after iat
    (malformed)"; ``--ttl-days nan`` said only "Invalid value NaN (not a number)"."""
    argv = ["schedule", "--file", _programme_file(tmp_path), "--ttl-days", ttl_days]
    with pytest.raises(SystemExit) as exited:
        main([*argv, *command(operator_key, "--aud", "grp:commune-1")])
    assert exited.value.code == 2
    assert f"--ttl-days: {ttl_days!r}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("id: morning\nverison: 2\n", "verison: not a known key; did you mean version?"),
        ("id: morning\nversion: two\n", "version 'two' is not a whole number"),
        ("version: 2\n", "no schedule id: write id: in the file, or give --id"),
    ],
)
def test_a_programmes_id_and_version_slips_are_named(
    operator_key: Path,
    tmp_path: Path,
    source: str,
    said: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A misspelt ``verison:`` or ``version: two`` both said "a schedule needs an id and an
    integer version (in the file or flags)": neither the key nor the value was named."""
    (tmp_path / "a.mp3").write_bytes(b"ID3 not really")
    path = tmp_path / "programme.yaml"
    path.write_text(
        source + "media_url: https://m.example/\nentries:\n"
        "  - {title: News, days: weekdays, at: '06:30', file: a.mp3}\n",
        encoding="utf-8",
    )
    argv = ["schedule", "--file", str(path), *command(operator_key, "--aud", "grp:commune-1")]
    assert main(argv) == 2
    assert said in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--password-file", "--registry", "--bridges"])
def test_a_missing_file_is_named_once_in_plain_words(
    secured: Secured, tmp_path: Path, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """It said "[Errno 2] No such file or directory: '…/absent'" after naming the file."""
    absent = tmp_path / "absent"
    login = secured.login()
    if option == "--password-file":
        login[login.index("--password-file") + 1] = str(absent)
        extra = []
    else:
        extra = [option, str(absent)]
    assert main(["fleet", "--timeout", "1", *extra, *login]) == 2
    err = capsys.readouterr().err
    assert str(absent) in err and "No such file or directory" in err
    assert "Errno" not in err and err.count(str(absent)) == 1


def test_a_keyring_file_with_a_json_slip_is_named_by_line_and_column(
    operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trailing comma said "the keyring is not JSON (not JSON (Expecting property name ...
    at offset 14))": an offset no editor shows, and "not JSON" twice."""
    keys = tmp_path / "keys.json"
    keys.write_text('[\n {"id": "a",}\n]\n', encoding="utf-8")
    argv = ["trust", "--version", "2", "--keys", str(keys), "--env", "prod"]
    assert main([*argv, "--key", str(operator_key)]) == 2
    err = capsys.readouterr().err
    assert f"{keys}:2:13: the keyring is not JSON: Expecting property name" in err
    assert "offset" not in err


def test_a_signing_key_others_may_read_is_warned_of(
    operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key copied with mode 0644 signed silently: anyone on the machine could have read it."""
    operator_key.chmod(0o644)
    assert main(["stop", *command(operator_key, "--aud", "dev:loa-001")]) == 0
    captured = capsys.readouterr()
    assert f"warning: --key {operator_key} may be read by other users (mode 0644)" in captured.err
    assert f"chmod 600 {operator_key}" in captured.err
    operator_key.chmod(0o600)
    assert main(["stop", *command(operator_key, "--aud", "dev:loa-001")]) == 0
    assert "may be read" not in capsys.readouterr().err


def test_a_public_key_or_a_directory_given_as_key_is_named(
    operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--key op.pub.pem`` said "op.pub.pem: op.pub.pem: not a PEM private key without a
    passphrase"; ``--key keys/`` said "[Errno 21] Is a directory: 'keys/'"."""
    public = tmp_path / "op.pub.pem"
    public.write_bytes(
        SigningKey.load(operator_key)
        .private.public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    assert main(["stop", *command(public, "--aud", "dev:loa-001")]) == 2
    assert f"--key {public}: a public key; sign with the private key file" in (
        capsys.readouterr().err
    )
    assert main(["stop", *command(tmp_path, "--aud", "dev:loa-001")]) == 2
    assert f"--key {tmp_path}: cannot read it (Is a directory)" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["file:///etc/hostname", "ftp://127.0.0.1:9/a.mp3"])
def test_a_programme_url_every_receiver_refuses_is_not_fetched(
    operator_key: Path, tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``url: file:///etc/hostname`` was read from the operator's own machine and pinned (the
    boards then refused it); ``ftp://`` was tried and failed as "cannot fetch ... [Errno 111]"."""
    path = tmp_path / "programme.yaml"
    path.write_text(
        "id: morning\nversion: 1\nentries:\n"
        f"  - {{title: A, days: mon, at: '06:30', url: '{url}'}}\n",
        encoding="utf-8",
    )
    argv = ["schedule", "--file", str(path), *command(operator_key, "--aud", "grp:commune-1")]
    assert main(argv) == 2
    scheme = url.partition(":")[0]
    err = capsys.readouterr().err
    assert (
        f"entries[0].url: URL scheme '{scheme}' is not allowed (every receiver refuses it)" in err
    )
    assert "cannot fetch" not in err


@pytest.mark.parametrize("key_id", ["&op", "'op", "true", "op-1"])
def test_the_entry_keygen_prints_reads_back_as_the_key_id(
    tmp_path: Path, key_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``keygen --id '&op'`` printed ``- id: &op``, which YAML reads as an anchor: pasted into
    the config, check-config said "trust.keys[0].id: is empty"."""
    assert main(["keygen", "--id", key_id, "--out", str(tmp_path / "op.pem")]) == 0
    printed = capsys.readouterr().out.split("trust.keys:\n", 1)[1]
    config = (
        "device_id: loa-1\nenv: lab\ngroups: []\nbroker: {host: 192.0.2.1}\ntrust:\n  keys:\n"
        + "".join(f"  {line}\n" for line in printed.splitlines())
    )
    assert parse_config(config, str(tmp_path / "receiver.yaml")).trust.keys[0].id == key_id


def test_a_url_with_vietnamese_letters_is_refused_with_the_form_receivers_take(
    operator_key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The refusal said what was wrong but not what to write instead."""
    media = tmp_path / "a.mp3"
    media.write_bytes(b"ID3")
    argv = ["play", *command(operator_key, "--aud", "grp:commune-1"), "--file", str(media)]
    assert main([*argv, "--url", "https://media.example.vn/bản tin.mp3"]) == 2
    assert "percent-encoded it reads https://media.example.vn/b%E1%BA%A3n%20tin.mp3" in (
        capsys.readouterr().err
    )
    assert main([*argv, "--url", "https://media.example.vn/b%E1%BA%A3n%20tin.mp3"]) == 0


@pytest.mark.parametrize(("written", "meant"), [("06:30", "06:30"), ("6:30", "06:30")])
def test_an_unquoted_time_is_the_time_written(
    operator_key: Path, tmp_path: Path, written: str, meant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.mp3").write_bytes(b"ID3")
    path = tmp_path / "programme.yaml"
    path.write_text(
        "id: morning\nversion: 1\nmedia_url: https://m.example/\nentries:\n"
        f"  - {{title: News, days: mon, file: a.mp3, at: {written}}}\n",
        encoding="utf-8",
    )
    assert programme.compile_source(path)["entries"][0]["at"] == meant


@pytest.mark.parametrize("written", ["630", "6"])
def test_a_time_written_as_a_bare_number_is_refused(
    operator_key: Path, tmp_path: Path, written: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``at: 630`` (meant 06:30) was read as 630 minutes: the programme played at 10:30."""
    (tmp_path / "a.mp3").write_bytes(b"ID3")
    path = tmp_path / "programme.yaml"
    path.write_text(
        "id: morning\nversion: 1\nmedia_url: https://m.example/\nentries:\n"
        f"  - {{title: News, days: mon, file: a.mp3, at: {written}}}\n",
        encoding="utf-8",
    )
    argv = ["schedule", "--file", str(path), *command(operator_key, "--aud", "grp:commune-1")]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert f'entries[0].at: {written} is not a local time: write it HH:MM, e.g. "06:30"' in (
        captured.err
    )
    assert captured.out == ""


def test_a_command_for_a_device_that_never_reported_warns_of_the_id(
    secured: Secured, operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--aud dev:loa-01`` (for loa-001) said "sent stop ... to loa/v1/dev/loa-01/cmd", exit 0,
    and nothing else: no board would ever act on it."""
    with Spy(secured) as spy:
        spy.publish("loa/v1/dev/loa-001/state", device_state("loa-001", time.time()))
    argv = ["stop", *command(operator_key, "--aud", "dev:loa-001"), *secured.login()]
    assert main(argv) == 0
    assert "warning" not in capsys.readouterr().err
    argv = ["stop", *command(operator_key, "--aud", "dev:loa-01"), *secured.login()]
    assert main(argv) == 0  # a board being installed has no state yet: sent all the same
    captured = capsys.readouterr()
    assert "warning: no device loa-01 has left a state on" in captured.err
    assert "is the id right?" in captured.err
    assert "sent stop" in captured.out


def test_schedule_show_for_a_device_that_never_reported_says_so(
    secured: Secured, capsys: pytest.CaptureFixture[str]
) -> None:
    """It printed "device loa-01 holds: no schedule", then asked for --group."""
    assert main(["schedule", "show", "--device", "loa-01", *secured.login()]) == 2
    err = capsys.readouterr().err
    assert "no device loa-01 has left a state on" in err and "is the id right?" in err


def test_keygen_on_a_full_disk_leaves_no_half_written_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A write that failed left an empty op.pem (mode 0600) and no op.pem.id: the next keygen
    said "exists already", and the empty file was taken for a key by --key."""
    out = tmp_path / "op.pem"

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("receiver.central.signing.os.fsync", full)
    assert main(["keygen", "--id", "op-2", "--out", str(out)]) == 2
    assert f"--out {out}: cannot write the key (No space left on device); nothing was written" in (
        capsys.readouterr().err
    )
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert main(["keygen", "--id", "op-2", "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["op.pem", "op.pem.id"]
    assert (out.stat().st_mode & 0o777, (tmp_path / "op.pem.id").read_text()) == (0o600, "op-2\n")
    assert SigningKey.load(out).id == "op-2"
