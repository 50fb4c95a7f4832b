"""Sweeps on real Ray clusters started with `ray start`: jobs, two nodes, a node lost mid-sweep.

Every test here talks to real Ray processes, as a user would:

* a head started with `ray start --head` (loopback, its own ports and temp
  dir, token authentication explicitly off), shared by the module;
* sweeps submitted with the documented `ray job submit ... -- python
  tune_search.py ...`;
* a second node joined with `ray start --address`, which must run the clients;
* that node's raylet killed mid-sweep: without retries the job fails at once
  with the trial listed as errored; with retries and a replacement node, every
  trial finishes from its checkpoints (never a hang);
* a node holding one of the client workers of `python -m fl_core --address`
  (a run alone on the cluster) killed: the run goes on with the others;
* a head with token authentication: clients without the token are refused.

Only processes started here are ever signalled (never `ray stop`, which stops
every Ray on the machine): tests/support/cluster.py says how they are found.

Takes about 3.5 minutes on 2 cores. Deselect with `-m "not cluster and not slow"` (a `-m` replaces the
default `not slow`).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import uuid

import pandas as pd
import pytest
import yaml

from tests.support.cluster import (
    HOOKED_JOB,
    RAY,
    REPO,
    TWO_TRIALS,
    Head,
    RayNode,
    _output,
    check_results,
    extra_node,
    ray_env,
    ray_job_submit,
    run,
    started,
    sweep_command,
)

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds Ray's processes through /proc"),
    pytest.mark.skipif(not os.path.exists(RAY), reason=f"no `ray` command next to {sys.executable}"),
]


# The GCS declares a silent node dead after this many failed health checks this far apart: 5 x 1 s instead of
# Ray's 5 x 3 s, so that the node-loss tests wait seconds less for the verdict (a check still waits up to Ray's
# 10 s for an answer, so a slow node on a loaded machine is not declared dead).
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}


@pytest.fixture(scope="module")
def head():
    """A head with 2 CPUs for this module; at the end exactly its processes are stopped, and none may be left."""
    node = started(lambda: Head(num_cpus=2, env=ray_env(**FAST_NODE_DEATH)), "the head")
    try:
        yield node
    finally:
        assert node.stop() == set(), "processes of the head survived SIGKILL"


# ---------------------------------------------------------------------------
# Token authentication


def test_token_authentication(tmp_path):
    """A head started with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN: `ray job submit` without that token is refused.

    Ray's own messages name the problem and the remedy; a refused client submits nothing.
    HOME is a fresh folder for the head and the clients, so that no
    ~/.ray/auth_token of the developer is read, and none is written.
    """
    home = str(tmp_path)
    token = secrets.token_hex(32)
    node = started(
        lambda: Head(num_cpus=1, env=ray_env(HOME=home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)), "the token head"
    )

    def submit(submission_id: str, env: dict) -> subprocess.CompletedProcess:
        return run(
            [
                RAY,
                "job",
                "submit",
                "--address",
                node.url,
                "--submission-id",
                submission_id,
                "--",
                "python",
                "-c",
                "print('token accepted')",
            ],
            env,
            timeout=120,
        )

    try:
        missing = submit("token-missing", ray_env(HOME=home))  # RAY_AUTH_MODE=disabled: no token sent
        assert missing.returncode == 1, _output(missing)
        assert "Missing authentication token" in missing.stderr and "RAY_AUTH_TOKEN" in missing.stderr
        nowhere = submit("token-nowhere", ray_env(HOME=home, RAY_AUTH_MODE="token"))  # no token file, no variable
        assert nowhere.returncode == 1, _output(nowhere)
        assert "couldn't find an authentication token" in nowhere.stderr
        wrong = submit("token-wrong", ray_env(HOME=home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32)))
        assert wrong.returncode == 1 and "Invalid authentication token" in wrong.stderr, _output(wrong)
        accepted = submit("token-ok", ray_env(HOME=home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))
        assert accepted.returncode == 0 and "token accepted" in accepted.stdout, _output(accepted)
        assert "Job 'token-ok' succeeded" in accepted.stdout
        assert not os.path.exists(os.path.join(home, ".ray", "auth_token"))
        # The token in a file instead (~/.ray/auth_token by default; here RAY_AUTH_TOKEN_PATH).
        token_file = tmp_path / "auth_token"
        token_file.write_text(token)
        listed = run(
            [RAY, "job", "list", "--address", node.url],
            ray_env(HOME=home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file)),
            timeout=120,
        )
        assert listed.returncode == 0 and "token-ok" in listed.stdout, _output(listed)
        assert not any(f"token-{name}" in listed.stdout for name in ("missing", "nowhere", "wrong")), listed.stdout
    finally:
        assert node.stop() == set(), "processes of the token head survived SIGKILL"


# ---------------------------------------------------------------------------
# One node: jobs


def test_ray_job_submit_runs_sweep(head, tmp_path):
    """`ray job submit --runtime-env runtime_env.yaml --working-dir . -- python tune_search.py ...` succeeds."""
    storage = str(tmp_path / "results")
    result = run(ray_job_submit(head, sweep_command(storage, "cli", *TWO_TRIALS)), ray_env())
    assert result.returncode == 0, _output(result)
    assert "succeeded" in result.stdout + result.stderr
    check_results(os.path.join(storage, "cli"), trials=2, rounds=2)


# ---------------------------------------------------------------------------
# Two nodes


# The head (2 CPUs) can hold only the trial's own bundle of 2 CPUs (--server-cpus 2); the client bundle
# (1 CPU) must then go to the 1-CPU second node: every client runs there, on data from the head's object store.
TWO_NODE_TRIAL = ["--server-cpus", "2", "--num-client-cpus", "1"]


def test_clients_run_on_second_node(head, tmp_path):
    """A sweep whose client bundles only fit a second node: it finishes, and every client worker ran there."""
    storage = str(tmp_path / "results")
    submission_id = f"fedsweep-two-nodes-{uuid.uuid4().hex[:8]}"
    with extra_node(head, "b", num_cpus=1) as node:
        entrypoint = sweep_command(storage, "two_nodes", *TWO_TRIALS, *TWO_NODE_TRIAL)
        result = run(ray_job_submit(head, entrypoint, submission_id=submission_id), ray_env())
        assert result.returncode == 0, _output(result)
        check_results(os.path.join(storage, "two_nodes"), trials=2, rounds=2)
        job_id = head.job_id(submission_id)
        workers = head.actors("ClientAppWorker", job_id)
        assert len(workers) >= 2, workers  # at least one per trial (K = 1)
        assert {w["node_id"] for w in workers} == {node.node_id}, (workers, node.node_id)
        trainables = head.actors("ImplicitFunc", job_id)  # Tune's actor for a function trainable: the server
        assert trainables and {t["node_id"] for t in trainables} == {head.node_id}, trainables


# ---------------------------------------------------------------------------
# A node lost mid-sweep


def _round_log(path: str) -> list[tuple[str, int]]:
    """(trial id, round) lines written by tests/hooked_sweep.py's round log."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(t, int(r)) for t, r in (line.strip().split(",") for line in f if line.strip())]


