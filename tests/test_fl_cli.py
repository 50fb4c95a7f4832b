"""Command line: help lists the app's keys. (Bad input: the table in tests/test_bad_input.py.)"""

from __future__ import annotations

from fl_core import cli


def test_help_lists_engine_flags_and_every_run_config_key_with_default(capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for flag in [
        "--num-client-gpus",
        "--pool-size",
        "--resume",
        "--address",
        "--app",
        "--run-config",
        "--engine",
        "--fraction-evaluate",
        "--augment",
        "--strategy",
        "--fedadam.eta",
        "--dp-adaptive.clip-norm-lr",
    ]:
        assert flag in text, flag
    assert "(default: 0.1)" in text and "==SUPPRESS==" not in text
