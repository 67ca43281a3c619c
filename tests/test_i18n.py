"""The Vietnamese catalog: complete for every message a technician reads, placeholders intact,
and compiled by our own msgfmt into a file that Python's gettext reads back."""

from __future__ import annotations

import ast
import gettext
import string
from pathlib import Path

import pytest

from receiver.i18n import DOMAIN, compile_po, read_po

ROOT = Path(__file__).resolve().parents[1]
VI = ROOT / "receiver" / "locale" / "vi" / "LC_MESSAGES" / f"{DOMAIN}.po"
TRANSLATED = ("receiver/cli.py", "receiver/config.py", "receiver/status.py")
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
    wanted = [*marked_messages(), *STATUS_LABELS]
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
