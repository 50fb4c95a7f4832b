"""The app in examples/: Flower's PyTorch template on fedsweep and on Flower's engine.

Also a strategy with a round loop of its own (tests/apps/own_loop), which fedsweep cannot take over.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import numpy as np
import torch

import fl_core
from tests.conftest import model_metrics, same_arrays

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "examples", "quickstart-pytorch")
OWN_LOOP = os.path.join(REPO, "tests", "apps", "own_loop")


def run(app_dir: str, overrides: dict, *, callbacks=(), resume=None, **settings) -> fl_core.RunEnd:
    """Run the app in `app_dir` in this process's Ray with run-config `overrides` and engine `settings` (4 nodes)."""
    app = fl_core.load_app_folder(app_dir)
    engine = fl_core.RunSettings(**{"pool_size": 4, **settings})
    run_config = fl_core.fuse_run_config(app, overrides)  # run_app sets its seed key to the engine's seed
    return fl_core.run_app(app, run_config, engine, callbacks=list(callbacks), resume=resume)


# ---------------------------------------------------------------------------
# quickstart-pytorch: Flower's template, unchanged but for its data; fedsweep runs its strategy.start


QUICKSTART_CONFIG = {"dataset": "synthetic", "synthetic-size": 400, "num-server-rounds": 2}


def test_quickstart_gets_central_metrics_and_a_checkpoint_every_round(ray_local, tmp_path):
    saved = tmp_path / "final_model.pt"
    end = run(QUICKSTART, {**QUICKSTART_CONFIG, "final-model": str(saved)})
    assert [row["round"] for row in end.history] == [1, 2]
    for row in end.history:
        assert row["train_clients"] == 4 and row["fed_clients"] == 2  # FedAvg trains all, evaluates half
        assert np.isfinite(row["train_loss"]) and row["train_samples"] > 0
        assert 0 <= row["fed_eval_acc"] <= 1 and np.isfinite(row["fed_eval_loss"])
        assert 0 <= row["central_accuracy"] <= 1 and row["central_round"] == row["round"]  # its evaluate_fn
    assert end.state is not None and end.state.round == 2 and end.state.strategy == "FedAvg"
    from pytorchexample.task import Net  # importable: loading the app put its folder on sys.path

    final = torch.load(saved)
    Net().load_state_dict(final)  # the template's final save, to the run config's file, after the last round
    assert all(np.array_equal(final[k].numpy(), end.state.arrays[k].numpy()) for k in final)


def fl_core_command(*args: str) -> list[str]:
    """`python -m fl_core` of the quickstart app on 4 nodes of the synthetic set, 4 rounds of 2 local epochs."""
    return [
        sys.executable,
        "-m",
        "fl_core",
        "--app",
        QUICKSTART,
        "--dataset",
        "synthetic",
        "--synthetic-size",
        "2000",
        "--pool-size",
        "4",
        "--local-epochs",
        "2",
        "--num-server-rounds",
        "4",
        *args,
    ]


def test_quickstart_killed_in_round_2_resumes_bit_identically(ray_local, tmp_path):
    """`python -m fl_core` SIGKILLed in round 2, then `--resume`: it ends as the same run uninterrupted (run here, in
    the session's Ray: results do not depend on the process or the number of workers)."""
    from tests.support.sweeps import reap

    ray_tmp = tempfile.mkdtemp(prefix="fswq", dir="/tmp")  # short: Ray's socket paths have a length limit
    tag = os.urandom(8).hex()
    env = {
        **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        "RAY_AUTH_MODE": "disabled",
        "RAY_TMPDIR": ray_tmp,
        "FEDSWEEP_TEST_RUN_TAG": tag,
        "PYTHONUNBUFFERED": "1",
    }
    killed = tmp_path / "killed"
    try:
        proc = subprocess.Popen(
            fl_core_command("--checkpoint-dir", str(killed)),
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("round   1/4"):  # round 1 is checkpointed: kill the whole run during round 2
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
        reap(tag, proc.pid)
        assert fl_core.load_checkpoint(str(killed)).round in (1, 2)
        command = fl_core_command("--resume", str(killed))
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    resumed = fl_core.load_checkpoint(str(killed))
    uninterrupted = run(
        QUICKSTART, {"dataset": "synthetic", "synthetic-size": 2000, "local-epochs": 2, "num-server-rounds": 4}
    ).state
    assert resumed.round == uninterrupted.round == 4
    assert same_arrays(resumed.arrays, uninterrupted.arrays)
    assert model_metrics(resumed.history) == model_metrics(uninterrupted.history)
    assert all("central_accuracy" in row for row in resumed.history)


def run_own_loop(tmp_path, loop: str) -> tuple[str, list[dict]]:
    """`python -m fl_core` of tests/apps/own_loop on 4 nodes (the command line's output, in a process of its own);
    its output and metrics.csv rows."""
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "disabled"}
    out = tmp_path / loop
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fl_core",
            "--app",
            OWN_LOOP,
            "--pool-size",
            "4",
            "--loop",
            loop,
            "--checkpoint-dir",
            str(out),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    with open(out / "metrics.csv") as f:
        return done.stdout, list(csv.DictReader(f))


def test_a_strategy_with_its_own_loop_runs_and_says_why_it_has_no_checkpoints(tmp_path):
    output, rows = run_own_loop(tmp_path, "own")
    assert [row["round"] for row in rows] == ["1", "2"] and not (tmp_path / "own" / "fl_checkpoint.npz").exists()
    assert "fed_mean" in rows[0] and "central_mean" not in rows[0]  # what the replies show, nothing central
    notes = [line for line in output.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "strategy OwnLoopFedAvg overrides Strategy.start" in notes[0], output


def test_a_strategy_whose_start_calls_super_gets_fedsweeps_loop(tmp_path):
    output, rows = run_own_loop(tmp_path, "super")
    assert [float(row["central_mean"]) for row in rows] == [2.5, 5.0]  # nodes add 1..4: FedAvg adds 2.5 a round
    assert fl_core.load_checkpoint(str(tmp_path / "super")).round == 2 and "note: " not in output


def test_one_process_runs_apps_whose_loaders_read_different_keys(ray_local):
    # The built-in app's @shared loader stays registered after its run; own_loop's run config has none of its keys,
    # so the driver leaves that loader alone instead of failing on a KeyError.
    builtin = run(None, {"dataset": "synthetic", "synthetic-size": 400, "num-server-rounds": 1})
    other = run(OWN_LOOP, {"loop": "super"})
    assert len(builtin.history) == 1
    assert [row["central_mean"] for row in other.history] == [2.5, 5.0]


def test_quickstart_runs_under_flowers_engine(tmp_path):
    # A subprocess: Flower's engine starts and shuts down Ray itself, which would end this session's Ray.
    ray_tmp = tempfile.mkdtemp(prefix="fswf-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_TMPDIR=ray_tmp)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "fl_core",
                "--app",
                QUICKSTART,
                "--engine",
                "flower",
                "--dataset",
                "synthetic",
                "--synthetic-size",
                "400",
                "--pool-size",
                "4",
                "--num-server-rounds",
                "2",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "[ROUND 1/2]" in log and "[ROUND 2/2]" in log, log[-3000:]
    assert log.count("aggregate_train: Received 4 results and 0 failures") == 2, log[-3000:]
    assert "'eval_acc'" in log  # the clients' evaluation was aggregated
    assert os.listdir(tmp_path) == []  # final-model "" saves nothing, and the synthetic set needs no files
