"""The console scripts' first code: ``receiver`` and ``receiver-admin`` start here.

Importing a tool's modules takes a few hundred milliseconds on a board. A Ctrl-C in that time
arrived before any of the tool's own handling and ended it with Python's traceback; here it
ends it as the tool's own Ctrl-C does, with status 130 and no traceback. This module stands
outside the ``receiver`` package, whose ``__init__`` has imports of its own, and imports only
``sys`` and the built-in ``_signal``, so the window left is the interpreter's own start and the
script's first line, which finds this module.

The interrupt is noted as well as raised: CPython can turn a ``KeyboardInterrupt`` into another
exception when it lands inside the import system's own error path (a Ctrl-C while ``ssl``
imports came out as ``TypeError: expected a message argument``). Whatever escapes after a
Ctrl-C is that Ctrl-C's doing, and ends the tool the same way.
"""

# The C module, built in: signal.py makes its enums first, which a Ctrl-C can land in.
import _signal  # type: ignore[import-not-found]  # no stubs; used as signal.py uses it
import sys

EXIT_INTERRUPTED = 130  # as a shell reports a command ended by Ctrl-C

_interrupted: list[int] = []


def receiver() -> None:
    """``receiver``: the daemon and the board's tools (:mod:`receiver.cli`)."""
    _run("receiver.cli")


def receiver_admin() -> None:
    """``receiver-admin``: the central side's tool (:mod:`receiver.central.admin`)."""
    _run("receiver.central.admin")


def _on_interrupt(signum: int, _frame: object) -> None:
    """Python's own Ctrl-C (a KeyboardInterrupt), noted first."""
    _interrupted.append(signum)
    raise KeyboardInterrupt


def _run(module: str) -> None:
    # Only where Python's default is in place: a tool or a test that set its own keeps it.
    if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
        _signal.signal(_signal.SIGINT, _on_interrupt)
    try:
        code = __import__(module, fromlist=["main"]).main()
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except Exception:
        if not _interrupted:
            raise
        code = EXIT_INTERRUPTED
    sys.exit(code)
