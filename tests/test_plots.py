"""A run's pictures: metrics.png per round, partitions.csv/.png from the app's partitioner hook, and its errors."""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import Future

import numpy as np
import pandas as pd
import pytest
from cifar10_app.data import load_data

from fl_core import RunEnd, cli, fuse_run_config, load_app_folder
from fl_core.plots import METRICS_PLOT, MetricsPlotter, metric_panels, metrics_figure, write_partition_files
from fl_core.settings import ConfigError
from tests.conftest import SMALL

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _history(rounds: int) -> list[dict]:
    """Rounds as the loop reports them: model metrics, counts and timings; fed_* missing in even rounds."""
    rows = []
    for r in range(1, rounds + 1):
        row = {
            "round": r,
            "central_loss": 2.3 - 0.1 * r,
            "central_accuracy": 0.1 + 0.05 * r,
            "train_loss": 2.0 / r,
            "train_clients": 2,
            "train_samples": 300,
            "seconds": 1.5,
            "samples_per_s": 200.0,
        }
        if r % 2:
            row.update(fed_loss=2.2 - 0.1 * r, fed_accuracy=0.1 + 0.04 * r, fed_clients=2)
        rows.append(row)
    return rows


def test_metrics_panels_group_any_apps_metrics():
    builtin = metric_panels(_history(2))
    assert builtin == {
        "accuracy": ["central_accuracy", "fed_accuracy"],
        "loss": ["central_loss", "fed_loss", "train_loss"],
    }  # counts and timings left out
    quickstart = [
        {
            "round": 1,
            "train_loss": 1.9,
            "fed_eval_loss": 1.8,
            "fed_eval_acc": 0.3,
            "fed_clients": 4,
            "fed_histogram": [1, 2],
            "train_f1": 0.2,
        }
    ]
    assert metric_panels(quickstart) == {
        "accuracy": ["fed_eval_acc"],
        "loss": ["fed_eval_loss", "train_loss"],
        "other": ["train_f1"],
    }  # a list-valued metric draws no line
    assert metric_panels([{"round": 1, "train_clients": 2, "seconds": 1.0}]) == {}


def test_metrics_plot_of_a_resumed_run_covers_every_round(tmp_path):
    """A resumed run's RunEnd carries the checkpoint's rounds too: the plot shows all of them."""
    history = _history(5)
    MetricsPlotter(str(tmp_path), "app").on_run_end(RunEnd(history, {}, 1.0, None))
    assert (tmp_path / METRICS_PLOT).read_bytes().startswith(PNG_MAGIC)
    figure = metrics_figure(history, "app")
    accuracy, loss = figure.axes
    assert accuracy.get_ylabel() == "accuracy" and loss.get_ylabel() == "loss"
    lines = {line.get_label(): line for ax in figure.axes for line in ax.get_lines()}
    assert list(lines["central_accuracy"].get_xdata()) == [1, 2, 3, 4, 5]
    assert list(lines["fed_accuracy"].get_xdata()) == [1, 3, 5]  # rounds without a federated evaluation skipped
    assert accuracy.get_legend() is not None and "5 rounds" in figure.get_suptitle()


def test_no_model_metrics_no_plot(tmp_path):
    MetricsPlotter(str(tmp_path)).on_run_end(RunEnd([{"round": 1, "seconds": 1.0}], {}, 1.0, None))
    assert not (tmp_path / METRICS_PLOT).exists()


def _config(**overrides):
    """(built-in app, run config) on the synthetic set; keys with `_` for `-`."""
    app = load_app_folder(None)
    values = {"dataset": "synthetic", "synthetic-size": 1000, **{k.replace("_", "-"): v for k, v in overrides.items()}}
    return app, fuse_run_config(app, values)


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_partition_counts_are_each_clients_labels(partition, tmp_path):
    """partitions.csv: one row per node, its labels counted over its train and validation samples."""
    app, rc = _config(partition=partition, alpha=0.3)
    paths = write_partition_files(app, rc, 10, str(tmp_path))
    assert paths == [str(tmp_path / "partitions.csv"), str(tmp_path / "partitions.png")]
    assert (tmp_path / "partitions.png").read_bytes().startswith(PNG_MAGIC)
    counts = pd.read_csv(tmp_path / "partitions.csv", index_col="partition-id")
    assert counts.index.tolist() == list(range(10)) and counts.columns.tolist() == [str(k) for k in range(10)]
    data = load_data.compute(rc, 10).value
    for cid in range(10):
        samples = np.concatenate([data.client_train[cid], data.client_val[cid]])
        assert counts.loc[cid].tolist() == np.bincount(data.train_labels[samples], minlength=10).tolist()
    assert counts.to_numpy().sum() == 1000


def test_partition_files_are_the_same_for_the_same_seed(tmp_path):
    app, rc = _config(partition="dirichlet", alpha=0.3)
    write_partition_files(app, rc, 8, str(tmp_path / "a"))
    write_partition_files(app, rc, 8, str(tmp_path / "b"), stem="again")
    _, other_seed = _config(partition="dirichlet", alpha=0.3, seed=1)
    write_partition_files(app, other_seed, 8, str(tmp_path / "c"))
    first = (tmp_path / "a" / "partitions.csv").read_text()
    assert (tmp_path / "b" / "again.csv").read_text() == first
    assert (tmp_path / "c" / "partitions.csv").read_text() != first


def test_large_pools_plot_the_first_clients_and_count_them_all(tmp_path):
    app, rc = _config(synthetic_size=2400)
    write_partition_files(app, rc, 120, str(tmp_path))
    assert len(pd.read_csv(tmp_path / "partitions.csv")) == 120


