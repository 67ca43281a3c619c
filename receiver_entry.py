"""The console scripts' first code: ``receiver`` and ``receiver-admin`` start here.

Importing a tool's modules takes a few hundred milliseconds on a board. A Ctrl-C in that time
arrived before any of the tool's own handling and ended it with Python's traceback; here it
ends it as the tool's own Ctrl-C does, with status 130 and no traceback. This module stands
outside the ``receiver`` package, whose ``__init__`` has imports of its own, and imports only
``sys``, so the window left is the interpreter's own start and the script's first line, which
finds this module.
"""

import sys

EXIT_INTERRUPTED = 130  # as a shell reports a command ended by Ctrl-C


def receiver() -> None:
    """``receiver``: the daemon and the board's tools (:mod:`receiver.cli`)."""
    _run("receiver.cli")


def receiver_admin() -> None:
    """``receiver-admin``: the central side's tool (:mod:`receiver.central.admin`)."""
    _run("receiver.central.admin")


def _run(module: str) -> None:
    try:
        code = __import__(module, fromlist=["main"]).main()
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    sys.exit(code)