def round_log_env(tmp_path, log_path: str) -> str:
    """A copy of runtime_env.yaml that also gives the job's driver FEDSWEEP_TEST_ROUND_LOG; returns its path.

    With it, run the sweep as `python tests/hooked_sweep.py` (hooked_sweep_command).
    """
    with open(os.path.join(REPO, "runtime_env.yaml")) as f:
        runtime_env = yaml.safe_load(f)
    runtime_env.setdefault("env_vars", {})["FEDSWEEP_TEST_ROUND_LOG"] = log_path
    path = tmp_path / "runtime_env.yaml"
    path.write_text(yaml.safe_dump(runtime_env))
    return str(path)


def long_rounds(num_rounds: int) -> list[str]:
    """Trial settings for two nodes with ~0.5-1 s rounds (as in test_tune_search's kill test): a kill lands inside."""
    return [
        *TWO_NODE_TRIAL,
        "--set",
        "synthetic-size=3000",
        "--set",
        "fraction-train=0.5",
        "--set",
        f"num-server-rounds={num_rounds}",
    ]


def kill_raylet_after_first_round(node: RayNode, submit: subprocess.Popen, log_path: str) -> None:
    """Once a trial has finished (and checkpointed) round 1 with its clients on `node`, SIGKILL that node's raylet."""
    deadline = time.time() + 180
    while not _round_log(log_path):
        assert submit.poll() is None, "the job ended before the node could be killed"
        assert time.time() < deadline, "no round finished within 180 s"
        time.sleep(0.1)
    os.kill(node.raylet_pid(), signal.SIGKILL)