def test_the_example_declares_the_built_in_datas_hook(tmp_path):
    app = load_app_folder(os.path.join(REPO, "examples", "quickstart-pytorch"))
    rc = fuse_run_config(app, {"dataset": "synthetic", "synthetic-size": 400})
    write_partition_files(app, rc, 4, str(tmp_path))
    counts = pd.read_csv(tmp_path / "partitions.csv", index_col="partition-id")
    data = load_data.compute(rc, 4).value
    assert counts.sum(axis=1).tolist() == [len(t) + len(v) for t, v in zip(data.client_train, data.client_val)]


def test_an_app_without_the_hook_gets_no_files(tmp_path):
    app = dataclasses.replace(load_app_folder(None), partitioner=None)
    assert write_partition_files(app, {}, 4, str(tmp_path / "out")) is None
    assert not (tmp_path / "out").exists()


HOOKS = """
import datasets
from flwr_datasets.partitioner import IidPartitioner

def raises(run_config, num_partitions):
    raise RuntimeError("no labels here")

def not_a_partitioner(run_config, num_partitions):
    return [[0, 1], [2, 3]]

def without_dataset(run_config, num_partitions):
    return IidPartitioner(num_partitions)

def _with(num_partitions, column):
    partitioner = IidPartitioner(num_partitions)
    partitioner.dataset = datasets.Dataset.from_dict({column: list(range(40))})
    return partitioner

def too_few(run_config, num_partitions):
    return _with(num_partitions - 1, "label")

def no_label(run_config, num_partitions):
    return _with(num_partitions, "target")
"""


@pytest.fixture(scope="module")
def hooked(tmp_path_factory):
    """fn(hook name) -> the built-in app with `[tool.fedsweep] partitioner = "fsw_test_hooks:<name>"`."""
    folder = tmp_path_factory.mktemp("hooks")
    (folder / "fsw_test_hooks.py").write_text(HOOKS)
    app = load_app_folder(None)
    return lambda name: dataclasses.replace(app, directory=str(folder), partitioner=f"fsw_test_hooks:{name}")


@pytest.mark.parametrize(
    "name, message",
    [
        ("raises", "fsw_test_hooks:raises failed: RuntimeError: no labels here"),
        ("not_a_partitioner", "fsw_test_hooks:not_a_partitioner returned list, not a flwr_datasets Partitioner"),
        ("without_dataset", "returned a partitioner without its dataset"),
        ("too_few", "fsw_test_hooks:too_few made 3 partitions for a run of 4 nodes"),
        ("no_label", "its dataset has no column 'label' (columns: target); name the label column with"),
        ("missing", "Unable to load attribute missing from module fsw_test_hooks"),
    ],
)
def test_a_broken_hook_is_one_clear_line(name, message, hooked, tmp_path):
    with pytest.raises(ConfigError) as raised:
        write_partition_files(hooked(name), {}, 4, str(tmp_path / "out"))
    text = " ".join(str(raised.value).split())  # as the command line prints it
    assert message in text and "[tool.fedsweep] partitioner" in text, text
    assert not (tmp_path / "out").exists()


def _done(exception: BaseException | None = None) -> Future:
    """A finished future, as the command line's data loading leaves it."""
    future = Future()
    future.set_result([]) if exception is None else future.set_exception(exception)
    return future


def test_a_hook_failing_during_the_run_is_a_warning_line(hooked, tmp_path, capsys, fedsweep_log):
    """Found only after Ray started: the command line warns in one line and the run goes on without the files."""
    cli._draw_partitions(_done(), hooked("raises"), {}, 4, str(tmp_path))
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith("fl_core: warning: [tool.fedsweep] partitioner")
        and "no labels here" in err[0]
    ), err
    assert not (tmp_path / "partitions.csv").exists()


def test_data_that_failed_to_load_gets_no_partition_files(tmp_path, capsys):
    app, rc = _config()
    cli._draw_partitions(_done(ConfigError("unreadable")), app, rc, 4, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists() and capsys.readouterr().err == ""


def _app_with(tmp_path, line: str) -> str:
    """An app folder: the built-in app's pyproject.toml with its partitioner line replaced by `line`."""
    from fl_core import BUILTIN_APP_DIR

    text = open(f"{BUILTIN_APP_DIR}/pyproject.toml").read()
    assert 'partitioner = "cifar10_app.data:partitioner"' in text
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "pyproject.toml").write_text(text.replace('partitioner = "cifar10_app.data:partitioner"', line))
    return str(folder)


@pytest.mark.parametrize(
    "line, message",
    [
        ('partitioner = "cifar10_app.data"', "partitioner must be \"module:function\", got 'cifar10_app.data'"),
        ("partitioner = 3", 'partitioner must be "module:function", got 3'),
        ('partitioner = "nowhere_at_all:fn"', "cannot find the [tool.fedsweep] partitioner's module nowhere_at_all"),
        ('partition-by = ""', "partition-by must name the label column"),
    ],
)
def test_a_bad_hook_declaration_is_refused_before_ray(line, message, tmp_path, capsys, no_ray):
    out = tmp_path / "out"
    assert cli.main(["--app", _app_with(tmp_path, line), *SMALL, "--checkpoint-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_a_standalone_run_draws_its_pictures(ray_local, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        cli.main(
            [
                *SMALL,
                "--fraction-train",
                "0.5",
                "--min-evaluate-nodes",
                "1",
                "--local-epochs",
                "1",
                "--num-server-rounds",
                "2",
                "--checkpoint-dir",
                str(out),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert f"checkpoints, metrics and plots in {out}" in captured.out and "warning" not in captured.err
    for name in ("metrics.png", "partitions.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC), name
    counts = pd.read_csv(out / "partitions.csv", index_col="partition-id")
    assert len(counts) == 4 and counts.to_numpy().sum() == 200  # every sample of the 200-image set, once
