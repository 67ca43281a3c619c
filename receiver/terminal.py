"""What the command-line tools owe the terminal they print on.

A reader that goes away (``receiver status | head -4``) took what it wanted: the tool ends
quietly with 141, as a shell reports a command that SIGPIPE ended, instead of Python's
``BrokenPipeError`` traceback. And text that came from the network (a device's state, a
station's error) reaches the terminal only as one line of text (:func:`one_line`): an escape
sequence in it could rewrite what the technician or operator reads.
"""

from __future__ import annotations

import os
import sys
import unicodedata
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


def one_line(text: str, limit: int = 200) -> str:
    """``text`` as one line of at most ``limit`` characters (an ellipsis where it was cut): a line
    break or tab is a space (the spaces that align columns are kept), and any other control or
    format character (escape, bell, bidi override) shows as ``?``."""
    text = "".join(" " if c.isspace() else c for c in unicodedata.normalize("NFC", text)).strip()
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return "".join("?" if unicodedata.category(c) in ("Cc", "Cf") else c for c in text)
