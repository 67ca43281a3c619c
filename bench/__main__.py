"""Run the benchmarks: ``python -m bench [NAME ...]`` (``make bench`` runs them all).

Every module ``bench/<name>.py`` whose name does not start with ``_`` is a benchmark: it has a
``main() -> int`` that measures, prints its figures beside a floor measured in the same run, and
returns 0, or non-zero when it could not measure. This runner imports them in alphabetical order
and calls each ``main()`` in turn, one at a time (running them side by side would make each the
other's noise). Give names to run only those.

How to read the output: each benchmark's own docstring says what it measures; this runner only
frames them (``=== bench.<name> ===``) and says how long each took. A benchmark that fails does
not stop the others; the exit status is 1 if any failed. No benchmark asserts a time.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path


def discover() -> list[str]:
    """The benchmark modules in this folder, alphabetically."""
    folder = Path(__file__).parent
    return sorted(
        module.name
        for module in pkgutil.iter_modules([str(folder)])
        if not module.ispkg and not module.name.startswith("_")
    )


def run_one(name: str) -> int:
    """Import ``bench.<name>`` and call its ``main()``; any failure becomes a non-zero status."""
    try:
        module = importlib.import_module(f"bench.{name}")
        entry = getattr(module, "main", None)
        if not callable(entry):
            print(f"bench.{name} has no main() -> int", file=sys.stderr)
            return 1
        status = entry()
    except SystemExit as exc:  # argparse and friends
        status = exc.code if isinstance(exc.code, int) else 1
    except Exception:
        traceback.print_exc()
        return 1
    return status if isinstance(status, int) else 1


def main(argv: Sequence[str] = ()) -> int:
    available = discover()
    names = list(argv) or available
    unknown = [name for name in names if name not in available]
    if unknown:
        print(
            f"no such benchmark: {', '.join(unknown)} (there are: {', '.join(available)})",
            file=sys.stderr,
        )
        return 2
    failed: list[str] = []
    for name in names:
        print(f"=== bench.{name} ===", flush=True)
        began = time.monotonic()
        status = run_one(name)
        took = time.monotonic() - began
        outcome = "done" if status == 0 else f"FAILED (status {status})"
        print(f"=== bench.{name}: {outcome} in {took:.1f} s ===\n", flush=True)
        if status != 0:
            failed.append(name)
    if failed:
        print(f"benchmarks that could not measure: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
