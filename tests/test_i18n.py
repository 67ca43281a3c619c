"""The Vietnamese catalog: complete for every message a technician reads, placeholders intact,
and compiled by our own msgfmt into a file that Python's gettext reads back."""

from __future__ import annotations

import ast
import base64
import gettext
import os
import string
import subprocess
import sys
from pathlib import Path

import pytest

from receiver import cli, i18n, status
from receiver.central import collector
from receiver.device_key import DeviceKeyError, refuse_unusable_device_key
from receiver.i18n import DOMAIN, compile_po, read_po
from receiver.timefmt import rfc3339

ROOT = Path(__file__).resolve().parents[1]
VI = ROOT / "receiver" / "locale" / "vi" / "LC_MESSAGES" / f"{DOMAIN}.po"
TRANSLATED = (
    "receiver/cli.py",
    "receiver/config.py",
    "receiver/status.py",
    "receiver/gpio.py",
    "receiver/device_key.py",
)
STATUS_LABELS = (
    "device", "updated", "daemon", "broker", "software", "uptime", "playing", "volume", "relay",
    "schedules", "trust", "clock", "cache", "faults", "health", "outbox", "board now",
)  # fmt: skip


def marked_messages() -> list[str]:
    """Every literal passed to ``_()`` in the translated modules."""
    found: list[str] = []
    for name in TRANSLATED:
        for node in ast.walk(ast.parse((ROOT / name).read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "_"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.append(node.args[0].value)
    return found


def fields(text: str) -> set[str]:
    return {f"{name}!{conv}" for _, name, _, conv in string.Formatter().parse(text) if name}


def test_every_marked_message_and_label_has_a_vietnamese_translation() -> None:
    catalog = read_po(VI)
    wanted = [*marked_messages(), *STATUS_LABELS, *i18n.OS_REASONS.values()]
    assert len(wanted) > 40
    missing = [m for m in wanted if m not in catalog]
    assert missing == []


@pytest.mark.parametrize("msgid", sorted(read_po(VI)))
def test_translations_keep_the_placeholders(msgid: str) -> None:
    translation = read_po(VI)[msgid]
    assert fields(translation) <= fields(msgid), (msgid, translation)
    # A translation must format with the English text's arguments, or the program would crash.
    if "{" in msgid:
        assert fields(translation) == fields(msgid) or "plural" in msgid, (msgid, translation)


def test_the_compiled_catalog_reads_back_through_gettext(tmp_path: Path) -> None:
    mo = tmp_path / "vi" / "LC_MESSAGES" / f"{DOMAIN}.mo"
    compile_po(VI, mo)
    vietnamese = gettext.translation(DOMAIN, tmp_path, languages=["vi"])
    for msgid, msgstr in read_po(VI).items():
        assert vietnamese.gettext(msgid) == msgstr
    assert vietnamese.gettext("not in the catalog") == "not in the catalog"


@pytest.fixture
def vietnamese(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The program as a board with ``LANG=vi_VN.UTF-8`` runs it (the catalog as the build
    compiles it)."""
    compile_po(VI, tmp_path / "vi" / "LC_MESSAGES" / f"{DOMAIN}.mo")
    catalog = gettext.translation(DOMAIN, tmp_path, languages=["vi"])
    monkeypatch.setattr(i18n, "_translations", lambda: catalog)


def test_check_config_names_the_usual_slips_in_vietnamese(
    vietnamese: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only the last line was Vietnamese: every problem above it (the lines that say what to
    fix) stayed English, and so did "config file not found"."""
    key = base64.b64encode(bytes(range(32))).decode()
    config = tmp_path / "receiver.yaml"
    config.write_text(
        "device_id: loa-1\nevn: lab\ngroups: commune-1\nbroker:\n  host: 192.0.2.1\n"
        "  port: '1883'\n  keepalive_s: 3\n"
        f"trust:\n  keys:\n    - {{id: k1, ed25519: '{key}', roles: [operator], scopes: ['*']}}\n"
        "player: {output: alas}\ndevice_id: loa-2\n",
        encoding="utf-8",
    )
    assert cli.main(["check-config", str(config)]) == 78
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{config}:1:1: env: còn thiếu (bắt buộc)",
        f"{config}:2:1: evn: tham số không xác định (có phải ý bạn là 'env'?)",
        f"{config}:3:9: groups: cần một danh sách, nhưng đang là một chuỗi ký tự "
        "(viết [a, b] hoặc các dòng '- a')",
        f"{config}:6:9: broker.port: cần một số nguyên, nhưng đang là chuỗi ký tự ('1883'): "
        "hãy bỏ dấu nháy",
        f"{config}:7:16: broker.keepalive_s: 3 nằm ngoài khoảng cho phép: dùng từ 5 đến 65535 giây",
        f"{config}:11:18: player.output: 'alas' không phải một trong các giá trị: alsa, pulse, "
        "file (có phải ý bạn là 'alsa'?)",
        f"{config}:12:1: device_id: tham số bị ghi hai lần (lần đầu ở dòng 1): chỉ giữ lại một",
        f"{config}: cấu hình có lỗi, xem ở trên",
    ]
    assert cli.main(["check-config", str(tmp_path / "nope.yaml")]) == 78
    assert "nope.yaml: không tìm thấy tệp cấu hình" in capsys.readouterr().err


@pytest.mark.parametrize("program", ["receiver.cli", "receiver.central.admin"])
def test_a_terminal_that_is_not_utf8_gets_escapes_not_a_traceback(
    tmp_path: Path, program: str
) -> None:
    """On a console whose locale is ASCII or Latin-1, "OK —" (and any Vietnamese letter) ended
    in UnicodeEncodeError and a traceback, exit 1, although all was well."""
    if program == "receiver.cli":
        key = base64.b64encode(bytes(range(32))).decode()
        config = tmp_path / "receiver.yaml"
        config.write_text(
            "device_id: loa-1\nenv: lab\ngroups: []\nbroker: {host: 192.0.2.1}\ntrust:\n  keys:\n"
            f"    - {{id: k1, ed25519: '{key}', roles: [operator], scopes: ['*']}}\n"
            "gpio: {pin_factory: mock}\n",
            encoding="utf-8",
        )
        argv = ["check-config", str(config)]
    else:  # the proof-of-play report's Vietnamese column titles
        database = tmp_path / "events.db"
        collector.open_database(database).close()
        argv = ["report", "--db", str(database), "--lang", "vi"]
    result = subprocess.run(
        [sys.executable, "-m", program, *argv],
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
        timeout=60,
        check=False,
    )
    assert b"Traceback" not in result.stderr, result.stderr.decode("ascii", "replace")
    assert result.returncode == 0
    assert b"\\u" in result.stdout or b"OK \\u2014" in result.stdout


def test_the_boards_health_line_of_status_is_vietnamese_too(vietnamese: None) -> None:
    """``bo mạch lúc này   load 1.33, memory 23.0 GiB available, disk free: state 75.0 GiB``:
    the label was Vietnamese, the line after it English."""
    health = {
        "load_1m": 1.33,
        "mem_available_bytes": 512 * 2**20,
        "disk_free_bytes": {"state": 2**30, "cache": 3 * 2**30},
    }
    line = status.format_health(health)
    assert line.startswith("tải CPU 1.33, bộ nhớ trống 512")
    assert "dung lượng đĩa trống: trạng thái 1.0 GiB, bộ nhớ đệm 3.0 GiB" in line


@pytest.mark.parametrize("variable", ["LANG", "LC_ALL", "LANGUAGE"])
def test_a_checkout_run_in_place_answers_in_vietnamese(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """A checkout has the catalogs' sources only (the build compiles the .mo): ``LANG=vi_VN``
    got English from ``make demo``'s tools and from ``python -m receiver.cli``."""
    source = tmp_path / "vi" / "LC_MESSAGES" / f"{DOMAIN}.po"
    source.parent.mkdir(parents=True)
    source.write_bytes(VI.read_bytes())
    monkeypatch.setattr(i18n, "LOCALE_DIR", tmp_path)
    for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "vi_VN.UTF-8" if variable != "LANGUAGE" else "vi")
    i18n._translations.cache_clear()
    try:
        msgid, msgstr = next(iter(read_po(VI).items()))
        assert i18n.gettext_(msgid) == msgstr
        monkeypatch.setenv(variable, "en_GB.UTF-8" if variable != "LANGUAGE" else "en")
        i18n._translations.cache_clear()
        assert i18n.gettext_(msgid) == msgid
    finally:
        i18n._translations.cache_clear()


def test_the_checkout_s_own_command_line_speaks_vietnamese(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("LANGUAGE", "LC_ALL", "LC_MESSAGES")}
    env["LANG"] = "vi_VN.UTF-8"
    absent = tmp_path / "absent.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "check-config", str(absent)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 78
    assert "config file not found" not in done.stderr
    assert f"{absent}: không tìm thấy tệp cấu hình" in done.stderr


def test_the_id_rule_is_told_in_words_in_vietnamese(
    vietnamese: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A device id or group with a capital letter was refused with the rule as a regular
    expression (or, later, a list of characters in English in an otherwise Vietnamese line)."""
    key = base64.b64encode(bytes(range(32))).decode()
    config = tmp_path / "receiver.yaml"
    config.write_text(
        "device_id: Loa-1\nenv: lab\ngroups: [ok, Xa]\nbroker: {host: 192.0.2.1}\ntrust:\n"
        f"  keys:\n    - {{id: k1, ed25519: '{key}', roles: [operator], scopes: ['Xa!']}}\n",
        encoding="utf-8",
    )
    assert cli.main(["check-config", str(config)]) == 78
    err = capsys.readouterr().err
    rule = "(1-64 ký tự: chữ thường, chữ số, '.', '_' hoặc '-', bắt đầu bằng chữ cái hoặc chữ số)"
    assert f"device_id: 'Loa-1' không phải mã định danh hợp lệ {rule}" in err
    assert f"groups[1]: 'Xa' không phải mã định danh hợp lệ {rule}" in err
    assert f"scopes[0]: 'Xa!' không phải '*', mã thiết bị hay mã nhóm {rule}" in err
    assert "a-z" not in err and "{0,63}" not in err


@pytest.mark.parametrize(
    "source",
    [b'msgid "x"\nmsgstr "y\n', b"msgid x\n", b'msgid "\xff"\nmsgstr "y"\n'],
    ids=["unclosed", "bare", "not-utf8"],
)
def test_a_catalog_source_that_cannot_be_read_gives_english(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: bytes
) -> None:
    """A checkout's .po mid-edit raised out of the first translated message: a traceback where
    the message was due, in the daemon too."""
    path = tmp_path / "vi" / "LC_MESSAGES" / f"{DOMAIN}.po"
    path.parent.mkdir(parents=True)
    path.write_bytes(source)
    monkeypatch.setattr(i18n, "LOCALE_DIR", tmp_path)
    for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "vi_VN.UTF-8")
    i18n._translations.cache_clear()
    try:
        assert i18n.gettext_("config file not found") == "config file not found"
    finally:
        i18n._translations.cache_clear()


def test_every_value_of_status_is_vietnamese_too(vietnamese: None) -> None:
    """With ``LANG=vi_VN`` the labels were Vietnamese, several values English: "2 reconnects",
    "version 3", "amp on", "in 4 files, 1 missing (still to fetch)", "none"."""
    now = 1_800_000_000.0
    state = {
        "device": "loa-1",
        "ts": rfc3339(now - 5),
        "online": True,
        "state": "playing",
        "playing": {"ref": "c-1", "title": "Tin", "priority": "normal", "since": rfc3339(now - 60)},
        "volume": 70,
        "relays": {"amp": "on"},
        "schedules": {},
        "trust_version": 0,
        "clock_synced": True,
        "cache": {"bytes": 2048, "files": 4, "missing": 1},
        "faults": [],
        "link": {"up": True, "reconnects": 2, "last_error": None},
    }
    values = [line.split("  ", 1)[-1] for line in status.format_status(state, now).splitlines()]
    text = "\n".join(values)
    for english in ("reconnect", "version", "config's keyring", "file", "missing", "to fetch"):
        assert english not in text, (english, text)
    assert "bật" in text and "thường" in text  # the relay on, a normal priority
    assert "none" not in values
    # durations: "updated 5 s ago", "since ... (1 min ago)", uptime "1 d 1 h"
    assert "5 giây trước" in text and "(1 phút trước)" in text
    state["uptime_s"] = 90061
    assert "1 ngày 1 giờ" in status.format_status(state, now)
    state["relays"] = {"amp": "off"}
    assert "tắt" in status.format_status(state, now)


def test_argparse_s_own_words_and_the_help_are_in_the_catalog_with_their_placeholders() -> None:
    """``receiver`` says argparse's words through the catalog (receiver/cli_parser.py): each one
    it can print is translated, with argparse's %-placeholders kept (a lost ``%(prog)s`` would
    end a typo in a traceback)."""
    import re

    from receiver.cli_parser import ARGPARSE_MESSAGES

    catalog = read_po(VI)
    for msgid in (*ARGPARSE_MESSAGES, cli.HELP):
        assert msgid in catalog, msgid
        placeholders = re.compile(r"%(?:\([a-z_]+\))?[sr]")
        assert sorted(placeholders.findall(catalog[msgid])) == sorted(
            placeholders.findall(msgid)
        ), msgid


# --- the rest of what a technician reads from ``receiver`` ----------------------------------

_KEY = base64.b64encode(bytes(range(32))).decode()


def _config(tmp_path: Path, *, broker: str = "", key: str = _KEY, tail: str = "") -> Path:
    path = tmp_path / "receiver.yaml"
    path.write_text(
        f"device_id: loa-1\nenv: lab\ngroups: []\nbroker:\n  host: 192.0.2.1\n{broker}"
        f"trust:\n  keys:\n    - {{id: k1, ed25519: '{key}', roles: [operator], scopes: ['*']}}\n"
        f"storage: {{state_dir: {tmp_path}/state, cache_dir: {tmp_path}/cache}}\n{tail}",
        encoding="utf-8",
    )
    return path


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    cli.main(["check-config", str(path)])
    return capsys.readouterr().err


def test_a_password_file_that_is_missing_is_said_in_vietnamese(
    vietnamese: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, broker="  username: u\n  password_file: /nonexistent/pw\n")
    err = _check(path, capsys)
    assert "broker.password_file: không tìm thấy tệp: /nonexistent/pw" in err, err
    (tmp_path / "pw").mkdir()
    path = _config(tmp_path, broker=f"  username: u\n  password_file: {tmp_path}/pw\n")
    err = _check(path, capsys)
    assert f"broker.password_file: không đọc được {tmp_path}/pw: đây là một thư mục" in err, err


def test_a_config_file_that_cannot_be_read_says_why_in_vietnamese(
    vietnamese: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``không đọc được tệp cấu hình: Is a directory``: the system's reason stayed English."""
    err = _check(tmp_path, capsys)
    assert f"{tmp_path}: không đọc được tệp cấu hình: đây là một thư mục" in err, err
    assert "Is a directory" not in err


@pytest.mark.parametrize(
    ("errno_", "words"),
    [(2, "không tồn tại"), (13, "không có quyền truy cập"), (21, "đây là một thư mục")],
)
def test_the_usual_system_errors_are_told_in_vietnamese(
    vietnamese: None, errno_: int, words: str
) -> None:
    assert i18n.os_reason(OSError(errno_, os.strerror(errno_))) == words
    assert i18n.os_reason(OSError(5, "Input/output error")) == "Input/output error"


def test_status_without_permission_is_vietnamese_through(
    vietnamese: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``cannot read …/status.json: Permission denied (thử lại với sudo…)``: half English."""
    path = _config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "status.json").write_text("{}", encoding="utf-8")
    real_open = Path.open

    def refused(self: Path, *args: object, **kwargs: object) -> object:
        if self.name == "status.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", refused)
    assert cli.main(["status", "--config", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"không đọc được {tmp_path}/state/status.json: không có quyền truy cập "
        "(thử lại với sudo nếu là lỗi quyền truy cập)"
    )


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (base64.b64encode(b"abc").decode(), "được giải mã thành 3 byte"),
        ("not base64!", "không phải base64 hợp lệ"),
        ("ssh-ed25519 AAAA", "trông giống khóa OpenSSH hoặc PEM"),
    ],
)
def test_a_wrong_public_key_is_said_in_vietnamese(
    vietnamese: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, words: str
) -> None:
    err = _check(_config(tmp_path, key=value), capsys)
    assert f"ed25519: {words}: hãy ghi base64 của khóa công khai Ed25519 thô 32 byte" in err, err


@pytest.mark.parametrize(
    ("gpio", "words"),
    [
        (
            "{amp_pin: 99}",
            "gpio.amp_pin: GPIO99 không nằm trên đầu cắm 40 chân: dùng GPIO0 đến GPIO27",
        ),
        ("{amp_pin: BOARD41}", "gpio.amp_pin: không có chân số 41 trên đầu cắm"),
        ("{amp_pin: BOARD1}", "gpio.amp_pin: chân số 1 của đầu cắm không phải chân GPIO"),
        ("{amp_pin: x}", "gpio.amp_pin: cần một số BCM (17) hoặc tên chân như GPIO17"),
        ("{amp_pin: 17, mic_pin: 17}", "gpio.mic_pin: GPIO17 đã được dùng cho gpio.amp_pin"),
        (
            "{amp_pin: 17, mic_pin: BOARD11}",
            "gpio.mic_pin: BOARD11 là GPIO17, chân đã được dùng cho gpio.amp_pin",
        ),
    ],
)
def test_every_gpio_pin_error_is_said_in_vietnamese(
    vietnamese: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], gpio: str, words: str
) -> None:
    err = _check(_config(tmp_path, tail=f"gpio: {gpio}\n"), capsys)
    assert words in err, err


def test_a_missing_pin_factory_is_said_in_vietnamese(
    vietnamese: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    if importlib.util.find_spec("lgpio") is not None:
        pytest.skip("lgpio is installed here")
    err = _check(_config(tmp_path, tail="gpio: {pin_factory: lgpio}\n"), capsys)
    assert "gpio.pin_factory: không dùng được pin factory 'lgpio' (thiếu mô-đun 'lgpio')" in err
    assert "hãy cài gói Debian python3-lgpio" in err, err


@pytest.mark.parametrize(
    ("snippet", "words"),
    [
        (("", "player: {output: file}\n"), "player.wav_file: bắt buộc khi player.output là 'file'"),
        (("  password: s3cret-x\n", ""), "broker.username: bắt buộc khi đã đặt mật khẩu"),
    ],
)
def test_settings_required_by_another_are_said_in_vietnamese(
    vietnamese: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    snippet: tuple[str, str],
    words: str,
) -> None:
    broker, tail = snippet
    err = _check(_config(tmp_path, broker=broker, tail=tail), capsys)
    assert words in err, err


def test_relay_off_speaks_vietnamese(
    vietnamese: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs §7 has the technician run ``relay-off`` by hand: its line was English only."""
    path = _config(tmp_path, tail="gpio: {pin_factory: mock}\n")
    assert cli.main(["relay-off", "--config", str(path)]) == 0
    assert capsys.readouterr().out.strip() == (
        f"relay-off: rơ-le GPIO17 (mock, kích hoạt ở mức cao) đã tắt, thiết lập lấy từ {path}"
    )
    broken = _config(tmp_path, tail="gpio: {pin_factory: mock, amp_pin: 99}\nenv2: x\n")
    assert cli.main(["relay-off", "--config", str(broken), "--state-dir", "/nonexistent"]) == 1
    out = capsys.readouterr().out.strip()
    assert out.startswith(
        f"relay-off: rơ-le KHÔNG được tắt: không có thiết lập gpio dùng được trong {broken} "
        "cũng như trong "
    ), out
    assert "; cấu hình có lỗi: " in out and "(và thêm 1 lỗi khác)" in out, out


def test_the_rarer_value_slips_are_said_in_vietnamese_too(
    vietnamese: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A host written as a URL, a wrong time zone, a quiet period, an empty list of scopes, a
    path with '~': check-config said these in English under LANG=vi_VN."""
    key = base64.b64encode(bytes(range(32))).decode()
    config = tmp_path / "receiver.yaml"
    config.write_text(
        "device_id: loa-1\nenv: lab\ngroups: [g]\nbroker:\n  host: mqtt://x\n"
        "  failover: ['a:99999', 'a/b']\n"
        f"trust:\n  keys:\n    - {{id: k1, ed25519: '{key}', roles: [operator], scopes: []}}\n"
        "policy:\n  timezone: Hanoi\n  quiet_hours: [21h-5h, '05:00-05:00']\n"
        "storage: {state_dir: ~/state, cache_dir: cache}\n",
        encoding="utf-8",
    )
    assert cli.main(["check-config", str(config)]) == 78
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{config}:5:9: broker.host: 'mqtt://x': chỉ viết tên máy chủ, không kèm giao thức "
        "(scheme)",
        f"{config}:6:14: broker.failover[0]: 'a:99999': cổng phải từ 1 đến 65535",
        f"{config}:6:25: broker.failover[1]: 'a/b': chỉ viết tên máy chủ hoặc host:port, không "
        "phải một URL",
        f"{config}:9:100: trust.keys[0].scopes: cần ít nhất 1 mục",
        f"{config}:11:13: policy.timezone: 'Hanoi' không phải múi giờ IANA, chẳng hạn "
        "Asia/Ho_Chi_Minh",
        f"{config}:12:17: policy.quiet_hours[0]: '21h-5h' không phải một khoảng thời gian dạng "
        "21:30-05:00",
        f"{config}:12:25: policy.quiet_hours[1]: khoảng giờ yên lặng không được bắt đầu và kết "
        "thúc cùng một phút",
        f"{config}:13:22: storage.state_dir: '~/state': '~' không được mở rộng ở đây, hãy viết "
        "đường dẫn đầy đủ",
        f"{config}: cấu hình có lỗi, xem ở trên",
    ]


def test_the_device_key_s_refusals_are_said_in_vietnamese(vietnamese: None, tmp_path: Path) -> None:
    """``enroll`` and ``run`` named a damaged or exposed device key in English under vi."""
    key = tmp_path / "device.key"
    key.write_text("not a key\n", encoding="utf-8")
    key.chmod(0o644)
    with pytest.raises(DeviceKeyError) as exposed:
        refuse_unusable_device_key(tmp_path)
    assert str(exposed.value).startswith(
        f"khóa thiết bị {key} người khác đọc được (quyền 0644): ai đã đọc nó đều có thể ký báo "
        "cáo thay thiết bị này."
    )
    key.chmod(0o600)
    with pytest.raises(DeviceKeyError) as damaged:
        refuse_unusable_device_key(tmp_path)
    assert str(damaged.value) == f"khóa thiết bị {key} không phải khóa riêng dạng PEM"
