"""fedsweep's `fedsweep` logger as the command lines show it (fl_core.logs)."""

import io
import logging
import sys

from fl_core.logs import LOGGER, show_on_stderr


def test_levels_are_labelled_and_a_traceback_is_indented_under_its_line(capsys):
    show_on_stderr("fl_core")
    LOGGER.info("its last checkpoint is in out")
    LOGGER.warning("client failed: node 1000\nTraceback (most recent call last):\n  File x\nValueError: no")
    LOGGER.error("run stopped: too few replies")
    LOGGER.debug("4 client workers ready")
    assert capsys.readouterr().err.splitlines() == [
        "fl_core: its last checkpoint is in out",
        "fl_core: warning: client failed: node 1000",
        "    Traceback (most recent call last):",
        "      File x",
        "    ValueError: no",
        "fl_core: error: run stopped: too few replies",
    ]


def test_verbose_shows_debug_messages(capsys):
    show_on_stderr("tune_search", verbose=True)
    LOGGER.debug("2 handle calls in 2 group(s): [1, 1]")
    assert capsys.readouterr().err == "tune_search: debug: 2 handle calls in 2 group(s): [1, 1]\n"
    assert LOGGER.getEffectiveLevel() == logging.DEBUG


def test_messages_go_to_the_stderr_of_the_moment(monkeypatch):
    """A handler made under one sys.stderr (an earlier test's capture) writes to the one in use when it logs."""
    first, later = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    show_on_stderr("fl_core")
    monkeypatch.setattr(sys, "stderr", later)
    LOGGER.warning("a lost worker")
    assert (first.getvalue(), later.getvalue()) == ("", "fl_core: warning: a lost worker\n")
