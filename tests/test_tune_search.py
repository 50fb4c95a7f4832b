"""Tests of tune_search: the search space, trial resources and real sweeps on local Ray (bad input: the table in
tests/test_bad_input.py).

Sweeps run `python tune_search.py` in a subprocess (tests/support/sweeps.py's
Run) with its own Ray temp dir in a session of its own, and an environment tag (FEDSWEEP_TEST_RUN_TAG) that
every process of that run inherits (driver, GCS, raylet, workers): leftovers
are found by that session or that tag (a worker that renames itself can
overwrite its environment block) and only those are killed. Starting Ray costs
~15 s on 2 cores, so one sweep (a 2x2 grid with one injected failure) serves
several tests.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pandas as pd
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # tune_search is a top-level module of the repository

import tune_search  # noqa: E402
from fl_core.logs import show_on_stderr  # noqa: E402
from fl_core.settings import ConfigError  # noqa: E402
from fl_sweep.cli import build_parser, build_spec  # noqa: E402
from fl_sweep.resources import trial_bundles, trial_resources  # noqa: E402
from fl_sweep.spec import SweepSpec, combinations  # noqa: E402
from fl_sweep.trainable import share_data  # noqa: E402
from fl_sweep.tuner import param_space, tune_config  # noqa: E402
from fl_sweep.validate import validate_spec  # noqa: E402
from tests.conftest import tensorboard_scalars  # noqa: E402
from tests.support.sweeps import TINY, Run, run_pids  # noqa: E402

EXAMPLE_WITHOUT_ROUNDS = os.path.join(REPO, "tests", "apps", "no_rounds")

# ---------------------------------------------------------------------------
# Helpers


def parse(argv: list[str]):
    """Parsed run arguments."""
    return build_parser().parse_args(argv)


def spec_of(argv: list[str], cpus: float = 2, gpus: float = 0) -> SweepSpec:
    """The sweep a command line describes, as on a machine with `cpus` CPUs."""
    return build_spec(parse(argv), cpus, gpus)


def read_round_log(path: str) -> list[tuple[str, int]]:
    """(trial id, round) lines of the FEDSWEEP_TEST_ROUND_LOG file."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(t, int(r)) for t, r in (line.strip().split(",") for line in f if line.strip())]


def rounds_of(log: list[tuple[str, int]], trial_id: str) -> list[int]:
    """Rounds a trial finished, in order, from the round log."""
    return [r for t, r in log if t == trial_id]


# ---------------------------------------------------------------------------
# Search space and resources (no Ray)


def test_default_grid_and_replacement():
    """No search flag: the 3x3 default grid; any search flag replaces it; fixed keys leave the default grid."""
    assert spec_of([]).search == {
        "fraction-train": {"kind": "grid", "values": [0.05, 0.1, 0.2]},
        "local-epochs": {"kind": "grid", "values": [1, 2, 5]},
    }
    assert spec_of(["--loguniform", "lr=1e-3,1e-1"]).search == {"lr": {"kind": "loguniform", "values": [1e-3, 1e-1]}}
    assert list(spec_of(["--set", "local_epochs=3"]).search) == ["fraction-train"]
    spec = spec_of(["--set", "num-server-rounds=7", "--choice", "strategy=fedavg,fedprox", "--set", "pool-size=8"])
    assert spec.run_config["num-server-rounds"] == 7 and spec.search["strategy"]["values"] == ["fedavg", "fedprox"]
    assert spec.settings["pool_size"] == 8 and "pool_size" not in spec.run_config
    seeded = spec_of(["--grid", "seed=0,1"])
    assert seeded.plan().trial({"seed": 1})[1]["seed"] == 1  # the app's seed key is the engine's seed


def test_config_file_sections(tmp_path):
    """YAML `fixed:` and `search:` sections; dashes accepted; command-line flags override the file."""
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "fixed:\n  num-server-rounds: 4\n  dataset: synthetic\n"
        "search:\n  lr: {loguniform: [1.0e-3, 1.0e-1]}\n  local_epochs: {grid: [1, 2]}\n"
    )
    spec = spec_of(["--config", str(path), "--set", "num_server_rounds=5"])
    assert spec.run_config["num-server-rounds"] == 5 and spec.run_config["dataset"] == "synthetic"
    assert spec.search == {
        "lr": {"kind": "loguniform", "values": [1e-3, 1e-1]},
        "local-epochs": {"kind": "grid", "values": [1, 2]},
    }
    json_path = tmp_path / "sweep.json"
    json_path.write_text(json.dumps({"search": {"seed": [0, 1, 2]}}))
    assert spec_of(["--config", str(json_path)]).search == {"seed": {"kind": "grid", "values": [0, 1, 2]}}


