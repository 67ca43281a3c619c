"""The console scripts: a Ctrl-C while a tool is still starting ends it with status 130 and no
traceback, as a Ctrl-C once it runs does."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import receiver_entry as entry

SCRIPTS = Path(sys.executable).parent


def test_a_ctrl_c_while_the_tool_is_imported_ends_it_with_130_and_no_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(name: str, *args: object, **kwargs: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr("builtins.__import__", interrupted)
    for script in (entry.receiver, entry.receiver_admin):
        with pytest.raises(SystemExit) as ended:
            script()
        assert ended.value.code == 130
    assert capsys.readouterr() == ("", "")


# A module whose import is interrupted where CPython then raises another exception: a Ctrl-C
# that lands while the import system builds the ImportError of ``from _ssl import RAND_egd``
# (which ssl.py expects and catches) comes out as "TypeError: expected a message argument".
SWALLOWED_INTERRUPT = """
import os, signal, time
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
except KeyboardInterrupt:
    pass
raise TypeError("expected a message argument")
"""


def test_a_ctrl_c_that_python_turned_into_another_error_during_the_import_still_ends_with_130(
    tmp_path: Path,
) -> None:
    """Seen in CI: a Ctrl-C 0.06 s into ``receiver-admin watch`` printed a TypeError traceback
    through receiver_entry, because the interrupt had become another exception."""
    (tmp_path / "interrupted_import.py").write_text(SWALLOWED_INTERRUPT, encoding="utf-8")
    root = Path(entry.__file__).parent
    code = (
        f"import sys; sys.path[:0] = [{str(tmp_path)!r}, {str(root)!r}]; import receiver_entry; "
        "receiver_entry._run('interrupted_import')"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert (run.returncode, run.stderr) == (130, "")


def test_an_error_without_a_ctrl_c_is_not_hidden(tmp_path: Path) -> None:
    (tmp_path / "broken_import.py").write_text("raise TypeError('a bug')\n", encoding="utf-8")
    root = Path(entry.__file__).parent
    code = (
        f"import sys; sys.path[:0] = [{str(tmp_path)!r}, {str(root)!r}]; import receiver_entry; "
        "receiver_entry._run('broken_import')"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert run.returncode == 1 and "TypeError: a bug" in run.stderr


def test_the_tools_pass_on_their_own_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ended:
        sys.argv = ["receiver-admin", "volume"]
        entry.receiver_admin()
    assert ended.value.code == 2  # argparse: --device and the level are missing
    assert "receiver-admin volume: error:" in capsys.readouterr().err


@pytest.mark.parametrize("tool", ["receiver", "receiver-admin"])
def test_the_installed_scripts_start_here(tool: str) -> None:
    script = SCRIPTS / tool
    assert script.is_file(), f"{script} is not installed (make bootstrap installs it)"
    assert "from receiver_entry import" in script.read_text(), script.read_text()


def test_ctrl_c_at_any_moment_of_a_watch_start_prints_no_traceback() -> None:
    # A real process, interrupted at several moments of its start (the imports take 0.2-0.3 s
    # here).
    argv = [str(SCRIPTS / "receiver-admin"), "watch", "--device", "+", "--host", "127.0.0.1"]
    argv += ["--port", "9", "--broker-timeout", "1"]  # nothing listens on the discard port
    seen = []
    for delay in (0.0, 0.02, 0.04, 0.06, 0.1, 0.15, 0.2, 0.3):
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        # A Ctrl-C that lands while the interpreter starts, or while the script's first line
        # finds receiver_entry, is Python's own (a loaded machine stretches that window past
        # 0.1 s): its traceback goes no further than that line, into no code of ours.
        ours = [line for line in err.splitlines() if "/receiver/" in line or "entry.py" in line]
        assert ours == [], f"after {delay} s:\n{err}"
        seen.append(process.returncode)
    # Interrupted while importing: 130. (Also seen: 0, watch had begun and nothing was awaited;
    # 3, the broker was refused first; -2 and 1, the interpreter's own start.)
    assert 130 in seen, seen
