"""Messages in the technician's language: gettext catalogs, English by default.

The catalogs' sources are ``receiver/locale/<lang>/LC_MESSAGES/loa-receiver.po`` (edited by
hand); the build compiles each into its ``.mo`` beside it (``setup.py``: :func:`compile_po`,
so a board needs no ``msgfmt``); a checkout run in place, which has no ``.mo``, reads the
``.po``. The language comes from the usual environment variables
(``LANGUAGE``, ``LC_ALL``, ``LC_MESSAGES``, ``LANG``): ``LANG=vi_VN.UTF-8 receiver
check-config ...`` answers in Vietnamese. A missing catalog or an untranslated message gives
the English text. Only what a technician reads at the terminal is translated: ``check-config``
(the YAML syntax messages and the usual problems of a setting: missing, unknown, duplicate, a
wrong type, a range, an id, a file that cannot be read), ``status``, ``enroll``, ``relay-off``
(run by hand too) and the start-up refusals. Log events stay English (they are searched for and
machine-read); ``relay-off``'s journal line is in the service's language (systemd's, from the
board's locale: English unless it was set otherwise). The system's reason for a file it cannot
read ("Permission denied") comes from :func:`os_reason`, in the technician's language for the
usual ones.
"""

from __future__ import annotations

import errno
import io
import os
import sys
from functools import cache
from pathlib import Path
from typing import Protocol

__all__ = [
    "DOMAIN",
    "LOCALE_DIR",
    "compile_po",
    "compiled_catalog",
    "forget_catalog",
    "gettext_",
    "os_reason",
    "read_po",
    "tolerant_output",
]

DOMAIN = "loa-receiver"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"


class _Catalog(Protocol):
    def gettext(self, message: str, /) -> str: ...


class _AsWritten:
    """The messages as written, in English: no language with a catalog was asked for."""

    @staticmethod
    def gettext(message: str, /) -> str:
        return message


@cache
def _translations() -> _Catalog:
    languages = _wanted_languages()
    if not any((LOCALE_DIR / name).is_dir() for name in languages):
        # English is asked for (a service without LANG, say): gettext is not even loaded.
        return _AsWritten()
    import gettext

    found = gettext.translation(DOMAIN, LOCALE_DIR, fallback=True)
    if isinstance(found, gettext.GNUTranslations):
        return found
    # A checkout run in place holds the catalogs' sources only (the build compiles them): read
    # the source, so that its tools speak the technician's language too.
    source = _source_catalog(languages)
    if source is None:
        return found
    try:
        return gettext.GNUTranslations(io.BytesIO(compiled_catalog(source)))
    except (OSError, ValueError, SyntaxError):  # mid-edit, unreadable: English, not a traceback
        return found


def _wanted_languages() -> list[str]:
    """The languages the environment asks for, as gettext reads them (``LANGUAGE``, ``LC_ALL``,
    ``LC_MESSAGES``, ``LANG``: the first set; ``C`` ends the list), each as ``vi_VN`` then
    ``vi`` (``vi_VN.UTF-8@x`` -> ``vi_VN``, ``vi``)."""
    for variable in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(variable)
        if value:
            break
    else:
        return []
    wanted: list[str] = []
    for language in value.split(":"):
        if language in ("C", "POSIX"):
            break
        bare = language.split("@", 1)[0].split(".", 1)[0]
        wanted += [name for name in (bare, bare.split("_", 1)[0]) if name]
    return list(dict.fromkeys(wanted))


def _source_catalog(languages: list[str]) -> Path | None:
    """The ``.po`` of the first of ``languages`` that has one, as gettext chooses a ``.mo``."""
    for name in languages:
        path = LOCALE_DIR / name / "LC_MESSAGES" / f"{DOMAIN}.po"
        if path.is_file():
            return path
    return None


def forget_catalog() -> None:
    """Let go of the language's catalog and of gettext: the daemon, once its start-up warnings
    are logged, has no message left to translate (one that comes loads them again)."""
    _translations.cache_clear()
    sys.modules.pop("gettext", None)


def gettext_(message: str) -> str:
    """``message`` in the environment's language (English when there is no catalog for it)."""
    return _translations().gettext(message)


#: The system's reasons a technician meets (a file missing, not allowed, a directory), as the
#: catalogs' messages; other reasons are told as the system tells them.
OS_REASONS = {
    errno.ENOENT: "No such file or directory",
    errno.EACCES: "Permission denied",
    errno.EPERM: "Operation not permitted",
    errno.EISDIR: "Is a directory",
    errno.ENOTDIR: "Not a directory",
    errno.EROFS: "Read-only file system",
    errno.ENOSPC: "No space left on device",
}


def os_reason(exc: OSError) -> str:
    """Why ``exc`` happened, for a technician: the system's own words (``strerror``) in English,
    the catalog's for the usual reasons in another language."""
    said = exc.strerror if isinstance(exc.strerror, str) and exc.strerror else str(exc)
    english = OS_REASONS.get(exc.errno) if exc.errno is not None else None
    if english is None:
        return said
    translated = gettext_(english)
    return said if translated == english else translated


def tolerant_output() -> None:
    """Let stdout and stderr write what their encoding cannot hold as escapes, not a traceback.

    A terminal whose locale is not UTF-8 (an old ``LANG=en_US`` in Latin-1, a serial console in
    ASCII) cannot encode Vietnamese letters, nor the dash of "OK —"; the message stays readable
    (``\\u1ea5``) and the command keeps its real exit status.
    """
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


def read_po(path: Path) -> dict[str, str]:
    """msgid -> msgstr of a ``.po`` file (single-line and continued strings; no plurals)."""
    from ast import literal_eval

    entries: dict[str, str] = {}
    current: dict[str, str] = {}
    field = ""

    def flush() -> None:
        if "msgid" in current and current.get("msgstr"):
            entries[current["msgid"]] = current["msgstr"]
        current.clear()

    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("msgid "):
            flush()
            field, rest = "msgid", line[6:]
        elif line.startswith("msgstr "):
            field, rest = "msgstr", line[7:]
        elif line.startswith('"'):
            rest = line
        else:
            raise ValueError(f"{path}: cannot read the line {raw!r}")
        current[field] = current.get(field, "") + str(literal_eval(rest))
    flush()
    return entries


def compile_po(po: Path, mo: Path) -> None:
    """Write the GNU ``.mo`` file for ``po`` (what ``msgfmt`` does, for our simple catalogs)."""
    mo.parent.mkdir(parents=True, exist_ok=True)
    mo.write_bytes(compiled_catalog(po))


def compiled_catalog(po: Path) -> bytes:
    """The GNU ``.mo`` form of ``po``."""
    from struct import pack

    entries = read_po(po)
    entries.setdefault("", "Content-Type: text/plain; charset=UTF-8\n")
    keys = sorted(entries)
    ids = [k.encode("utf-8") for k in keys]
    strs = [entries[k].encode("utf-8") for k in keys]
    header = 7 * 4
    table = header + 2 * 8 * len(keys)
    offsets: list[int] = []
    data = b""
    for item in ids + strs:
        offsets += [len(item), table + len(data)]
        data += item + b"\0"
    out = pack("<7I", 0x950412DE, 0, len(keys), header, header + 8 * len(keys), 0, 0)
    return out + pack(f"<{len(offsets)}I", *offsets) + data
