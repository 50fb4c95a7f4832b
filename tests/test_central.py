"""Central evaluation on the client workers (same numbers for any number of workers, and as one pass in one
process), and evaluation every N rounds."""

from __future__ import annotations

import pytest
import torch
from flwr.app import MetricRecord

from fl_core import Callback, RunSettings, ShardedEvaluation, run_app
from fl_core.callbacks import ProgressPrinter
from fl_core.central import is_due
from tests.conftest import model_metrics, same_arrays, tiny_run

# 400 synthetic training images make an 80-image test set: batches of 16 are 5 shards.
SHARDED = dict(eval_batch_size=16)


class Stop(Exception):
    """Ends a run after a given round, as a kill would (its checkpoint written)."""


def run(*, settings=None, resume=None, callbacks=(), **run_config):
    """run_app of the built-in app on conftest's tiny synthetic run."""
    app, rc, engine = tiny_run(settings, **{**SHARDED, **run_config})
    return run_app(app, rc, engine, resume=resume, callbacks=list(callbacks))


def central(history: list[dict]) -> list[tuple]:
    """Each round's (central_loss, central_accuracy, central_round)."""
    return [(row["central_loss"], row["central_accuracy"], row["central_round"]) for row in history]


def one_pass(end, run_config: dict) -> tuple[float, float]:
    """The final model on the whole test set in one pass, here, on one thread: the evaluation before sharding."""
    from cifar10_app.data import load_data
    from cifar10_app.task import Net, evaluate, place_model, to_tensor

    data = load_data(run_config, 4)
    model = place_model(Net(), "cpu")
    model.load_state_dict(end.state.arrays.to_torch_state_dict())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return evaluate(model, to_tensor(data.test_images), torch.tensor(data.test_labels), 16)
    finally:
        torch.set_num_threads(threads)


def test_sharded_central_evaluation_is_the_same_for_any_workers_and_as_one_pass(ray_local):
    """Shards on 1 or 2 workers, or all in the server (1 thread, as each worker has): the same bits, and the same
    as one pass over the test set in one process."""
    options = dict(fraction_train=1.0, fraction_evaluate=1.0)
    one = run(settings={"max_parallel_clients": 1, "central_eval_on": "workers"}, **options)
    two = run(settings={"max_parallel_clients": 2, "central_eval_on": "workers"}, **options)
    server = run(settings={"max_parallel_clients": 2, "central_eval_on": "server", "server_cpus": 1}, **options)
    assert model_metrics(one.history) == model_metrics(two.history) == model_metrics(server.history)
    assert same_arrays(one.state.arrays, two.state.arrays)
    _, run_config, _ = tiny_run(**SHARDED, **options)
    loss, accuracy = one_pass(two, run_config)
    assert (two.history[-1]["central_loss"], two.history[-1]["central_accuracy"]) == (loss, accuracy)


def test_evaluating_every_n_rounds_carries_the_latest_and_changes_no_training(ray_local):
    every = run(num_server_rounds=5)
    sparse = run(num_server_rounds=5, settings={"central_eval_every": 2})
    assert same_arrays(every.state.arrays, sparse.state.arrays)
    assert [row["train_loss"] for row in every.history] == [row["train_loss"] for row in sparse.history]
    rows = central(every.history)
    assert [r[2] for r in rows] == [1, 2, 3, 4, 5]
    evaluated = {r[2]: r for r in rows}
    # rounds 2 and 4, and the last; round 1 carries the initial model's (round 0), round 3 carries round 2's
    assert [r[2] for r in central(sparse.history)] == [0, 2, 2, 4, 5]
    assert central(sparse.history)[1:] == [evaluated[2], evaluated[2], evaluated[4], evaluated[5]]


def test_a_resumed_sparse_run_ends_as_an_uninterrupted_one(ray_local, tmp_path):
    from fl_core import load_checkpoint
    from fl_core.callbacks import CheckpointWriter

    class StopAfter(Callback):
        def on_round_end(self, event):
            if event.round == 1:
                raise Stop

    settings = {"central_eval_every": 3}
    whole = run(num_server_rounds=4, settings=settings)
    with pytest.raises(Stop):
        run(num_server_rounds=4, settings=settings, callbacks=[CheckpointWriter(str(tmp_path)), StopAfter()])
    saved = load_checkpoint(str(tmp_path))
    assert saved.round == 1 and saved.history[0]["central_round"] == 0  # it carries the initial evaluation
    resumed = run(num_server_rounds=4, settings=settings, resume=saved)
    assert model_metrics(resumed.history) == model_metrics(whole.history)
    assert [row["central_round"] for row in resumed.history] == [0, 0, 3, 4]
    assert same_arrays(resumed.state.arrays, whole.state.arrays)


