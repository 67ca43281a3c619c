"""The two tools' argument parser: a typo is answered with the closest name, and argparse's own
words come in the technician's language.

``receiver stauts`` is refused with "did you mean 'status'?", ``receiver status --confg`` with
"did you mean '--config'?", each under the usage of the command typed (a subcommand refuses an
option it does not know itself, instead of leaving it to the whole tool's parser). The
technician's tool (``receiver``) also says argparse's own words ("usage:", "error:", "invalid
choice", the help's headings) through its catalog (:func:`speaking_argparse`), so a ``LANG=vi_VN``
board answers a slip in Vietnamese like everything else it prints.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, NoReturn

#: argparse's own messages that the tools can print (Python 3.11's wording); each is in the
#: technician's catalog (tests/test_i18n.py checks it).
ARGPARSE_MESSAGES: Final = (
    "usage: ",
    "positional arguments",
    "options",
    "show this help message and exit",
    "show program's version number and exit",
    "%(prog)s: error: %(message)s\n",
    "argument %(argument_name)s: %(message)s",
    "invalid choice: %(value)r (choose from %(choices)s)",
    "invalid %(type)s value: %(value)r",
    "unrecognized arguments: %s",
    "the following arguments are required: %s",
    "expected one argument",
    "ambiguous option: %(option)s could match %(matches)s",
)


@contextlib.contextmanager
def speaking_argparse(gettext: Callable[[str], str]) -> Iterator[None]:
    """Within it, argparse says its own words through ``gettext`` (it looks its ``_`` up when it
    speaks, so what is built and parsed within uses it); its own hook is put back after."""
    own = vars(argparse)["_"]
    setattr(argparse, "_", gettext)  # noqa: B010 - argparse's module-level translation hook
    try:
        yield
    finally:
        setattr(argparse, "_", own)  # noqa: B010


class Wrapped(argparse.HelpFormatter):
    """Help lines wrapped at spaces only, so that a path such as
    ``/etc/loa-receiver/receiver.yaml`` is never split at its hyphen."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class Formatter(argparse.RawDescriptionHelpFormatter, Wrapped):
    """A tool's own help: its description as written (its paragraphs kept), its help lines as
    :class:`Wrapped` wraps them."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors name the closest subcommand or option to a typo.

    :attr:`hint` is said after the closest name (the technician's tool gives its translation,
    :meth:`saying`). Subparsers are of the same class, so a subcommand refuses an option it does
    not know under its own usage.
    """

    hint: str = "did you mean {name!r}?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", Wrapped)
        super().__init__(*args, **kwargs)
        self._words: list[str] = []

    @classmethod
    def saying(cls, hint: str) -> type[Parser]:
        """This parser, with ``hint`` (``{name!r}`` in it) after the closest name."""
        return type(cls.__name__, (cls,), {"hint": hint})

    def add_subparsers(self, **kwargs: Any) -> Any:
        kwargs.setdefault("parser_class", type(self))
        return super().add_subparsers(**kwargs)

    def parse_known_args(  # type: ignore[override]  # the one form the tools and argparse call
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._words = list(sys.argv[1:] if args is None else args)
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and self._subcommands() is None:  # a subcommand: its options are its own
            said = vars(argparse)["_"]("unrecognized arguments: %s")  # as argparse says it
            self.error(said % " ".join(extras))
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        typed, close = self._closest()
        if close is not None:
            hint = self.hint.format(name=close)
            # "required: --host; --hots: did you mean '--host'?" (an unknown word is named
            # by argparse's own message; a required option's is not)
            message = f"{message}; {hint}" if typed in message else f"{message}; {typed}: {hint}"
        super().error(message)

    def _subcommands(self) -> dict[str, argparse.ArgumentParser] | None:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                choices: dict[str, argparse.ArgumentParser] = action.choices
                return choices
        return None

    def _closest(self) -> tuple[str, str | None]:
        """The first word typed that names nothing here (a subcommand, or an option: ``--confg``
        or ``--confg=x``), and the name closest to it (None when nothing is close)."""
        subcommands = self._subcommands()
        options = [o for o in self._option_string_actions if o.startswith("--")]
        for word in self._words:
            if word.startswith("--"):
                name = word.partition("=")[0]
                if name in self._option_string_actions:
                    continue
                return name, _typo_of(name, options)
            if subcommands is not None and not word.startswith("-"):
                if word in subcommands:
                    break  # the subcommand's own parser speaks of its words
                return word, _typo_of(word, list(subcommands))
        return "", None


def _typo_of(word: str, names: list[str]) -> str | None:
    """The one of ``names`` that ``word`` is a slip of the fingers for: about as long, most of
    its letters in order. A word that a name merely begins with is no slip (``--broker``, for
    ``--host``, is not ``--broker-timeout``, and a guess there would mislead) unless it is one
    letter short of it (``statu``, ``--ou``)."""
    import difflib  # only for a slip: the running daemon never holds it

    def slip(name: str) -> bool:
        cut_short = name.startswith(word) and len(name) - len(word) > 1
        return abs(len(name) - len(word)) <= 2 and not cut_short

    candidates = [n for n in names if slip(n)]
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.75)
    return close[0] if close else None
