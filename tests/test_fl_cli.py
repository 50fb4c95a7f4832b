"""Command line: bad input is refused with one line and exit 2 before Ray starts."""

from __future__ import annotations


import pytest

from fl_core import cli
from fl_core.checkpoint import save_checkpoint
from tests.test_fl_checkpoint import _state

SMALL = ["--dataset", "synthetic", "--synthetic-size", "200", "--pool-size", "4"]


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the CLI gets as far as starting Ray."""
    import ray

    def forbidden(*a, **k):
        raise AssertionError("ray.init was called for bad input")

    monkeypatch.setattr(ray, "init", forbidden)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fraction-fit", "0"], "--fraction-fit must be in (0, 1]"),
        (["--fraction-fit", "1.5"], "--fraction-fit must be in (0, 1]"),
        (["--min-fit-clients", "9"], "smaller than --min-fit-clients 9"),
        (["--alpha", "0", "--partition", "dirichlet"], "--alpha must be a positive number"),
        (["--val-ratio", "1"], "--val-ratio must be in [0, 1)"),
        (["--val-ratio", "-0.1"], "--val-ratio must be in [0, 1)"),
        (["--num-client-cpus", "4096"], "more than this machine's"),
        (["--strategy", "fedmagic"], "--strategy must be one of"),
        (["--partition", "random"], "--partition must be one of"),
        (["--data-dir", "/nonexistent/cifar"], "--data-dir /nonexistent/cifar does not exist"),
    ],
)
def test_bad_input_one_line_exit_2(args, message, capsys, tmp_path, no_ray):
    out_dir = tmp_path / "out"
    assert cli.main(SMALL + args + ["--checkpoint-dir", str(out_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out_dir.exists()


def test_corrupt_checkpoint_is_refused(tmp_path, capsys, no_ray):
    (tmp_path / "fl_checkpoint.npz").write_bytes(b"garbage")
    assert cli.main(["--resume", str(tmp_path)]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_incompatible_checkpoint_is_refused_and_kept(tmp_path, capsys, no_ray):
    path = save_checkpoint(_state(), str(tmp_path))
    before = open(path, "rb").read()
    assert cli.main(["--resume", str(tmp_path), "--pool-size", "8"]) == 2
    assert "other settings (pool_size" in capsys.readouterr().err
    assert open(path, "rb").read() == before


def test_existing_run_is_not_overwritten(tmp_path, capsys, no_ray):
    path = save_checkpoint(_state(), str(tmp_path))
    before = open(path, "rb").read()
    assert cli.main(SMALL + ["--checkpoint-dir", str(tmp_path)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert open(path, "rb").read() == before


def test_help_lists_every_flag_with_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ["--num-client-gpus", "--fraction-evaluate", "--augment", "--resume", "--address", "--strategy"]:
        assert flag in text
    assert "(default: 0.1)" in text and "==SUPPRESS==" not in text
