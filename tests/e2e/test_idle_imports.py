"""What the running daemon holds at idle: modules it needs only for rare work stay unloaded.

Every imported module stays resident for the daemon's life (bench/footprint.py measures what
that costs). The daemon is run for real (``receiver run`` on a real broker) in a process that
also lists its modules once the daemon has published its state, then stops it with SIGTERM.
"""

from __future__ import annotations

import os
import subprocess
import sys

from receiver.status import status_path
from tests.e2e.conftest import Site

# Run as ``python -c PROBE CONFIG STATUS_FILE OUT``: the daemon in the main thread, as usual.
PROBE = """
import os, signal, sys, threading, time
from pathlib import Path

config, status, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])

def list_modules_once_idle():
    deadline = time.monotonic() + 30
    while not status.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # connected and idle for a moment
    import gc, types
    # Also the modules still alive though gone from sys.modules: one that a package's attribute
    # or another module's global still holds is as resident as before it was "forgotten".
    alive = {o.__name__ for o in gc.get_objects() if isinstance(o, types.ModuleType)}
    out.write_text(" ".join(sorted(set(sys.modules) | alive)))
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=list_modules_once_idle, daemon=True).start()
from receiver.cli import main
sys.exit(main(["run", "--config", config]))
"""


def idle_modules(site: Site, *, lang: str = "C.UTF-8") -> set[str]:
    """The modules of a daemon run with ``LANG=lang`` (and no other locale variable): those in
    ``sys.modules`` and those still alive outside it."""
    env = {k: v for k, v in os.environ.items() if k not in ("LANGUAGE", "LC_ALL", "LC_MESSAGES")}
    env["LANG"] = lang
    out = site.root / "modules.txt"
    status = status_path(site.root / "state")  # written once the daemon publishes its state
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(site.config), str(status), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert out.exists(), f"the daemon never got idle:\n{result.stdout[-3000:]}{result.stderr}"
    return set(out.read_text().split())


def test_the_idle_daemon_does_not_load_asyncio_nor_the_key_serialisation_formats(
    site: Site,
) -> None:
    """structlog imports asyncio for async logging methods the daemon never calls (asyncio and
    what it pulls in hold about 2 MiB); the device key is read without cryptography's
    serialisation package (its RSA, DSA, EC, DH and SSH modules hold about 1 MiB)."""
    loaded = idle_modules(site)
    assert "receiver.runtime" in loaded and "structlog" in loaded  # it did run
    assert not {m for m in loaded if m.startswith(("asyncio.", "_asyncio"))}
    assert not {m for m in loaded if m.startswith("cryptography.hazmat.primitives.serialization")}


def test_the_idle_daemon_has_let_go_of_argparse_and_gettext(site: Site) -> None:
    """The command line is parsed once, at start: argparse and the parser it built (about
    0.3 MiB) are not held for the daemon's life. Nor is gettext (argparse imports it, and the
    config's words asked for it), nor a language's catalog once the start's warnings are
    logged (0.1 MiB for Vietnamese). Nor the rules that read and checked the config."""
    for lang in ("C.UTF-8", "en_GB.UTF-8", "vi_VN.UTF-8"):
        loaded = idle_modules(site, lang=lang)
        assert "receiver.runtime" in loaded  # it did run
        assert "argparse" not in loaded and "receiver.cli_parser" not in loaded, lang
        assert "gettext" not in loaded, lang
        # Nor the config's reading and checking rules, once the config is read (0.2 MiB).
        assert "receiver.config" not in loaded and "receiver.config_model" in loaded
