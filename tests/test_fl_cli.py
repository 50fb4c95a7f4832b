"""Command line: bad input is refused with one line and exit 2 before Ray starts; help lists the app's keys."""

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


def _app_folder(tmp_path, pyproject: str | None) -> str:
    folder = tmp_path / "app"
    folder.mkdir()
    if pyproject is not None:
        (folder / "pyproject.toml").write_text(pyproject)
    return str(folder)


BAD_INPUT = [
    (["--fraction-train", "0"], "fraction-train must be in (0, 1]"),
    (["--fraction-train", "1.5"], "fraction-train must be in (0, 1]"),
    (["--min-train-nodes", "9"], "smaller than min-train-nodes 9"),
    (["--alpha", "0", "--partition", "dirichlet"], "alpha must be a positive number"),
    (["--val-ratio", "1"], "val-ratio must be in [0, 1)"),
    (["--val-ratio", "-0.1"], "val-ratio must be in [0, 1)"),
    (["--num-server-rounds", "0"], "num-server-rounds must be at least 1"),
    (["--num-client-cpus", "4096"], "more than this machine's"),
    (["--pool-size", "0"], "--pool-size must be at least 1"),
    (["--strategy", "fedmagic"], "strategy must be one of"),
    (["--dp", "sometimes"], "dp must be one of"),
    (["--dp", "server-fixed", "--dp-fixed.clipping-norm", "0"], "refused its parameters"),
    (["--partition", "random"], "partition must be one of"),
    (["--data-dir", "/nonexistent/cifar"], "data-dir /nonexistent/cifar does not exist"),
    (["--lr", "fast"], "run-config key lr expects a number"),
    (["--local-epochs", "1.5"], "run-config key local-epochs expects an integer"),
    (["--run-config", "lr=fast"], "--run-config"),
    (["--run-config", "nosuchkey=1"], "'nosuchkey' is not a run-config key"),
    (["--fraction-fit", "0.2"], "--fraction-fit is now --fraction-train"),
    (["--num-rounds", "3"], "--num-rounds is now --num-server-rounds"),
    (["--model", "cnn"], "--model was removed"),
    (["--seed", "1", "--run-config", "seed=2"], "disagree"),
    (["--app", "/nonexistent/app"], "is not a folder"),
    (["--engine", "tensorflow"], "invalid choice"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be at least 1"),
]


@pytest.mark.parametrize("args, message", BAD_INPUT)
def test_bad_input_one_line_exit_2(args, message, capsys, tmp_path, no_ray):
    out_dir = tmp_path / "out"
    assert cli.main(SMALL + args + ["--checkpoint-dir", str(out_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out_dir.exists()


@pytest.mark.parametrize("pyproject, message", [
    (None, "has no pyproject.toml"),
    ("[project\nname=", "cannot read pyproject.toml"),
    ('[project]\nname = "x"\nversion = "1"\n', "Missing [tool.flwr.app] section"),
    ('[project]\nname = "x"\nversion = "1"\n[tool.flwr.app]\npublisher = "p"\n[tool.flwr.app.components]\n'
     'serverapp = "nowhere.server:app"\nclientapp = "nowhere.client:app"\n', "nowhere"),
])
def test_bad_app_folder_one_line_exit_2(pyproject, message, capsys, tmp_path, no_ray):
    assert cli.main(["--app", _app_folder(tmp_path, pyproject), "--checkpoint-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_corrupt_checkpoint_is_refused(tmp_path, capsys, no_ray):
    (tmp_path / "fl_checkpoint.npz").write_bytes(b"garbage")
    assert cli.main(["--resume", str(tmp_path)]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_incompatible_checkpoint_is_refused_and_kept(tmp_path, capsys, no_ray):
    path = save_checkpoint(_state(), str(tmp_path))
    before = open(path, "rb").read()
    assert cli.main(["--resume", str(tmp_path), "--pool-size", "8"]) == 2
    assert "other settings (pool_size" in capsys.readouterr().err
    assert cli.main(["--resume", str(tmp_path), "--lr", "0.5"]) == 2
    assert "other settings (lr" in capsys.readouterr().err
    assert open(path, "rb").read() == before


def test_existing_run_is_not_overwritten(tmp_path, capsys, no_ray):
    path = save_checkpoint(_state(), str(tmp_path))
    before = open(path, "rb").read()
    assert cli.main(SMALL + ["--checkpoint-dir", str(tmp_path)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert open(path, "rb").read() == before


def test_checkpoint_dir_that_is_a_file_is_refused(tmp_path, capsys, no_ray):
    target = tmp_path / "file"
    target.write_text("x")
    assert cli.main(SMALL + ["--checkpoint-dir", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err and target.read_text() == "x"


def test_help_lists_engine_flags_and_every_run_config_key_with_default(capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for flag in ["--num-client-gpus", "--pool-size", "--resume", "--address", "--app", "--run-config", "--engine",
                 "--fraction-evaluate", "--augment", "--strategy", "--fedadam.eta", "--dp-adaptive.clip-norm-lr"]:
        assert flag in text, flag
    assert "(default: 0.1)" in text and "==SUPPRESS==" not in text
