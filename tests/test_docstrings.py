"""The code names only documents the project has, and every module says what it owns."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
SOURCES: Final = sorted((ROOT / "receiver").rglob("*.py"))
DOC_NAME: Final = re.compile(r"\b(?:docs/)?[A-Za-z_]+\.md\b")


def test_every_document_the_code_names_exists() -> None:
    missing = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in SOURCES
        for name in DOC_NAME.findall(path.read_text(encoding="utf-8"))
        if not (ROOT / name).exists()
    ]
    assert missing == []


def test_every_module_has_a_docstring() -> None:
    bare = [
        str(path.relative_to(ROOT))
        for path in SOURCES
        if path.name != "__init__.py" and not ast.get_docstring(ast.parse(path.read_text("utf-8")))
    ]
    assert bare == []
