"""The engine end to end on a local Ray with the built-in app: learning, reproducibility, bit-identical resume,
worker-count independence, the command line, and the same app under Flower's own engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fl_core import Callback, RunSettings, cli, load_checkpoint, run_app
from fl_core.callbacks import CheckpointWriter
from fl_core.seeding import NodeSampler
from tests.conftest import model_metrics, same_arrays, tensorboard_scalars, tiny_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Recorder(Callback):
    """Keeps every round's event."""

    def __init__(self):
        self.rounds = []

    def on_round_end(self, event):
        self.rounds.append(event)


def run(*, settings=None, resume=None, callbacks=(), **run_config):
    """run_app of the built-in app on a tiny synthetic run."""
    app, rc, engine = tiny_run(settings, **run_config)
    return run_app(app, rc, engine, resume=resume, callbacks=list(callbacks))


def test_short_run_learns_and_reports_every_round(ray_local):
    recorder = Recorder()
    end = run(num_server_rounds=3, synthetic_size=800, callbacks=[recorder])
    assert [e.round for e in recorder.rounds] == [1, 2, 3] and [e.num_rounds for e in recorder.rounds] == [3] * 3
    last = end.history[-1]
    assert last["train_clients"] == 2 and last["fed_clients"] == 2 and last["train_samples"] > 0
    assert {"train_loss", "fed_loss", "fed_accuracy", "central_loss", "central_accuracy"} <= set(last)
    assert last["central_accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert last["samples_per_s"] == pytest.approx(last["train_samples"] * 1 / last["train_seconds"])
    ce = end.client_evaluation
    stats = ce["stats"]["accuracy"]
    assert ce["num_clients"] == 4 and stats["min"] <= stats["p10"] <= stats["mean"] <= stats["max"]
    assert end.state.extra["client_evaluation"]["num_clients"] == 4


def test_same_seed_same_numbers_and_another_seed_other_numbers(ray_local):
    a, b = run(augment="crop-flip"), run(augment="crop-flip")
    assert model_metrics(a.history) == model_metrics(b.history)
    assert same_arrays(a.state.arrays, b.state.arrays)
    c = run(augment="crop-flip", settings={"seed": 1})
    assert model_metrics(c.history) != model_metrics(a.history)


def test_results_do_not_depend_on_how_many_workers_run_them(ray_local):
    one = run(settings={"max_parallel_clients": 1}, fraction_train=1.0, fraction_evaluate=1.0)
    two = run(settings={"max_parallel_clients": 2}, fraction_train=1.0, fraction_evaluate=1.0)
    assert model_metrics(one.history) == model_metrics(two.history)
    assert same_arrays(one.state.arrays, two.state.arrays)
    assert one.history[0]["train_clients"] == 4  # four clients queued for one worker


@pytest.mark.parametrize(
    "strategy, dp", [("fedavg", "off"), ("fedadam", "off"), ("fedavgm", "off"), ("fedavg", "server-adaptive")]
)
def test_resume_matches_uninterrupted_run_exactly(ray_local, tmp_path, strategy, dp):
    whole = run(num_server_rounds=4, strategy=strategy, dp=dp)
    run(num_server_rounds=2, strategy=strategy, dp=dp, callbacks=[CheckpointWriter(str(tmp_path))])
    saved = load_checkpoint(str(tmp_path))
    assert saved.round == 2
    resumed = run(num_server_rounds=4, strategy=strategy, dp=dp, resume=saved)
    assert model_metrics(resumed.history) == model_metrics(whole.history)
    assert same_arrays(resumed.state.arrays, whole.state.arrays)
    assert resumed.client_evaluation == whole.client_evaluation


def test_checkpoint_every_n_rounds_and_at_the_end(ray_local, tmp_path):
    """CheckpointWriter(every=2) over 3 rounds: no checkpoint after round 1, round 2's after rounds 2 and 3, round 3's
    (with the all-node evaluation) once the run ends."""

    class Seen(Callback):
        """The checkpoint's round after every round (runs after the writer)."""

        def __init__(self):
            self.rounds = []

        def on_round_end(self, event):
            path = tmp_path / "fl_checkpoint.npz"
            self.rounds.append(load_checkpoint(str(tmp_path)).round if path.exists() else None)

    seen = Seen()
    run(num_server_rounds=3, callbacks=[CheckpointWriter(str(tmp_path), every=2), seen])
    assert seen.rounds == [None, 2, 2]
    final = load_checkpoint(str(tmp_path))
    assert final.round == 3 and final.extra["client_evaluation"]["num_clients"] == 4


def test_fractions_that_sample_the_same_count_make_the_same_run(ray_local):
    """What tune_search warns about: 0.05 and 0.1 of 20 clients both sample the 2-client minimum, same numbers."""
    runs = [
        run(settings={"pool_size": 20}, synthetic_size=800, fraction_train=f, fraction_evaluate=0.1)
        for f in (0.05, 0.1)
    ]
    assert model_metrics(runs[0].history) == model_metrics(runs[1].history)
    assert same_arrays(runs[0].state.arrays, runs[1].state.arrays)


def test_node_sampling_depends_only_on_seed_and_round():
    def picks(seed, server_round):
        sampler = NodeSampler(seed)
        sampler.start_round(server_round)
        return sampler.sample(range(1000, 1100), 10), sampler.sample(reversed(range(1000, 1100)), 5)

    assert picks(0, 3) == picks(0, 3)  # also whatever order the nodes were listed in
    assert picks(0, 3) != picks(0, 4) and picks(0, 3) != picks(1, 3)
    train, evaluate = picks(0, 3)
    assert len(set(train)) == 10 and train != evaluate[:5]


def test_the_server_sees_the_gpus_it_was_given(monkeypatch):
    """server_process shows the server what reserve_server_gpus decided: none, its own, or (None) what it has."""
    from fl_core.runner import server_process

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    for visible, inside in (("", ""), ("1", "1"), (None, "0,1")):
        with server_process(RunSettings(server_cpus=1), visible):
            assert os.environ["CUDA_VISIBLE_DEVICES"] == inside
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_cli_run_then_resume_writes_csv_json_and_checkpoint(ray_local, tmp_path, capsys):
    out = tmp_path / "run"
    base = [
        "--dataset",
        "synthetic",
        "--synthetic-size",
        "400",
        "--pool-size",
        "4",
        "--fraction-train",
        "0.5",
        "--min-evaluate-nodes",
        "1",
        "--local-epochs",
        "1",
        "--checkpoint-dir",
        str(out),
    ]
    assert cli.main(base + ["--num-server-rounds", "2"]) == 0
    text = capsys.readouterr().out
    assert "round   1/2" in text and "ETA" in text and "per-client accuracy" in text
    assert cli.main(["--resume", str(out), "--num-server-rounds", "3"]) == 0
    assert "resuming after round 2" in capsys.readouterr().out
    table = pd.read_csv(out / "metrics.csv")
    assert table["round"].tolist() == [1, 2, 3]
    assert json.loads((out / "metrics.json").read_text())[-1]["round"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["client_evaluation"]["num_clients"] == 4
    assert summary["run_config"]["num-server-rounds"] == 3 and summary["settings"]["pool_size"] == 4
    assert load_checkpoint(str(out)).round == 3
    board = tensorboard_scalars(out)  # one event file per process: the run's and its resumption's
    assert [step for step, _ in board["central_accuracy"]] == [1, 2, 3]
    assert [value for _, value in board["central_accuracy"]] == pytest.approx(table["central_accuracy"].tolist())
    assert [step for step, _ in board["train_seconds"]] == [1, 2, 3] and "round" not in board
    assert [step for step, _ in board["clients_accuracy_mean"]] == [2, 3]  # each process's all-node evaluation


FLOWER_SIDE = r"""
import json, sys
import numpy as np
from flwr.serverapp.strategy import Strategy
from fl_core import RunSettings, fuse_run_config, load_app_folder
from fl_core.flower_engine import run_with_flower

out, overrides = sys.argv[1], json.loads(sys.argv[2])
original = Strategy.start

def capture(self, *args, **kwargs):  # keep what the ServerApp's strategy.start returns
    result = original(self, *args, **kwargs)
    np.savez(out + ".npz", **{k: a.numpy() for k, a in result.arrays.items()})
    with open(out + ".json", "w") as f:
        json.dump({r: dict(m) for r, m in result.evaluate_metrics_serverapp.items()}, f)
    return result

Strategy.start = capture
app = load_app_folder(None)
run_with_flower(app, fuse_run_config(app, overrides), RunSettings(pool_size=4))
"""


def test_the_built_in_app_gives_the_same_results_under_flowers_engine(ray_local, tmp_path):
    """Every node trains and evaluates each round (so sampling agrees); only summation order may differ."""
    options = dict(fraction_train=1.0, fraction_evaluate=1.0, num_server_rounds=2, synthetic_size=400)
    ours = run(**options)
    overrides = {k.replace("_", "-"): v for k, v in options.items()}
    overrides.update({"dataset": "synthetic", "lr": 0.05, "local-epochs": 1, "eval-batch-size": 200, "seed": 0})
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    done = subprocess.run(
        [sys.executable, "-c", FLOWER_SIDE, str(tmp_path / "flower"), json.dumps(overrides)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads((tmp_path / "flower.json").read_text())
    for row in ours.history:
        assert theirs[str(row["round"])]["accuracy"] == pytest.approx(row["central_accuracy"], abs=0.02)
        assert theirs[str(row["round"])]["loss"] == pytest.approx(row["central_loss"], rel=1e-3)
    with np.load(tmp_path / "flower.npz") as arrays:
        for name, array in ours.state.arrays.items():
            np.testing.assert_allclose(arrays[name], array.numpy(), rtol=0, atol=1e-4)


def test_real_cifar10_round(ray_local, cifar_dir):
    end = run(
        dataset="cifar10",
        data_dir=cifar_dir,
        fraction_train=0.02,
        fraction_evaluate=0.02,
        num_server_rounds=1,
        settings={"pool_size": 100},
    )
    assert end.history[0]["train_clients"] == 2 and end.history[0]["train_samples"] == 900
    assert end.client_evaluation["num_clients"] == 100


def test_data_that_cannot_be_read_is_one_line_exit_2(ray_local, tmp_path, capsys):
    """The data loads while Ray starts: a broken CIFAR-10 folder still ends with one line, exit 2, nothing written."""
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"not a pickle")
    out = tmp_path / "out"
    assert cli.main(["--data-dir", str(tmp_path), "--pool-size", "4", "--checkpoint-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is incomplete" in err[0], err
    assert not out.exists()
