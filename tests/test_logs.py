"""The JSON log keeps a bug's traceback, on one line, bounded and escaped."""

from __future__ import annotations

import io

import structlog

from receiver import logs


class _Journal(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_a_bug_logged_in_json_keeps_its_traceback_on_one_line() -> None:
    journal = _Journal()
    logs.configure("info", "json", journal)
    try:
        try:
            raise ValueError("boom\n<3>{forged line}")
        except ValueError:
            structlog.get_logger("receiver").exception("effect_bug", effect="Play")
    finally:
        structlog.reset_defaults()
    lines = journal.getvalue().splitlines()
    assert len(lines) == 1
    assert "Traceback (most recent call last)" in lines[0]
    assert "ValueError: boom\\\\x0a<3>{forged line}" in lines[0]
    assert lines[0].startswith("<3>")
