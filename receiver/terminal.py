"""What the command-line tools do when their reader goes away (``receiver status | head -4``).

The reader took what it wanted; the tool ends quietly with 141, as a shell reports a command
that SIGPIPE ended, instead of Python's ``BrokenPipeError`` traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Final

EXIT_PIPE_CLOSED: Final = 141


def discard_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's own flush at exit, of what is still
    buffered, does not fail again with "Exception ignored ... BrokenPipeError" (as the Python
    docs on SIGPIPE advise)."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (captured, replaced)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, descriptor)
    os.close(devnull)