def test_param_space_domains():
    """grid -> grid_search (grid search) or choice (random); ranges -> uniform/loguniform, randint for ints."""
    from ray.tune.search.sample import Categorical, Float, Integer

    argv = [
        "--grid",
        "local_epochs=1,2",
        "--choice",
        "strategy=fedavg,fedprox",
        "--uniform",
        "momentum=0,0.9",
        "--loguniform",
        "lr=1e-3,1e-1",
        "--uniform",
        "batch_size=16,64",
        "--loguniform",
        "fedadam.eta=0.01,1",
    ]
    space = param_space(spec_of(argv))
    assert space["local-epochs"] == {"grid_search": [1, 2]}
    assert isinstance(space["strategy"], Categorical)
    assert isinstance(space["momentum"], Float) and isinstance(space["lr"], Float)
    assert isinstance(space["batch-size"], Integer) and isinstance(space["fedadam.eta"], Float)
    assert "num-server-rounds" not in space  # fixed values travel with the trainable
    random_space = param_space(spec_of(argv + ["--search", "random"]))
    assert isinstance(random_space["local-epochs"], Categorical)


def test_trial_bundles_follow_config():
    """[server] + K client bundles, K = min(clients per round, max parallel); GPU key only when asked."""
    spec = spec_of(
        ["--set", "pool_size=100", "--set", "fraction-evaluate=0.02", "--grid", "fraction_train=0.05,0.2"], cpus=16
    )
    plan = spec.plan()
    assert trial_bundles({"fraction-train": 0.05}, plan) == [{"CPU": 1}] + [{"CPU": 1.0}] * 5
    assert len(trial_bundles({"fraction-train": 0.2}, plan)) == 1 + 15  # (16 - 1 server CPU) / 1
    gpu = spec_of(["--num-client-gpus", "0.25", "--server-gpus", "1", "--max-parallel-clients", "3"], cpus=16, gpus=2)
    bundles = trial_bundles({"fraction-train": 0.1}, gpu.plan())
    assert bundles == [{"CPU": 1, "GPU": 1.0}] + [{"CPU": 1.0, "GPU": 0.25}] * 3
    factory = trial_resources({"fraction-train": 0.1}, gpu.plan())
    assert factory.bundles == bundles


def test_data_sharing_decision():
    """One data set per distinct value of the keys the app's loader reads; ranges over them: trials load their own."""
    small = ["--set", "dataset=synthetic", "--set", "synthetic-size=200", "--set", "pool-size=4"]
    one = share_data(spec_of(small + ["--grid", "lr=0.1,0.2", "--grid", "alpha=0.1,1"]))  # iid: alpha not read
    assert len(one) == 1 and "lr" not in one[0].inputs and "alpha" not in one[0].inputs
    per_seed = share_data(spec_of(small + ["--grid", "seed=0,1,2", "--grid", "lr=0.1,0.2"]))
    assert sorted(v.inputs["seed"] for v in per_seed) == [0, 1, 2]
    per_alpha = share_data(spec_of(small + ["--set", "partition=dirichlet", "--grid", "alpha=0.5,1"]))
    assert sorted(v.inputs["alpha"] for v in per_alpha) == [0.5, 1.0]
    assert share_data(spec_of(small + ["--set", "partition=dirichlet", "--uniform", "alpha=0.5,1"])) == []
    assert share_data(spec_of(small + ["--grid", "seed=" + ",".join(map(str, range(9)))])) == []
    by_pool = ["--set", "dataset=synthetic", "--set", "synthetic-size=200", "--grid", "pool_size=4,5"]
    assert len(share_data(spec_of(by_pool))) == 2  # num_partitions decides too


