"""Command-line conventions shared by every ``python -m stpn_...`` entry point.

A researcher who mistypes an option or points at a missing file should read one line saying what
was wrong, not a traceback: every error ends as ``error: ...`` on stderr with exit status 2.
``--debug`` on the command line, or ``STPN_DEBUG=1`` in the environment, shows the traceback for
the rare error that is a bug of ours.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from stpn_core.allocator import retain_freed_memory

__all__ = ["ArgumentParser", "CommandError", "env_flag", "run_command"]

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """An error whose message is complete for the user as it stands (no type name is added)."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one ``error: ...`` line (exit 2), and
    which accepts ``--debug`` on every command (read by :func:`run_command`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true",
                          help="show the full traceback of an error (also STPN_DEBUG=1)")

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"error: {message} (see {self.prog} --help)\n")


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")


def env_flag(name: str) -> bool:
    """Whether the environment variable ``name`` is set to a true word (``1``, ``true``, ``yes``,
    ``on``; any case). Unset or a false word (``0``, ``false``, ...) is ``False``, so that
    ``NAME=0`` means off; anything else raises ``ValueError`` naming the variable."""
    value = os.environ.get(name, "").strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    words = "/".join(TRUE_WORDS) + " or " + "/".join(w for w in FALSE_WORDS if w)
    raise ValueError(f"{name}: expected {words}, got {os.environ[name]!r}")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, CommandError):
        return text
    if isinstance(error, KeyError):
        text = f"missing key {text}"
    if isinstance(error, (ValueError, TypeError, FileNotFoundError, PermissionError)) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def run_command(main: Callable[[Sequence[str] | None], object],
                argv: Sequence[str] | None = None) -> NoReturn:
    """Run ``main(argv)`` and exit: 0 on success (or ``main``'s integer return value), 2 with one
    ``error: ...`` line on stderr for any exception, 130 on Ctrl-C. Freed memory is kept in the
    process first (:func:`stpn_core.allocator.retain_freed_memory`): every command steps models
    that allocate the same large tensors at every step."""
    retain_freed_memory()
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        debug = "--debug" in arguments or env_flag("STPN_DEBUG")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    try:
        result = main(arguments)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as error:  # every failure of a command becomes one line; --debug shows all
        if debug:
            traceback.print_exc()
        print(f"error: {_one_line(error)}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    sys.exit(result if isinstance(result, int) else 0)
