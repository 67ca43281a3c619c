"""The benchmarks run without pytest: they share the tests' lab, not the test runner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_benchmark_imports_without_pytest() -> None:
    modules = ", ".join(
        f"bench.{path.stem}"
        for path in sorted((ROOT / "bench").glob("*.py"))
        if path.stem != "__main__"
    )
    script = (
        f"import sys\nsys.modules['pytest'] = None  # an import of it now fails\nimport {modules}\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
