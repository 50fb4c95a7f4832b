"""fedsweep's messages to the person running it: the `fedsweep` logger.

Progress (the round lines, the summary, notes) is the program's output and
goes to stdout as it is. What needs attention goes through this logger:
warnings (a client's failed attempt, a lost worker, a by-product not written),
errors (bad input, a run the fault policy stopped), and debug detail (the
worker pool, its groups) that `--verbose` shows. The command lines show it on
stderr as `<prog>: <level>: message`; a program that embeds fedsweep
configures the `fedsweep` logger as it likes (without a handler, Python shows
warnings and errors as they are).
"""

from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("fedsweep")


def one_line(exc: BaseException | str) -> str:
    """An error's text on one line (its line breaks and runs of spaces made single spaces), as bad input is reported."""
    return " ".join(str(exc).split())


class OneLine(logging.Formatter):
    """'<prog>: <level>: message' ('<prog>: message' at INFO), further lines (a traceback) indented under it."""

    def __init__(self, prog: str) -> None:
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        """The record as the command lines print it."""
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        first, *rest = record.getMessage().splitlines() or [""]
        return "\n".join([f"{self.prog}: {level}{first}", *("    " + line for line in rest if line.strip())])


class Stderr(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a message comes (pytest and notebooks replace it)."""

    @property
    def stream(self):
        """sys.stderr now."""
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        """StreamHandler sets its stream; this one has none of its own."""


def show_on_stderr(prog: str, verbose: bool = False) -> None:
    """Print the `fedsweep` logger's messages on stderr as `prog` (debug ones too with `verbose`)."""
    handler = Stderr()
    handler.setFormatter(OneLine(prog))
    LOGGER.handlers = [handler]
    LOGGER.setLevel(logging.DEBUG if verbose else logging.INFO)
    LOGGER.propagate = False
