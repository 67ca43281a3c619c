"""The core stays pure: it imports no clock, I/O, thread, logging or adapter library.

Read from the source (not by importing it), so a forbidden import fails here even if no test
happens to run the line. The list is of what the core may use, so anything new must be judged
and added on purpose.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

import receiver.core

CORE: Final = Path(receiver.core.__file__).parent

ALLOWED: Final = frozenset(
    {
        "__future__",
        "typing",
        "dataclasses",
        # The records' shared methods (receiver/core/record.py): attribute getters and repr.
        "operator",
        "reprlib",
        "collections",
        "enum",
        "re",
        "math",
        "json",
        "base64",
        "binascii",
        "hashlib",
        "ipaddress",
        "urllib.parse",
        # Calendar arithmetic only: reading the clock through it is refused below.
        "datetime",
        # The time zone database is read-only data installed with the system.
        "zoneinfo",
        # Ed25519 verification: computation on bytes.
        "cryptography",
        "receiver.core",
    }
)
# Calls that would read the clock or the outside world even through an allowed module.
FORBIDDEN_CALLS: Final = frozenset({"now", "utcnow", "today", "open", "print", "input"})


def _allowed(module: str) -> bool:
    return any(module == ok or module.startswith(ok + ".") for ok in ALLOWED)


def impurities(source: str) -> list[str]:
    """What in ``source`` the core may not do: imports outside ``ALLOWED``, forbidden calls."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if not _allowed(a.name)]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            if node.level == 0 and not _allowed(module):
                found.append(f"from {module} import ...")
            elif node.level > 0 and module.startswith(".."):
                found.append(f"from {module} import ... (outside the core)")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in FORBIDDEN_CALLS:
                found.append(f"call to {name}() on line {node.lineno}")
    return found


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_the_core_imports_no_clock_io_thread_logging_or_adapter(path: Path) -> None:
    assert impurities(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "import logging",
        "import structlog",
        "import threading",
        "from os import path",
        "import sqlite3",
        "from pathlib import Path",
        "import paho.mqtt.client",
        "import vlc",
        "from gpiozero import OutputDevice",
        "from receiver.store import Store",
        "from receiver import clock",
        "from datetime import datetime\nx = datetime.now()",
        "x = open('f')",
    ],
)
def test_the_check_catches_what_it_is_for(source: str) -> None:
    assert impurities(source) != []


def test_the_core_tier_runs_without_the_adapters_libraries() -> None:
    """Every core test module imports with paho, libVLC's binding and gpiozero absent, so the
    core tier needs none of them installed. (Its settings come through the config's parser,
    so PyYAML it does need.)"""
    modules = ", ".join(
        f"tests.core.{path.stem}" for path in sorted(Path(__file__).parent.glob("*.py"))
    )
    script = (
        "import sys\n"
        "for name in ('paho', 'vlc', 'gpiozero'):\n"
        "    sys.modules[name] = None  # an import of it now fails\n"
        f"import tests.conftest, {modules}\n"
    )
    root = Path(__file__).resolve().parent.parent.parent
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_every_core_module_imports_on_its_own() -> None:
    """Whichever core module a program imports first, the import works (no import cycle)."""
    names = [f"receiver.core.{path.stem}" for path in sorted(CORE.glob("*.py"))]
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m.startswith('receiver')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    root = Path(__file__).resolve().parent.parent.parent
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