def test_partition_files_per_distinct_data_set(tmp_path):
    """The sweep draws one label distribution per distinct data set, named by the swept values that made it."""
    from fl_sweep.partitions import FOLDER, INDEX, write_partitions

    small = [
        "--set",
        "dataset=synthetic",
        "--set",
        "synthetic-size=400",
        "--set",
        "pool-size=4",
        "--set",
        "partition=dirichlet",
    ]
    spec = spec_of(small + ["--grid", "alpha=0.5,5", "--grid", "lr=0.1,0.2"])
    assert write_partitions(spec, share_data(spec), str(tmp_path)) is None
    index = pd.read_csv(tmp_path / FOLDER / INDEX)
    assert index.to_dict("records") == [
        {"data_set": 1, "num_partitions": 4, "alpha": 0.5},
        {"data_set": 2, "num_partitions": 4, "alpha": 5.0},
    ]
    counts = [pd.read_csv(tmp_path / FOLDER / f"data_{n}.csv", index_col=0) for n in (1, 2)]
    assert all(len(c) == 4 and c.values.sum() == 400 for c in counts)  # every training image, once
    assert not counts[0].equals(counts[1])  # another alpha, another split
    assert (tmp_path / FOLDER / "data_2.png").stat().st_size > 1000
    ranged = spec_of(small + ["--uniform", "alpha=0.5,5"])
    assert "no partition plots" in write_partitions(ranged, share_data(ranged), str(tmp_path / "ranged"))
    assert not (tmp_path / "ranged").exists()


def test_partition_plots_that_fail_are_a_warning_and_the_sweep_goes_on(monkeypatch, capsys, tmp_path):
    """Pictures are never worth a sweep: a hook or storage that fails gives one warning on stderr, nothing to print."""
    from fl_sweep import partitions
    from fl_sweep.cli import PROG

    def broken(*args):
        raise OSError("no space left\n on device")

    monkeypatch.setattr(partitions, "write_partitions", broken)
    show_on_stderr(PROG)  # as tune_search's main does
    spec = spec_of(["--set", "dataset=synthetic", "--set", "pool-size=4"])
    assert partitions.draw_partitions(spec, [], str(tmp_path / "sweep")) is None
    captured = capsys.readouterr()
    assert captured.err == "tune_search: warning: no partition plots (no space left on device)\n" and not captured.out


def test_grid_points_that_make_the_same_runs_are_named(capsys, tmp_path):
    """With 20 clients, fraction-train 0.05 and 0.1 both sample the 2-client minimum: a warning before Ray starts
    (and in the report); 0.2 samples 4 and is not named. A pool of 100 tells them apart: no warning."""
    from fl_sweep.validate import same_runs

    small = ["--set", "dataset=synthetic", "--set", "pool_size=20"]
    assert same_runs(spec_of(small + ["--grid", "fraction-train=0.05,0.1,0.2", "--grid", "local-epochs=1,2"])) == [
        "fraction-train values 0.05, 0.1 sample the same 2 of 20 clients per round (min-train-nodes 2): their grid "
        "points make the same runs"
    ]
    assert same_runs(spec_of(["--set", "dataset=synthetic", "--set", "pool_size=100"])) == []  # the default grid
    evaluate = same_runs(spec_of(small + ["--grid", "fraction-evaluate=0.01,0.05"]))
    assert evaluate and evaluate[0].startswith("fraction-evaluate values 0.01, 0.05 sample the same 2 of 20")
    from fl_sweep.cli import PROG, prepare

    show_on_stderr(PROG)  # as tune_search's main does
    prepare(parse(small + ["--grid", "fraction-train=0.05,0.1", "--storage-path", str(tmp_path)]))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tune_search: warning: fraction-train values 0.05, 0.1"), err


