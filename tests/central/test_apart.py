"""The board's daemon and the operator's tool are two programs: the daemon never loads the other."""

from __future__ import annotations

import subprocess
import sys


def test_the_daemon_never_imports_the_central_package() -> None:
    probe = (
        "import sys\n"
        "import receiver.cli, receiver.runtime, receiver.assembly, receiver.status\n"
        "leaked = sorted(m for m in sys.modules if m.startswith('receiver.central'))\n"
        "print(','.join(leaked))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "", f"the daemon loads {done.stdout.strip()}"
