"""End to end on a local Ray: runs, reproducibility, bit-identical resume, queueing, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fl_core import Callback, SimConfig, load_federated_data, run_simulation
from fl_core.callbacks import TIMING_KEYS, CheckpointWriter
from fl_core import cli
from fl_core.checkpoint import load_checkpoint
from tests.conftest import tiny_config


def _model_metrics(history):
    return [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in history]


def _same_parameters(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


class Recorder(Callback):
    """Keeps every round's event."""

    def __init__(self):
        self.rounds = []

    def on_round_end(self, event):
        self.rounds.append(event)


def test_short_run_learns_and_reports_every_round(ray_local):
    recorder = Recorder()
    end = run_simulation(tiny_config(num_rounds=3, synthetic_size=800), callbacks=[recorder])
    assert [e.round for e in recorder.rounds] == [1, 2, 3]
    last = end.history[-1]
    assert last["fit_clients"] == 2 and last["train_samples"] > 0 and last["fed_val_accuracy"] is not None
    assert last["central_accuracy"] > 0.3  # 10 classes: chance is 0.1
    ce = end.client_evaluation
    assert ce["num_clients"] == 4 and ce["min"] <= ce["p10"] <= ce["mean"] <= ce["max"]


def test_same_seed_same_numbers(ray_local):
    cfg = tiny_config(augment="crop-flip")
    a, b = run_simulation(cfg), run_simulation(cfg)
    assert _model_metrics(a.history) == _model_metrics(b.history)
    assert _same_parameters(a.state.parameters, b.state.parameters)
    c = run_simulation(tiny_config(augment="crop-flip", seed=1))
    assert _model_metrics(c.history) != _model_metrics(a.history)


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam", "fedavgm"])
def test_resume_matches_uninterrupted_run_exactly(ray_local, tmp_path, strategy):
    cfg = tiny_config(num_rounds=4, strategy=strategy)
    data = load_federated_data(cfg)
    whole = run_simulation(cfg, data=data)

    first = SimConfig(**{**cfg.to_dict(), "num_rounds": 2})
    run_simulation(first, data=data, callbacks=[CheckpointWriter(str(tmp_path))])
    saved = load_checkpoint(str(tmp_path))
    assert saved.round == 2
    resumed = run_simulation(cfg, data=data, resume=saved)

    assert _model_metrics(resumed.history) == _model_metrics(whole.history)
    assert _same_parameters(resumed.state.parameters, whole.state.parameters)
    assert resumed.client_evaluation == whole.client_evaluation


def test_resumed_clients_are_told_where_the_run_picked_up(ray_local, tmp_path):
    seen = []

    class Spy(Callback):
        def on_round_end(self, event):
            seen.append(event.round)

    cfg = tiny_config(num_rounds=3)
    run_simulation(SimConfig(**{**cfg.to_dict(), "num_rounds": 1}), callbacks=[CheckpointWriter(str(tmp_path))])
    from fl_core import server as server_module

    configs = []
    original = server_module.build_strategy

    def spying_build(config, initial, evaluate_fn, fit_config_fn, evaluate_config_fn):
        def recording(server_round):
            configs.append(fit_config_fn(server_round))
            return configs[-1]

        return original(config, initial, evaluate_fn, recording, evaluate_config_fn)

    server_module.build_strategy = spying_build
    try:
        run_simulation(cfg, resume=load_checkpoint(str(tmp_path)), callbacks=[Spy()])
    finally:
        server_module.build_strategy = original
    assert seen == [2, 3]
    assert [(c["server_round"], c["resumed_from"]) for c in configs] == [(2, 1), (3, 1)]


def test_more_sampled_clients_than_workers_queue(ray_local):
    end = run_simulation(tiny_config(fraction_fit=1.0, fraction_evaluate=1.0, max_parallel_clients=1, num_rounds=1))
    assert end.history[0]["fit_clients"] == 4


def test_cli_run_then_resume_writes_csv_json_and_checkpoint(ray_local, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--dataset", "synthetic", "--synthetic-size", "400", "--pool-size", "4", "--fraction-fit", "0.5",
            "--min-evaluate-clients", "1", "--checkpoint-dir", str(out)]
    assert cli.main(base + ["--num-rounds", "2"]) == 0
    text = capsys.readouterr().out
    assert "round   1/2" in text and "ETA" in text and "per-client validation accuracy" in text
    assert cli.main(["--resume", str(out), "--num-rounds", "3"]) == 0
    assert "resuming after round 2" in capsys.readouterr().out
    table = pd.read_csv(out / "metrics.csv")
    assert table["round"].tolist() == [1, 2, 3]
    assert json.loads((out / "metrics.json").read_text())[-1]["round"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["client_evaluation"]["num_clients"] == 4
    assert load_checkpoint(str(out)).round == 3


def test_real_cifar10_round(ray_local, cifar_dir):
    cfg = SimConfig(dataset="cifar10", data_dir=cifar_dir, pool_size=100, fraction_fit=0.02, fraction_evaluate=0.02,
                    num_rounds=1)
    end = run_simulation(cfg)
    assert end.history[0]["fit_clients"] == 2 and end.history[0]["train_samples"] == 900
    assert end.client_evaluation["num_clients"] == 100