def test_node_killed_without_retries_fails_clearly(head, tmp_path):
    """Node lost mid-trial with --max-failures 0: the job ends FAILED at once, the report lists the errored trial."""
    storage = str(tmp_path / "results")
    log_path = str(tmp_path / "rounds.log")
    # One trial only: a second one could never be placed after the loss, and would wait (see the next test).
    entrypoint = sweep_command(
        storage, "no_retry", "--grid", "local-epochs=1", *long_rounds(6), "--max-failures", "0", script=HOOKED_JOB
    )
    command = ray_job_submit(head, entrypoint, runtime_env=round_log_env(tmp_path, log_path))
    out = open(tmp_path / "submit.log", "w+")
    submit = None
    try:
        with extra_node(head, "e", num_cpus=1) as lost:
            submit = subprocess.Popen(command, cwd=REPO, env=ray_env(), stdout=out, stderr=subprocess.STDOUT)
            kill_raylet_after_first_round(lost, submit, log_path)
            code = submit.wait(timeout=180)
        out.seek(0)
        output = out.read()
        assert code == 1, output[-4000:]  # `ray job submit` exits with the job's status: FAILED
        assert "1 trial(s) failed" in output, output[-4000:]
        table = pd.read_csv(os.path.join(storage, "no_retry", "trials.csv"))
        assert len(table) == 1 and table["status"].tolist() == ["ERROR"], table
        assert 1 <= table["rounds"].iloc[0] < 6, table  # its checkpointed rounds are kept for --resume
    finally:
        if submit is not None and submit.poll() is None:
            submit.kill()
            submit.wait()
        out.close()


def test_node_killed_mid_sweep_then_replaced(head, tmp_path):
    """SIGKILL the clients' node's raylet mid-trial, then a new node joins: every trial ends, every round once.

    Without a node that can hold the client bundle again, Tune keeps the retried trial
    pending ("Ignore this message if the cluster is autoscaling ...") for as long as
    the driver runs: README.md documents that case and its remedy.
    """
    num_rounds = 6
    storage = str(tmp_path / "results")
    log_path = str(tmp_path / "rounds.log")
    submission_id = f"fedsweep-node-loss-{uuid.uuid4().hex[:8]}"
    entrypoint = sweep_command(
        storage, "node_loss", *TWO_TRIALS, *long_rounds(num_rounds), "--max-failures", "3", script=HOOKED_JOB
    )
    command = ray_job_submit(
        head, entrypoint, runtime_env=round_log_env(tmp_path, log_path), submission_id=submission_id
    )
    out = open(tmp_path / "submit.log", "w+")
    submit = None
    try:
        with extra_node(head, "c", num_cpus=1) as lost:
            lost_id = lost.node_id
            submit = subprocess.Popen(command, cwd=REPO, env=ray_env(), stdout=out, stderr=subprocess.STDOUT)
            kill_raylet_after_first_round(lost, submit, log_path)
            before_kill = _round_log(log_path)
        # Node c's other processes are gone too and the GCS has declared it dead; now a new node joins.
        with extra_node(head, "d", num_cpus=1) as replacement:
            code = submit.wait(timeout=300)
            out.seek(0)
            output = out.read()
            assert code == 0, output[-4000:]
            assert "succeeded" in output and "errored" in output  # Tune reports the failed trial, then retries it
            check_results(os.path.join(storage, "node_loss"), trials=2, rounds=num_rounds)
            log = _round_log(log_path)
            for trial_id in {t for t, _ in log}:
                rounds = [r for t, r in log if t == trial_id]
                assert sorted(set(rounds)) == list(range(1, num_rounds + 1)), (trial_id, rounds)
            # The interrupted trial continued after its last checkpoint, not from round 1.
            interrupted = before_kill[-1][0]
            done = [r for t, r in before_kill if t == interrupted]
            redone = [r for t, r in log[len(before_kill) :] if t == interrupted]
            assert 2 <= redone[0] <= done[-1] + 1, (done, redone)
            # Client work ran on the lost node, then (after the retry) on the replacement only.
            nodes = {w["node_id"] for w in head.actors("ClientAppWorker", head.job_id(submission_id))}
            assert nodes == {lost_id, replacement.node_id}, nodes
    finally:
        if submit is not None and submit.poll() is None:
            submit.kill()
            submit.wait()
        out.close()