def test_tune_config_scheduler_and_searcher():
    """ASHA counts rounds up to num_rounds; optuna gets OptunaSearch; metric and mode pass through."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    spec = spec_of(
        [
            "--set",
            "num-server-rounds=8",
            "--scheduler",
            "asha",
            "--search",
            "optuna",
            "--metric",
            "central_loss",
            "--loguniform",
            "lr=1e-3,1e-1",
            "--num-samples",
            "6",
        ]
    )
    assert spec.mode == "min" and spec.num_samples == 6
    config = tune_config(spec)
    assert isinstance(config.scheduler, ASHAScheduler) and isinstance(config.search_alg, OptunaSearch)
    assert config.scheduler._time_attr == "round" and config.scheduler._max_t == 8
    assert (config.metric, config.mode) == ("central_loss", "min")


def test_default_sweep_fits_two_cores():
    """On 2 CPUs every trial of the default grid gets K=1: 2 CPUs, so one trial runs at a time."""
    spec = spec_of(["--set", "dataset=synthetic"], cpus=2)
    validate_spec(spec, 2, 0)
    plan = spec.plan()
    for combo in combinations(spec):
        assert trial_bundles(combo, plan) == [{"CPU": 1}, {"CPU": 1.0}]
    too_big = spec_of(["--set", "dataset=synthetic", "--max-parallel-clients", "4"], cpus=2)
    with pytest.raises(ConfigError, match="one trial needs 5 CPUs"):
        validate_spec(too_big, 2, 0)


# ---------------------------------------------------------------------------
# What a trial reports


def test_reporter_checkpoints_every_n_rounds_and_the_last(monkeypatch):
    """--checkpoint-every 3 over 7 rounds: every round reported, checkpoints at rounds 3, 6 and 7 (the last, with
    the all-node evaluation's statistics)."""
    from fl_core import RoundEnd, RunEnd
    from fl_sweep import trainable

    reports = []
    monkeypatch.setattr(trainable, "_report", lambda metrics, state: reports.append((metrics, state)))
    reporter = trainable.TuneReporter(checkpoint_every=3)
    for r in range(1, 8):
        reporter.on_round_end(RoundEnd(round=r, num_rounds=7, start_round=1, metrics={"round": r}, state=f"state{r}"))
    evaluation = {"stats": {"accuracy": {"mean": 0.5, "min": 0.1, "p10": 0.2, "max": 0.9}}}
    reporter.on_run_end(
        RunEnd(history=[{"round": r} for r in range(1, 8)], client_evaluation=evaluation, seconds=1.0, state="final")
    )
    assert [m["round"] for m, _ in reports] == [1, 2, 3, 4, 5, 6, 7]
    assert [state for _, state in reports] == [None, None, "state3", None, None, "state6", "final"]
    assert reports[-1][0]["clients_accuracy_p10"] == 0.2


# ---------------------------------------------------------------------------
# A real sweep: 2x2 grid, 2 rounds, one injected failure


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Run a 2x2 sweep (fraction-train x local-epochs, 2 rounds, --verbose) in which one trial fails once in round
    2."""
    root = tmp_path_factory.mktemp("sweep")
    hooks = {"FEDSWEEP_TEST_FAIL_ONCE": str(root / "failed_once"), "FEDSWEEP_TEST_ROUND_LOG": str(root / "rounds.log")}
    run = Run(
        TINY
        + [
            "--grid",
            "fraction-train=0.25,0.5",
            "--grid",
            "local-epochs=1,2",
            "--storage-path",
            str(root / "results"),
            "--name",
            "grid",
            "--verbose",
        ],
        hooks=hooks,
    )
    t0 = time.time()
    code, output, leftovers = run.to_end(timeout=400)
    yield {
        "code": code,
        "output": output,
        "experiment": str(root / "results" / "grid"),
        "hooks": hooks,
        "leftovers": leftovers,
        "seconds": time.time() - t0,
        "storage": str(root / "results"),
    }


def test_sweep_writes_results(sweep):
    """4 trials x 2 rounds finish; trials.csv, rounds.csv, best.json and both plots are written."""
    assert sweep["code"] == 0, sweep["output"][-3000:]
    exp = sweep["experiment"]
    trials = pd.read_csv(os.path.join(exp, "trials.csv"))
    assert len(trials) == 4 and set(trials["status"]) == {"TERMINATED"}
    assert set(zip(trials["fraction-train"], trials["local-epochs"])) == {(0.25, 1), (0.25, 2), (0.5, 1), (0.5, 2)}
    assert (trials["rounds"] == 2).all() and trials["final_central_accuracy"].between(0, 1).all()
    rounds = pd.read_csv(os.path.join(exp, "rounds.csv"))
    assert len(rounds) == 8 and not rounds.duplicated(["trial_id", "round"]).any()
    assert {"central_accuracy", "central_loss", "fed_accuracy", "train_loss", "seconds", "samples_per_s"} <= set(rounds)
    assert {"clients_accuracy_mean", "clients_accuracy_p10"} <= set(trials)
    with open(os.path.join(exp, "best.json")) as f:
        best = json.load(f)
    assert best["value"] == trials["final_central_accuracy"].max()
    assert set(best["swept"]) == {"fraction-train", "local-epochs"} and best["config"]["num-server-rounds"] == 2
    from fl_core import load_checkpoint

    assert load_checkpoint(best["checkpoint_file"]).round == 2
    for png in ("central_accuracy_vs_round.png", "heatmap_central_accuracy.png", "partitions/data_1.png"):
        assert os.path.getsize(os.path.join(exp, png)) > 1000
    assert len(pd.read_csv(os.path.join(exp, "partitions", "data_sets.csv"))) == 1  # nothing swept changes the data
    assert "best 4 of 4 trials" in sweep["output"]
    for trial_id in trials["trial_id"]:  # Tune's TensorBoard files, a round a step (also after the retry)
        board = tensorboard_scalars(os.path.join(exp, f"trial_{trial_id}"))
        assert sorted(step for step, _ in board["ray/tune/central_accuracy"]) == [1, 2], board.keys()


def test_verbose_reaches_every_trial(sweep):
    """--verbose: each trial's pool logs its workers and groups at debug level, as `python -m fl_core --verbose`."""
    assert sweep["code"] == 0, sweep["output"][-3000:]
    ready = [line for line in sweep["output"].splitlines() if "fl_core: debug: " in line and "worker(s) ready" in line]
    assert len(ready) >= 4, sweep["output"][-3000:]  # a pool per trial run (the retried trial starts one more)


def test_failed_trial_retried_from_its_checkpoint(sweep):
    """The trial that raised in round 2 restarted from its round-1 checkpoint: every round ran once."""
    assert sweep["code"] == 0, sweep["output"][-3000:]
    with open(sweep["hooks"]["FEDSWEEP_TEST_FAIL_ONCE"]) as f:
        failed = f.read()
    log = read_round_log(sweep["hooks"]["FEDSWEEP_TEST_ROUND_LOG"])
    assert failed in {t for t, _ in log}
    for trial_id in {t for t, _ in log}:
        assert rounds_of(log, trial_id) == [1, 2], (trial_id, log)
    result = pd.read_json(os.path.join(sweep["experiment"], f"trial_{failed}", "result.json"), lines=True)
    assert result["round"].tolist() == [1, 2]


def test_report_command_rewrites_files(sweep, capsys):
    """`tune_search report PATH` rebuilds the tables and plots from the experiment folder."""
    exp = sweep["experiment"]
    for name in ("trials.csv", "rounds.csv", "best.json", "central_accuracy_vs_round.png"):
        os.remove(os.path.join(exp, name))
    assert tune_search.main(["report", exp]) == 0
    assert len(pd.read_csv(os.path.join(exp, "trials.csv"))) == 4
    assert len(pd.read_csv(os.path.join(exp, "rounds.csv"))) == 8
    assert os.path.exists(os.path.join(exp, "best.json"))
    assert os.path.exists(os.path.join(exp, "central_accuracy_vs_round.png"))
    assert "best 4 of 4 trials" in capsys.readouterr().out


def test_sweep_left_no_ray_processes(sweep):
    """Ray shut down cleanly: no process of the run was left to kill."""
    assert sweep["leftovers"] == []


def test_checkpoint_cadence_redoes_rounds_with_the_same_results(tmp_path):
    """--checkpoint-every 3 with a failure in round 2: the trial redoes round 1 (no checkpoint yet) and ends exactly
    like its twin that never failed; checkpoints exist for rounds 3 and 4 only."""
    hooks = {"FEDSWEEP_TEST_FAIL_ONCE": str(tmp_path / "failed_once"), "FEDSWEEP_TEST_ROUND_LOG": str(tmp_path / "log")}
    run = Run(
        TINY
        + [
            "--set",
            "num-server-rounds=4",
            "--checkpoint-every",
            "3",
            "--grid",
            "lr=0.05,0.05",
            "--storage-path",
            str(tmp_path / "results"),
            "--name",
            "cadence",
        ],
        hooks=hooks,
    )
    code, output, leftovers = run.to_end(timeout=400)
    assert leftovers == []
    assert code == 0, output[-3000:]
    failed = (tmp_path / "failed_once").read_text()
    log = read_round_log(hooks["FEDSWEEP_TEST_ROUND_LOG"])
    twin = next(t for t, _ in log if t != failed)
    assert rounds_of(log, failed) == [1, 1, 2, 3, 4] and rounds_of(log, twin) == [1, 2, 3, 4], log
    exp = tmp_path / "results" / "cadence"
    rounds = pd.read_csv(exp / "rounds.csv")
    model = [c for c in rounds if c.startswith(("central_", "fed_", "train_")) and not c.endswith("seconds")]
    by_trial = {t: part[model].reset_index(drop=True) for t, part in rounds.groupby("trial_id")}
    pd.testing.assert_frame_equal(by_trial[failed], by_trial[twin])
    from fl_core import load_checkpoint

    for trial in (failed, twin):
        kept = sorted(load_checkpoint(str(d)).round for d in (exp / f"trial_{trial}").glob("checkpoint_*"))
        assert kept == [3, 4], (trial, kept)


# ---------------------------------------------------------------------------
# Kill the driver mid-sweep, then --resume


def _wait_for_kill_point(run: Run, log_path: str, num_rounds: int, timeout: float = 240) -> tuple[str, str]:
    """Poll until one trial has finished and another has checkpointed 2 rounds; returns (finished, running) ids."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert run.proc.poll() is None, "the sweep ended before it could be interrupted: make its trials longer"
        log = read_round_log(log_path)
        trials = list(dict.fromkeys(t for t, _ in log))
        done = [t for t in trials if rounds_of(log, t) == list(range(1, num_rounds + 1))]
        running = [t for t in trials if t not in done and len(rounds_of(log, t)) >= 2]
        if done and running:
            return done[0], running[0]
        time.sleep(0.1)
    raise AssertionError(f"no kill point within {timeout} s")


def test_kill_and_resume(tmp_path):
    """SIGKILL the driver mid-sweep; --resume keeps the finished trial and continues the other from its checkpoint."""
    num_rounds = 6
    storage = str(tmp_path / "results")
    log_path = str(tmp_path / "rounds.log")
    # Two trials one after the other (2 CPUs each); ~1 s rounds so the kill lands mid-trial.
    args = TINY + [
        "--set",
        "synthetic-size=3000",
        "--set",
        f"num-server-rounds={num_rounds}",
        "--set",
        "fraction-train=0.5",
        "--grid",
        "lr=0.05,0.06",
        "--set",
        "local-epochs=3",
        "--storage-path",
        storage,
        "--name",
        "killed",
    ]
    first = Run(args, hooks={"FEDSWEEP_TEST_ROUND_LOG": log_path}).start()
    try:
        finished, running = _wait_for_kill_point(first, log_path, num_rounds)
        time.sleep(1.5)  # > the 1 s experiment-state snapshot period
    finally:
        first.kill()
        killed_leftovers = first.cleanup()
    assert run_pids(first.tag, first.proc.pid) == []
    exp = os.path.join(storage, "killed")
    before = read_round_log(log_path)
    with open(os.path.join(exp, f"trial_{finished}", "result.json")) as f:
        finished_results = f.read()
    assert finished_results.count("\n") == num_rounds

    second = Run(
        ["--resume", "--storage-path", storage, "--name", "killed"], hooks={"FEDSWEEP_TEST_ROUND_LOG": log_path}
    )
    code, output, resumed_leftovers = second.to_end(timeout=300)
    assert code == 0, output[-3000:]
    assert resumed_leftovers == []
    after = read_round_log(log_path)[len(before) :]
    # The finished trial was not rerun: no new rounds, no new reports.
    assert rounds_of(after, finished) == []
    with open(os.path.join(exp, f"trial_{finished}", "result.json")) as f:
        assert f.read() == finished_results
    # The interrupted trial continued after a checkpointed round (at most the round in flight is redone).
    redone = rounds_of(after, running)
    done_before = rounds_of(before, running)
    assert redone == list(range(redone[0], num_rounds + 1)), redone
    assert 2 <= redone[0] <= done_before[-1] + 1, (done_before, redone)
    trials = pd.read_csv(os.path.join(exp, "trials.csv"))
    assert len(trials) == 2 and set(trials["status"]) == {"TERMINATED"} and (trials["rounds"] == num_rounds).all()
    rounds = pd.read_csv(os.path.join(exp, "rounds.csv"))
    assert len(rounds) == 2 * num_rounds and not rounds.duplicated(["trial_id", "round"]).any()
    for _, part in rounds.groupby("trial_id"):
        assert sorted(part["round"]) == list(range(1, num_rounds + 1))
    # Whatever the killed run left behind had to be reaped by us, not by luck: report it if any.
    print(f"processes of the killed run reaped by the test: {killed_leftovers}")


# ---------------------------------------------------------------------------
# Unchanged Flower apps as Tune trials


def test_an_unchanged_flower_app_sweeps_on_its_central_accuracy_and_retries_from_checkpoints(tmp_path):
    """The quickstart template (strategy.start, evaluate_fn): the default metric, a checkpoint per round, a retry."""
    quickstart = os.path.join(REPO, "examples", "quickstart-pytorch")
    hooks = {"FEDSWEEP_TEST_FAIL_ONCE": str(tmp_path / "failed_once"), "FEDSWEEP_TEST_ROUND_LOG": str(tmp_path / "log")}
    code, output, leftovers = Run(
        [
            "--app",
            quickstart,
            "--set",
            "dataset=synthetic",
            "--set",
            "synthetic-size=400",
            "--set",
            "pool_size=4",
            "--set",
            "num-server-rounds=2",
            "--grid",
            "learning-rate=0.05,0.1",
            "--storage-path",
            str(tmp_path / "results"),
            "--name",
            "template",
        ],
        hooks=hooks,
    ).to_end()
    assert code == 0, output[-3000:]
    assert leftovers == []
    trials = pd.read_csv(tmp_path / "results" / "template" / "trials.csv")
    assert len(trials) == 2 and trials["final_central_accuracy"].between(0, 1).all()  # its evaluate_fn's accuracy
    assert trials["checkpoint"].notna().all()
    with open(hooks["FEDSWEEP_TEST_FAIL_ONCE"]) as f:
        failed = f.read()
    log = read_round_log(hooks["FEDSWEEP_TEST_ROUND_LOG"])
    assert rounds_of(log, failed) == [1, 2], log  # failed in round 2, resumed from round 1's checkpoint


def test_the_niid_bench_sweep_file_runs_end_to_end_and_lays_out_its_table(tmp_path):
    """configs/niid_bench.yaml reduced to SCAFFOLD x Dirichlet(0.5) and #C=2 x 2 seeds, 1 round of 1 epoch on
    synthetic data: each set reaches its trials' data, and table.csv/.md hold mean and std over the seeds."""
    code, output, leftovers = Run(
        [
            "--config",
            os.path.join(REPO, "configs", "niid_bench.yaml"),
            "--set",
            "dataset=synthetic",
            "--set",
            "synthetic-size=600",
            "--set",
            "num-server-rounds=1",
            "--set",
            "local-epochs=1",
            "--grid",
            "strategy=scaffold",
            "--grid",
            "partitioning=Dirichlet(0.5),#C=2",
            "--grid",
            "seed=0,1",
            "--storage-path",
            str(tmp_path / "results"),
            "--name",
            "niid",
        ]
    ).to_end()
    assert code == 0, output[-3000:]
    assert leftovers == []
    exp = tmp_path / "results" / "niid"
    trials = pd.read_csv(exp / "trials.csv")
    assert len(trials) == 4 and set(trials["status"]) == {"TERMINATED"}
    data_sets = pd.read_csv(exp / "partitions" / "data_sets.csv")
    assert sorted(zip(data_sets["partition"], data_sets["seed"])) == [
        ("dirichlet", 0),
        ("dirichlet", 1),
        ("pathological", 0),
        ("pathological", 1),
    ]
    table = pd.read_csv(exp / "table.csv")
    assert table["partitioning"].tolist() == ["Dirichlet(0.5)", "#C=2"] and (table["n"] == 2).all()
    for _, cell in table.iterrows():
        mine = trials[trials["partitioning"] == cell["partitioning"]]
        assert cell["mean"] == pytest.approx(100 * mine["best_central_accuracy"].mean())
        assert cell["std"] == pytest.approx(100 * mine["best_central_accuracy"].std())
    assert table[["published_mean", "published_std"]].values.tolist() == [[68.08, 0.96], [49.42, 2.18]]
    header = "| partitioning | scaffold | scaffold (published) |"
    assert (exp / "table.md").read_text().startswith(header) and header in output


def test_an_app_with_its_own_loop_is_told_which_metrics_it_has(tmp_path):
    """A strategy that loops itself has no central metrics: the default metric is refused, naming what it has."""
    own_loop = os.path.join(REPO, "tests", "apps", "own_loop")
    code, output, leftovers = Run(
        [
            "--app",
            own_loop,
            "--set",
            "pool_size=4",
            "--grid",
            "num-server-rounds=1,2",
            "--storage-path",
            str(tmp_path / "results"),
            "--name",
            "wrong",
        ]
    ).to_end()
    assert code == 2 and "reports no central_accuracy per round; it reports fed_mean" in output, output[-2000:]
    assert leftovers == []
    assert not (tmp_path / "results" / "wrong").exists()