def test_the_progress_line_shows_central_metrics_only_when_measured():
    from fl_core.callbacks import RoundEnd

    lines = []
    printer = ProgressPrinter(lines.append)
    base = {"train_loss": 2.0, "central_accuracy": 0.25, "seconds": 1.0}
    printer.on_round_end(RoundEnd(1, 4, 1, {"round": 1, **base, "central_round": 0}, None))
    printer.on_round_end(RoundEnd(2, 4, 1, {"round": 2, **base, "central_round": 2}, None))
    assert "acc" not in lines[0] and "train-loss 2.0000" in lines[0]
    assert "acc 0.2500" in lines[1]


def test_the_summary_line_names_the_apps_own_central_metric():
    from fl_core.callbacks import RunEnd

    def summary(history):
        lines = []
        ProgressPrinter(lines.append).on_run_end(RunEnd(history, {}, 3.0, None))
        return lines[0]

    rounds = [
        {"round": 1, "central_accuracy": 0.5, "central_loss": 1.2},
        {"round": 2, "central_accuracy": 0.4, "central_loss": 1.0},
    ]
    assert summary(rounds) == "done: 2 rounds in 3.0 s; final test accuracy 0.4000 (best 0.5000 at round 1)"
    mse = [{"round": 1, "central_mse_loss": 0.3}, {"round": 2, "central_mse_loss": 0.2}]
    assert summary(mse) == "done: 2 rounds in 3.0 s; final central_mse_loss 0.2000 (best 0.2000 at round 2)"
    assert summary([{"round": 1, "train_loss": 1.0}]) == "done: 1 rounds in 3.0 s"


def test_auto_puts_the_shards_where_there_is_more_compute():
    from fl_core.central import place

    def where(workers, server_threads, **settings):
        return place(RunSettings(**settings), workers, server_threads)

    assert where(2, 2) == "server"  # one machine: the server has every core the workers have
    assert where(4, 1) == "workers"  # a Tune trial's 1-CPU server bundle, 4 client bundles
    assert where(16, 8) == "workers"  # a driver of 8 cores on a cluster
    assert where(1, 2, num_client_gpus=0.5) == "workers"  # the workers have a GPU, the server none
    assert where(1, 2, num_client_gpus=0.5, server_gpus=1) == "server"
    assert where(4, 1, central_eval_on="server") == "server" and where(1, 8, central_eval_on="workers") == "workers"


def test_is_due_every_n_and_the_last():
    assert [r for r in range(1, 8) if is_due(r, 7, 3)] == [3, 6, 7]
    assert [r for r in range(1, 4) if is_due(r, 3, 1)] == [1, 2, 3]


def _score(server_round, arrays, shard):
    return {"sum": float(shard) + 0.1, "count": 1}


def _combine(results):
    total = 0.0
    for r in results:
        total += r["sum"]
    return MetricRecord({"mean": total / len(results)})


def test_a_sharded_evaluation_is_an_ordinary_evaluate_fn_elsewhere():
    """Under Flower's engine it is called as evaluate_fn(server_round, arrays): every shard here, in order."""
    evaluation = ShardedEvaluation(_score, 4, _combine)
    assert evaluation(3, None)["mean"] == pytest.approx((0.1 + 1.1 + 2.1 + 3.1) / 4)
    with pytest.raises(ValueError, match="at least one shard"):
        ShardedEvaluation(_score, 0, _combine)


def test_settings_reject_an_unknown_place_and_a_zero_interval():
    from fl_core import ConfigError

    with pytest.raises(ConfigError, match="--central-eval-on must be one of auto, workers, server"):
        RunSettings(central_eval_on="gpu").validate()
    with pytest.raises(ConfigError, match="--central-eval-every must be at least 1"):
        RunSettings(central_eval_every=0).validate()


@pytest.mark.filterwarnings("ignore:No artists with labels")  # Axes.plot is replaced: nothing to put in a legend
def test_the_sweeps_rounds_table_keeps_central_round_and_its_plot_only_measured_rounds(tmp_path, monkeypatch):
    """rounds.csv must say which rounds carry a central value, and the metric's plot must leave those out."""
    import pandas as pd

    from fl_sweep import report

    class Result:
        """What rounds_table reads of a Tune result."""

        metrics_dataframe = pd.DataFrame(
            {
                "round": [1, 2, 3],
                "central_accuracy": [0.1, 0.1, 0.3],
                "central_round": [0, 2, 3],
                "seconds": [1.0, 1.0, 1.0],
            }
        )
        config = {}
        path = str(tmp_path / "trial_0")

    monkeypatch.setattr(report, "_trial_id", lambda result: "t0")
    table = report.rounds_table([Result()], [])
    assert table["central_round"].tolist() == [0, 2, 3]
    plotted = []
    monkeypatch.setattr("matplotlib.axes.Axes.plot", lambda self, x, y, **kw: plotted.append(list(x)))
    report.plot_metric(table, "central_accuracy", [], str(tmp_path / "plot.png"))
    assert plotted == [[2, 3]]  # round 1 carries round 0's value
    summary = report._metric_summary(table, "central_accuracy", "max")
    assert summary["best_central_accuracy_round"] == 3