def test_node_lost_under_a_run_alone_the_run_goes_on(head, tmp_path):
    """`python -m fl_core --address HEAD` with a client worker on a node whose raylet is SIGKILLed: it goes on.

    The lost worker's calls run again on the others (same inputs, same
    results); once Ray declares the node dead (seconds after the kill with the
    head's FAST_NODE_DEATH checks, about 16 s with Ray's defaults),
    the pool retires that worker and says so; the run ends normally with every
    round. (Inside a Tune trial a lost node stops the trial instead, for Tune's
    retry: the tests above.)
    """
    num_rounds = 15  # about 1 s each: the run outlasts Ray's verdict on the node
    folder = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "fl_core",
        "--address",
        f"127.0.0.1:{head.gcs_port}",
        "--dataset",
        "synthetic",
        "--synthetic-size",
        "3000",
        "--pool-size",
        "4",
        "--fraction-train",
        "0.75",
        "--fraction-evaluate",
        "0.75",
        "--min-train-nodes",
        "1",
        "--min-evaluate-nodes",
        "1",
        "--local-epochs",
        "4",
        "--num-server-rounds",
        str(num_rounds),
        "--max-parallel-clients",
        "3",
        "--checkpoint-dir",
        str(folder),
    ]
    err = open(tmp_path / "stderr.log", "w+")
    run_proc = None
    try:
        with extra_node(head, "f", num_cpus=1) as lost:
            run_proc = subprocess.Popen(command, cwd=REPO, env=ray_env(), stdout=subprocess.PIPE, stderr=err, text=True)
            for line in run_proc.stdout:  # its round lines; the kill once round 1 is done (and checkpointed)
                if line.startswith("round   1/"):
                    break
            reply = head.get(
                "/api/v0/actors",
                detail="1",
                limit="10000",
                filter_keys=["class_name", "state"],
                filter_predicates=["=", "="],
                filter_values=["ClientAppWorker", "ALIVE"],
            )
            workers = reply["data"]["result"]["result"]
            assert lost.node_id in {w["node_id"] for w in workers}, workers  # a worker to lose
            os.kill(lost.raylet_pid(), signal.SIGKILL)
            rest = run_proc.stdout.read()
            code = run_proc.wait(timeout=300)
        err.seek(0)
        output = err.read()
        assert code == 0, output[-4000:]
        assert "was lost with its node" in output and "the run goes on with 2 worker(s)" in output, output[-4000:]
        assert f"round  {num_rounds}/{num_rounds}" in rest and "done: " in rest, rest[-2000:]
        from fl_core import load_checkpoint

        assert load_checkpoint(str(folder)).round == num_rounds
    finally:
        if run_proc is not None and run_proc.poll() is None:
            run_proc.kill()
            run_proc.wait()
        err.close()
