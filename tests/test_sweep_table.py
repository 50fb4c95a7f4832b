"""Sweep files with grids of named sets, and the results table a paper shows (fl_sweep.table), without Ray.

The niid_bench sweep file end to end: tests/test_tune_search.py.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest

from fl_core.settings import ConfigError
from fl_sweep.cli import build_parser, build_spec
from fl_sweep.spec import trials
from fl_sweep.table import markdown, parse_published, results_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NIID_BENCH = os.path.join(REPO, "configs", "niid_bench.yaml")


def spec_of(argv: list[str]):
    """The sweep a command line describes, as on a 2-CPU machine."""
    return build_spec(build_parser().parse_args(argv), 2, 0)


def write(tmp_path, text: str) -> str:
    """A sweep file holding `text`; its path."""
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return str(path)


def test_niid_bench_file_is_36_trials_of_the_papers_protocol():
    spec = spec_of(["--config", NIID_BENCH])
    runs = list(trials(spec))
    assert len(runs) == 3 * 4 * 3
    rc = spec.run_config
    assert (
        spec.settings["pool_size"],
        rc["fraction-train"],
        rc["num-server-rounds"],
        rc["local-epochs"],
        rc["batch-size"],
        rc["lr"],
        rc["momentum"],
        rc["weight-decay"],
        rc["fedprox.proximal-mu"],
    ) == (10, 1.0, 50, 10, 64, 0.01, 0.9, 1e-5, 0.01)
    by_name = {
        (combo["strategy"], combo["partitioning"], settings.seed): run_config for combo, settings, run_config in runs
    }
    c3 = by_name[("scaffold", "#C=3", 2)]
    assert (c3["strategy"], c3["partition"], c3["classes-per-client"], c3["seed"]) == ("scaffold", "pathological", 3, 2)
    dirichlet = by_name[("fedprox", "Dirichlet(0.5)", 0)]
    assert (dirichlet["partition"], dirichlet["alpha"], dirichlet["self-balancing"]) == ("dirichlet", 0.5, True)
    assert spec.table["published"]["Dirichlet(0.5)"]["scaffold"] == (68.08, 0.96)


def test_the_command_line_picks_sets_and_overrides_the_file():
    spec = spec_of(
        [
            "--config",
            NIID_BENCH,
            "--grid",
            "partitioning=Dirichlet(0.5),IID",
            "--grid",
            "seed=0",
            "--set",
            "num-server-rounds=10",
        ]
    )
    assert spec.search["partitioning"]["values"] == ["Dirichlet(0.5)", "IID"]
    assert len(list(trials(spec))) == 3 * 2 and spec.run_config["num-server-rounds"] == 10
    with pytest.raises(ConfigError, match="no set named dirichlet; the --config file's sets are IID, Dirichlet"):
        spec_of(["--config", NIID_BENCH, "--grid", "partitioning=dirichlet"])


@pytest.mark.parametrize(
    "text, message",
    [
        ("search:\n  partition: {grid: {a: {alpha: 0.5}}}\n", "partition is a setting or run-config key"),
        ("search:\n  split: {grid: {a: {no-such-key: 1}}}\n", "no-such-key"),
        ("search:\n  split: {grid: {a: {alpha: fast}}}\n", "alpha"),
        ("search:\n  split: {grid: {a: 3}}\n", "set 'a' must be a non-empty {key: value} mapping"),
        ("fixed:\n  alpha: 0.3\nsearch:\n  split: {grid: {a: {alpha: 0.5}}}\n", "alpha both fixed and swept"),
        ("search:\n  alpha: [0.1]\n  split: {grid: {a: {alpha: 0.5}}}\n", "alpha swept by two axes"),
        (
            "search:\n  lr: [0.1]\ntable: {rows: lr, columns: seed}\n",
            "table columns 'seed' is not a grid or choice axis",
        ),
        ("search:\n  lr: [0.1]\n  seed: [0]\ntable: {rows: lr, columns: lr}\n", "rows and columns are both 'lr'"),
        ("search:\n  lr: [0.1]\n  seed: [0]\ntable: {rows: lr, columns: seed, scale: 0}\n", "scale must be a positive"),
        (
            "search:\n  lr: [0.1]\n  seed: [0]\ntable: {rows: lr, columns: seed, published: {0.1: {0: lots}}}\n",
            "'lots' is not 'mean ± std' or a number",
        ),
    ],
)
def test_bad_sets_and_tables_are_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("{", r"\{").replace("}", r"\}")):
        spec_of(["--config", write(tmp_path, text)])


def test_published_numbers_parse():
    assert parse_published("71.32 ± 0.33") == (71.32, 0.33)
    assert parse_published("71.32 +- 0.33") == (71.32, 0.33)
    assert parse_published(62.5) == (62.5, None)


def test_table_is_mean_and_std_over_seeds_of_the_best_round_beside_the_published_numbers():
    spec = spec_of(["--config", NIID_BENCH, "--grid", "partitioning=IID,#C=2", "--grid", "strategy=fedavg,scaffold"])
    rows = []
    for i, (strategy, partitioning, seed, best, status) in enumerate(
        [
            ("fedavg", "IID", 0, 0.70, "TERMINATED"),
            ("fedavg", "IID", 1, 0.72, "TERMINATED"),
            ("fedavg", "IID", 2, 0.74, "TERMINATED"),
            ("scaffold", "IID", 0, 0.71, "TERMINATED"),
            ("scaffold", "IID", 1, 0.99, "ERROR"),
            ("fedavg", "#C=2", 0, 0.50, "TERMINATED"),
        ]
    ):
        rows.append(
            {
                "trial_id": f"t{i}",
                "status": status,
                "strategy": strategy,
                "partitioning": partitioning,
                "seed": seed,
                "best_central_accuracy": best,
            }
        )
    results = results_table(pd.DataFrame(rows), spec)
    cell = results.set_index(["partitioning", "strategy"])
    assert cell.loc[("IID", "fedavg"), "mean"] == pytest.approx(72.0)
    assert cell.loc[("IID", "fedavg"), "std"] == pytest.approx(2.0)  # sample std of 70, 72, 74
    assert cell.loc[("IID", "fedavg"), ["n", "published_mean", "published_std"]].tolist() == [3, 71.32, 0.33]
    assert cell.loc[("IID", "scaffold"), "n"] == 1  # the errored trial is left out
    assert cell.loc[("#C=2", "scaffold"), "n"] == 0
    text = markdown(results, spec)
    assert text.splitlines()[0] == ("| partitioning | fedavg | fedavg (published) | scaffold | scaffold (published) |")
    assert "| IID | 72.00 ± 2.00 (n=3) | 71.32 ± 0.33 | 71.00 (n=1) | 71.66 ± 1.13 |" in text
    assert "| #C=2 | 50.00 (n=1) | 51.17 ± 1.09 | - | 49.42 ± 2.18 |" in text  # no finished trial: -
    assert "best central_accuracy x 100 over each trial's rounds, mean ± std over seed" in text
