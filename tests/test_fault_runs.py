"""Fault injection at seeded random points over many short runs: every faulty run must end as the fault-free one.

A slow test (marker `slow`, deselected by default; it starts local Rays, a two-node cluster and `python -m
fl_core` processes), in its quick form unless FAULT_RUNS=full:

    python -m pytest -m slow tests/test_fault_runs.py -s                   # 1 run per kind, about 5 minutes
    FAULT_RUNS=full python -m pytest -m slow tests/test_fault_runs.py -s   # bench/README's table, ~9 minutes

FAULT_SEED (default 0) seeds the fault points, FAULT_KINDS (comma-separated) picks kinds, FAULT_RUNS_OUT names
the results file (default: the test's temp folder). The full form: 3 runs of raise, die, hang, storage and
driver, 7 faults per raise and die run, 2 per hang run, 2 node runs; the quick one: 1 run per kind, 3 raise
and 3 die faults, 1 hang.

Every run is the built-in CIFAR-10 app on synthetic data (8 nodes, 4 sampled per
round for training and 4 for federated evaluation, 5 rounds) behind the fault
injector of tests/faults.py, which faults on cue from its `fault-plan` run-config
key. The fault points (round, node, phase, delay, kill moment) are drawn from
`--seed` alone, so the same seed injects the same faults. Kinds:

* raise: the ClientApp raises after its work, at `--faults-per-run` random
  (round, node, phase) points, the node one of those sampled that round and phase;
* die: the worker process SIGKILLs itself 0-0.1 s into a training call (mid-fit),
  `--faults-per-run` points per run;
* hang: the ClientApp sleeps for an hour; `--client-timeout` (10 s) ends the call
  (`--hang-faults-per-run` points per run: each costs the timeout);
* storage: the checkpoint write of a random round (2..last) is refused with
  OSError 28 (fl_core.callbacks.save_checkpoint patched in this process): the run
  must stop with that error, leaving the previous round's checkpoint loadable and
  no temp file; the run is then resumed in-process from it;
* driver: `python -m fl_core --app <faulty app> ...` as a subprocess, SIGKILLed
  0-0.3 s after a random round (1..last-2) was printed, then
  `python -m fl_core --resume DIR`; the Ray processes it leaves are ended;
* node: a two-node cluster started with `ray start` (head and second node, 1 CPU
  each, own ports and temp dirs, token authentication off; the helpers of
  tests/support/cluster.py), `python -m fl_core --address HEAD
  --num-client-cpus 1`, so that the pool has one worker on each node (checked
  with the state API); the second node's raylet is SIGKILLed 0-0.3 s after a
  random round (1..last-4) was printed. The run must go on with the head's
  worker (the dead worker's calls run again there; once Ray declares the node
  dead, about 16 s here after 5 missed health checks, the pool retires that
  worker and says so on stderr) and end with exit status 0, exactly as the
  reference; a fresh node then joins for the next run. Its runs are longer
  (synthetic-size 8000, 6 local epochs, 6 rounds: about 3 s a round) so that
  Ray's verdict comes while the run still goes: the kind's check wants the
  pool's line saying the worker was retired. (A run that loses every client
  worker stops with NodeLostError: tests/test_ray_cluster.py's node-loss tests
  show Tune then retrying the trial from its checkpoint.)

raise, die, hang and storage run in this process on one local Ray (2 CPUs, so
2 client workers); their reference is one fault-free run_app of the same run.
driver compares with a fault-free `python -m fl_core` run, node with one on the
same two-node cluster (the CLI's server uses every local core for central
evaluation: compare like with like). A run is identical when its final weights
and its per-round model metrics (everything but timings and retry counts) are
bit-identical to its reference's.

Columns of the table (one row per kind):

* runs: runs made of the kind;
* faults injected: faults that hit a run (raise/die/hang: the injector's marker
  files, one per faulted attempt; storage: refused writes; driver/node: kills
  that landed while the run was going);
* runs completed: runs that reached their last round (after --resume for the
  kinds that stop the run);
* rounds lost: rounds finished before the fault that the run had to do again.
  driver: rounds the killed run had printed minus the round its checkpoint
  held (the CLI writes a round's checkpoint before printing its line, so this
  is 0 with a checkpoint every round); node: every printed round if the run
  did not go on to the end; storage: rounds whose
  checkpoint write had succeeded minus the round of the checkpoint left (the
  refused round was never stored, so it is not counted); raise/die/hang (no
  checkpoint): every round of a run that did not complete;
* identical runs: runs whose final weights and per-round model metrics are
  bit-identical to the reference's;
* median cost s: per fault, the faulty run's wall time (killed or stopped run
  plus resumed run) minus the reference's, divided by the run's faults; median
  over the kind's runs. Informative only: it includes the start-up of the
  resumed process (Python, Ray, data) and is noisy on a shared machine;
* checks failed: runs that failed the kind's own check (storage: the run did
  not stop with OSError 28, or the previous checkpoint was not intact, or a temp
  file was left; node: no worker on the second node, no kill, or no line of
  the pool retiring the lost worker).

The test fails if any run is not identical or not completed, if rounds were
lost, or if a check failed; never for timing. Results (every run's plan,
outcome and timing) are written after every kind; the table is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KINDS = ("raise", "die", "hang", "storage", "driver", "node")
NODES = 8
ROUNDS = 5
RUN_CONFIG = {
    "dataset": "synthetic",
    "synthetic-size": 800,
    "fraction-train": 0.5,
    "fraction-evaluate": 0.5,
    "min-train-nodes": 2,
    "min-evaluate-nodes": 2,
    "num-server-rounds": ROUNDS,
    "local-epochs": 1,
    "lr": 0.05,
    "eval-batch-size": 200,
}
# The node kind: longer rounds (about 3 s with two workers here), so that the rounds left after the kill outlast
# the time Ray takes to declare a SIGKILLed raylet's node dead (about 16 s here: 5 failed health checks, 3 s
# apart), when the pool retires the lost worker.
NODE_ROUNDS = 6
NODE_RUN_CONFIG = {**RUN_CONFIG, "synthetic-size": 8000, "local-epochs": 6, "num-server-rounds": NODE_ROUNDS}
CLI_TIMEOUT_S = 600  # one `python -m fl_core` run (about a minute on a busy 2-core machine)
ROUND_WAIT_S = 400  # for the round line after which a kill is due
KILL_DELAY_S = 0.3  # kills land 0..this after the round line (rounds take about 0.3 s here)
ROUND_LINE = re.compile(r"^round\s+(\d+)/(\d+)\s")
# The pool's line when it retires a worker lost with its node (fl_core.pool.WorkerPool._retire).
WORKER_RETIRED = re.compile(r"was lost with its node .*the run goes on with \d+ worker")
RAY_TMPDIRS: list[str] = []  # temp dirs of the local Rays of CLI runs, removed at the end


# ---------------------------------------------------------------------------
# Comparing runs


def compare(arrays, history, reference) -> dict:
    """Whether (arrays, history) equal the reference ServerState/RunEnd-like (arrays, history) bit for bit.

    The history is compared without timings and retry counts (tests.conftest.model_metrics).
    """
    from tests.conftest import model_metrics, same_arrays

    weights = same_arrays(arrays, reference[0])
    metrics = model_metrics(history) == model_metrics(reference[1])
    return {"identical_weights": weights, "identical_metrics": metrics, "identical": weights and metrics}


def stray_files(folder: str) -> list[str]:
    """Files of a run folder left by an interrupted atomic write (fl_core.checkpoint.write_atomically)."""
    from fl_core.checkpoint import TEMP_PREFIX, TEMP_SUFFIX

    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder) if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX))


# ---------------------------------------------------------------------------
# Fault points


def fault_plan(rng: random.Random, kind: str, count: int, points: list) -> list[dict]:
    """`count` faults of `kind` at distinct random points (die: training calls only)."""
    if kind == "die":
        points = [p for p in points if p[1] == "train"]
    chosen = rng.sample(points, min(count, len(points)))
    plan = []
    for server_round, phase, node in sorted(chosen):
        fault = {"kind": kind, "round": server_round, "node": node, "phase": phase}
        if kind == "die":
            fault["delay"] = round(rng.uniform(0.0, 0.1), 3)
        plan.append(fault)
    return plan


# ---------------------------------------------------------------------------
# In-process runs (raise, die, hang, storage)


@contextlib.contextmanager
def output_to(path: str):
    """Send this process's stdout and stderr (file descriptors 1 and 2, so Ray's and torch's too) to `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def tail(path: str, chars: int = 3000) -> str:
    """The end of a log file ('' if absent)."""
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return f.read()[-chars:]


class InProcess:
    """run_app of the faulty app in this process, on the local Ray this script started."""

    def __init__(self, app_dir: str, work: str) -> None:
        self.app_dir, self.work = app_dir, work
        self.count = 0

    def run(self, name: str, faults=(), callbacks=(), resume=None, **settings):
        """(RunEnd or the exception it raised, wall seconds, fault dir, log path) of one run."""
        from fl_core import RunSettings, fuse_run_config, load_app_folder, run_app
        from tests.faults import plan

        self.count += 1
        fault_dir = os.path.join(self.work, f"{self.count:03d}-{name}")
        os.makedirs(fault_dir)
        log_path = fault_dir + ".log"
        app = load_app_folder(self.app_dir)
        values = {**RUN_CONFIG, "fault-plan": plan(*faults), "fault-dir": fault_dir}
        engine = RunSettings(pool_size=NODES, **settings)
        t0 = time.perf_counter()
        try:
            with output_to(log_path):
                outcome = run_app(app, fuse_run_config(app, values), engine, callbacks=list(callbacks), resume=resume)
        except Exception as exc:  # noqa: BLE001  (the outcome is recorded, the next run goes on)
            outcome = exc
        return outcome, time.perf_counter() - t0, fault_dir, log_path


def error_text(exc: BaseException) -> str:
    """'Type: message' (first 1500 characters)."""
    return f"{type(exc).__name__}: {exc}"[:1500]


def failed_run(exc: BaseException, log_path: str) -> dict:
    """The record fields of a run that raised: not completed, not identical, its error and its log's tail."""
    return {
        "completed": False,
        "identical": False,
        "identical_weights": False,
        "identical_metrics": False,
        "error": error_text(exc),
        "log_tail": tail(log_path),
    }


def client_fault_run(runner: InProcess, reference, kind: str, index: int, plan: list[dict], settings: dict) -> dict:
    """One raise/die/hang run: its plan, the faults that hit, retries and whether it ended as the reference."""
    outcome, wall, fault_dir, log_path = runner.run(f"{kind}{index}", plan, **settings)
    markers = sorted(os.listdir(fault_dir))
    hit = sorted({int(name.split("-")[0][len("fault") :]) for name in markers})
    record = {
        "kind": kind,
        "run": index,
        "plan": plan,
        "settings": settings,
        "injected": len(markers),
        "planned": len(plan),
        "missed": [plan[i] for i in range(len(plan)) if i not in hit],
        "wall_s": wall,
    }
    if isinstance(outcome, Exception):
        record.update(failed_run(outcome, log_path), rounds_lost=ROUNDS)
        return record
    record.update(
        completed=len(outcome.history) == ROUNDS,
        rounds_lost=0,
        retries=sum(row.get("retries", 0) for row in outcome.history),
        dropped=sum(row.get("train_dropped", 0) + row.get("fed_dropped", 0) for row in outcome.history),
        **compare(outcome.state.arrays, outcome.history, reference),
    )
    if record["retries"] != record["injected"]:
        record["note"] = f"{record['retries']} retries counted for {record['injected']} faulted attempts"
    if not record["identical"]:
        record["log_tail"] = tail(log_path)
    return record


def storage_run(runner: InProcess, reference, index: int, rng: random.Random) -> dict:
    """A checkpoint write refused at a random round: the run stops, the previous checkpoint is intact, resume."""
    import fl_core.callbacks
    from fl_core import load_checkpoint
    from fl_core.callbacks import CheckpointWriter
    from fl_core.checkpoint import CHECKPOINT_FILE

    refused_round = rng.randint(2, ROUNDS)
    folder = os.path.join(runner.work, f"storage{index}-run")
    real_save = fl_core.callbacks.save_checkpoint
    refused = []

    def refusing_save(state, directory):
        if state.round == refused_round and not refused:
            refused.append(state.round)
            raise OSError(28, "No space left on device (injected by test_fault_runs)")
        return real_save(state, directory)

    fl_core.callbacks.save_checkpoint = refusing_save
    try:
        stopped, wall1, _, log1 = runner.run(f"storage{index}", callbacks=[CheckpointWriter(folder)])
    finally:
        fl_core.callbacks.save_checkpoint = real_save
    record = {
        "kind": "storage",
        "run": index,
        "plan": {"refused_round": refused_round},
        "injected": len(refused),
        "planned": 1,
        "missed": [] if refused else [refused_round],
    }
    checks = {"stopped_with_oserror_28": isinstance(stopped, OSError) and stopped.errno == 28}
    try:
        saved = load_checkpoint(folder)
        checks["previous_checkpoint_round"] = saved.round
    except Exception as exc:  # noqa: BLE001
        saved = None
        checks["previous_checkpoint_round"] = None
        checks["load_error"] = error_text(exc)
    checks["files_left"] = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    checks["no_temp_files"] = checks["files_left"] == [CHECKPOINT_FILE]
    checks["intact"] = saved is not None and saved.round == refused_round - 1
    record["checks"] = checks
    record["rounds_lost"] = (refused_round - 1) - (saved.round if saved is not None else 0)
    if not isinstance(stopped, Exception):
        record["log_tail"] = tail(log1)
    resumed, wall2, _, log2 = runner.run(f"storage{index}-resume", callbacks=[CheckpointWriter(folder)], resume=saved)
    record["wall_s"] = wall1 + wall2
    if isinstance(resumed, Exception):
        record.update(failed_run(resumed, log2))
    else:
        record.update(
            completed=len(resumed.history) == ROUNDS, **compare(resumed.state.arrays, resumed.history, reference)
        )
    record["check_failed"] = not (checks["stopped_with_oserror_28"] and checks["intact"] and checks["no_temp_files"])
    return record


# ---------------------------------------------------------------------------
# Runs of `python -m fl_core` (driver, node)


class CliRun:
    """`python -m fl_core ARGS` in a session of its own; its round lines are followed as they are printed."""

    def __init__(self, args: list[str], env: dict, log_path: str) -> None:
        from tests.support.cluster import _stat

        self.since = _stat(os.getpid())[3]
        self.log_path = log_path
        self.stderr_file = open(log_path + ".stderr", "w")  # noqa: SIM115  (closed by end())
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fl_core", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.stderr_file,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.rounds = 0
        self.wall: float | None = None
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.log_path, "w") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                match = ROUND_LINE.match(line)
                with self._cond:
                    self.lines.append(line)
                    if match:
                        self.rounds = max(self.rounds, int(match.group(1)))
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_round(self, server_round: int, timeout: float) -> bool:
        """True once round `server_round` was printed; False if the run ended or `timeout` passed first."""
        with self._cond:
            self._cond.wait_for(lambda: self.rounds >= server_round or not self._reader.is_alive(), timeout)
            return self.rounds >= server_round

    def wait(self, timeout: float) -> int | None:
        """Exit status, or None if still running after `timeout`."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self.wall = time.perf_counter() - self.t0
        self._reader.join(timeout=30)
        return code

    def stderr(self) -> str:
        """What it wrote on stderr so far."""
        self.stderr_file.flush()
        return tail(self.log_path + ".stderr", 1_000_000)

    def end(self) -> int:
        """Kill it if still running, then end what its session left (Ray's daemons of a killed local driver).

        Returns how many such processes were found still alive 5 s after it ended.
        """
        from tests.support.cluster import session_processes, terminate

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.wall = self.wall or time.perf_counter() - self.t0
        deadline = time.time() + 5
        while session_processes(self.proc.pid, self.since) and time.time() < deadline:
            time.sleep(0.25)
        left = session_processes(self.proc.pid, self.since)
        if left:
            survivors = terminate(left, grace_s=5)
            if survivors:
                print(
                    f"warning: processes {sorted(survivors)} of `python -m fl_core` survived SIGKILL", file=sys.stderr
                )
        self.stderr_file.close()
        self.proc.stdout.close()
        return len(left)


def cli_env(local: bool) -> dict:
    """Environment of a `python -m fl_core` run; a local Ray gets its own temp dir (RAY_TMPDIR)."""
    from tests.support.cluster import ray_env

    extra = {}
    if local:
        extra["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="fbf", dir="/tmp")  # short: Ray's socket paths
        RAY_TMPDIRS.append(extra["RAY_TMPDIR"])
    return ray_env(**extra)


def run_config_flags(run_config: dict) -> list[str]:
    """A run config as the CLI's per-key flags."""
    flags = ["--pool-size", str(NODES)]
    for key, value in run_config.items():
        flags += [f"--{key}", str(value)]
    return flags


def cli_to_end(args: list[str], env: dict, log_path: str) -> tuple[int | None, float, str, int]:
    """(exit status or None on timeout, wall s, stderr tail, leftover processes) of a CLI run let finish."""
    run = CliRun(args, env, log_path)
    code = run.wait(CLI_TIMEOUT_S)
    wall = run.wall if run.wall is not None else time.perf_counter() - run.t0
    err = run.stderr()[-3000:]
    left = run.end()
    return code, wall, err, left


def cli_reference(args: list[str], env: dict, folder: str, log_path: str) -> tuple[tuple, float]:
    """((arrays, history), wall s) of a fault-free CLI run into `folder`; RuntimeError if it fails."""
    from fl_core import load_checkpoint

    code, wall, err, _ = cli_to_end([*args, "--checkpoint-dir", folder], env, log_path)
    if code != 0:
        raise RuntimeError(f"the fault-free `python -m fl_core` run failed ({code}):\n{err}")
    state = load_checkpoint(folder)
    return (state.arrays, state.history), wall


def final_outcome(folder: str, code: int | None, rounds: int, reference: tuple) -> dict:
    """Whether the CLI run in `folder` (exit status `code`) completed its `rounds`, and how it compares."""
    from fl_core import load_checkpoint

    try:
        final = load_checkpoint(folder)
        return {"completed": code == 0 and final.round == rounds, **compare(final.arrays, final.history, reference)}
    except Exception as exc:  # noqa: BLE001
        return {
            "completed": False,
            "identical": False,
            "identical_weights": False,
            "identical_metrics": False,
            "error": error_text(exc),
        }


def killed_and_resumed(
    kind: str,
    index: int,
    rng: random.Random,
    args: list[str],
    resume_args: list[str],
    env: dict,
    work: str,
    reference: tuple,
    kill,
    rounds: int,
    last_kill_round: int,
) -> dict:
    """A CLI run killed by `kill(run)` 0-KILL_DELAY_S after a random round line (1..`last_kill_round`), then
    `--resume`d to its last round `rounds` and compared with `reference`."""
    from fl_core import load_checkpoint

    kill_round = rng.randint(1, last_kill_round)
    delay = round(rng.uniform(0.0, KILL_DELAY_S), 3)
    folder = os.path.join(work, f"{kind}{index}-run")
    record = {"kind": kind, "run": index, "plan": {"after_round": kill_round, "delay_s": delay}, "planned": 1}
    run = CliRun([*args, "--checkpoint-dir", folder], env, os.path.join(work, f"{kind}{index}.log"))
    injected = 0
    try:
        if run.wait_round(kill_round, ROUND_WAIT_S):
            time.sleep(delay)
            if run.proc.poll() is None:
                kill(run)
                injected = 1
                record["killed_at_s"] = time.perf_counter() - run.t0
        record["injected"] = injected
        code = run.wait(CLI_TIMEOUT_S)
        record["exit_status"] = code
        record["stderr_tail"] = run.stderr()[-1500:]
    finally:
        record["processes_left"] = run.end()
    wall1 = run.wall
    record["rounds_printed"] = run.rounds
    record["temp_files_after_kill"] = stray_files(folder)
    try:
        held = load_checkpoint(folder).round
    except Exception:  # noqa: BLE001  (no checkpoint yet: the run starts again)
        held = 0
    record["checkpoint_round"] = held
    record["rounds_lost"] = max(0, run.rounds - held)
    if not injected:
        record["note"] = "the run was not killed (it ended or no round line came)"
    if held:
        resume = [*resume_args, "--resume", folder]
    else:  # nothing to resume from: the same command again
        resume = [*args, "--checkpoint-dir", folder]
    code, wall2, err, left = cli_to_end(resume, env, os.path.join(work, f"{kind}{index}-resume.log"))
    record["wall_s"] = wall1 + wall2
    record["processes_left"] += left
    record["resume_exit_status"] = code
    record.update(final_outcome(folder, code, rounds, reference))
    if code != 0:
        record["resume_stderr_tail"] = err
    record["temp_files_at_end"] = stray_files(folder)
    return record


# ---------------------------------------------------------------------------
# Kinds


def summarize(kind: str, records: list[dict], reference_wall: float | None) -> dict:
    """One row of the table."""
    costs = []
    for r in records:
        if r.get("injected") and reference_wall is not None and r.get("wall_s") is not None:
            r["cost_s_per_fault"] = (r["wall_s"] - reference_wall) / r["injected"]
            costs.append(r["cost_s_per_fault"])
    return {
        "kind": kind,
        "runs": len(records),
        "faults injected": sum(r.get("injected", 0) for r in records),
        "runs completed": sum(bool(r.get("completed")) for r in records),
        "rounds lost": sum(r.get("rounds_lost") or 0 for r in records),
        "identical runs": sum(bool(r.get("identical")) for r in records),
        "median cost s": statistics.median(costs) if costs else None,
        "checks failed": sum(bool(r.get("check_failed")) for r in records),
    }


def in_process_kinds(kinds: list[str], args, app_dir: str, work: str, results: dict, save) -> None:
    """raise, die, hang and storage on one local Ray, against one fault-free run."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="fbf", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, logging_level="ERROR", log_to_driver=False)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    try:
        runner = InProcess(app_dir, os.path.join(work, "in_process"))
        os.makedirs(runner.work)
        print("fault-free in-process run ...", flush=True)
        end, wall, _, log = runner.run("reference")
        if isinstance(end, Exception):
            raise RuntimeError(f"the fault-free run failed: {error_text(end)}\n{tail(log)}")  # noqa: TRY004
        reference = (end.state.arrays, end.history)
        results["references"]["in_process"] = {"wall_s": wall, "rounds": len(end.history)}
        from tests.faults import sampled_points

        points = sampled_points(0, RUN_CONFIG, NODES, ROUNDS)
        for kind in kinds:
            records = []
            for index in range(args.runs_per_kind):
                rng = random.Random(f"{args.seed}:{kind}:{index}")
                if kind == "storage":
                    record = storage_run(runner, reference, index, rng)
                else:
                    count = args.hang_faults_per_run if kind == "hang" else args.faults_per_run
                    settings = {"client_timeout": args.client_timeout} if kind == "hang" else {}
                    record = client_fault_run(
                        runner, reference, kind, index, fault_plan(rng, kind, count, points), settings
                    )
                records.append(record)
                print(
                    f"  {kind} run {index}: {record.get('injected', 0)} fault(s), completed {record.get('completed')},"
                    f" identical {record.get('identical')}, {record['wall_s']:.1f} s",
                    flush=True,
                )
            results["kinds"][kind] = {"summary": summarize(kind, records, wall), "runs": records}
            save()
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def driver_kind(args, app_dir: str, work: str, results: dict, save) -> None:
    """The driver SIGKILLed after a random round, then --resume; against a fault-free CLI run."""
    work = os.path.join(work, "driver")
    os.makedirs(work)
    flags = ["--app", app_dir, *run_config_flags(RUN_CONFIG)]
    print("fault-free `python -m fl_core` run ...", flush=True)
    reference, ref_wall = cli_reference(
        flags, cli_env(True), os.path.join(work, "reference-run"), os.path.join(work, "reference.log")
    )
    results["references"]["cli_local"] = {"wall_s": ref_wall}
    records = []
    for index in range(args.runs_per_kind):
        rng = random.Random(f"{args.seed}:driver:{index}")
        env = cli_env(True)

        def kill(run):
            os.kill(run.proc.pid, signal.SIGKILL)

        record = killed_and_resumed("driver", index, rng, flags, [], env, work, reference, kill, ROUNDS, ROUNDS - 2)
        records.append(record)
        print(
            f"  driver run {index}: killed after round {record['rounds_printed']} printed, checkpoint round "
            f"{record['checkpoint_round']}, identical {record.get('identical')}, {record['wall_s']:.1f} s",
            flush=True,
        )
    results["kinds"]["driver"] = {"summary": summarize("driver", records, ref_wall), "runs": records}
    save()


class TwoNodes:
    """A head and a second node started with `ray start` (1 CPU each); the second can be replaced by a fresh one."""

    def __init__(self) -> None:
        from tests.support.cluster import Head, extra_node, ray_env, started

        self._extra_node = extra_node
        self.head = started(lambda: Head(num_cpus=1, env=ray_env()), "the head")
        self._names = iter("bcdefghijklmnopqrstuvwxyz")
        self._node_cm = None
        try:
            self.node = self._add()
        except BaseException:
            self.head.stop()
            raise
        self.address = f"127.0.0.1:{self.head.gcs_port}"

    def _add(self):
        self._node_cm = self._extra_node(self.head, next(self._names), 1)
        return self._node_cm.__enter__()

    def replace_node(self) -> None:
        """End what is left of the second node (waiting until the cluster has dropped it); a fresh node joins."""
        cm, self._node_cm = self._node_cm, None
        cm.__exit__(None, None, None)
        self.node = self._add()

    def workers(self) -> dict:
        """actor id -> node id of every ClientAppWorker the cluster has seen (alive or not)."""
        reply = self.head.get(
            "/api/v0/actors",
            detail="1",
            limit="10000",
            filter_keys="class_name",
            filter_predicates="=",
            filter_values="ClientAppWorker",
        )
        return {a["actor_id"]: a.get("node_id") for a in reply["data"]["result"]["result"]}

    def placement(self, seen: dict) -> tuple[list[str], bool]:
        """(nodes of the workers started since `seen`, whether that is the head and the second node)."""
        nodes = {n for a, n in self.workers().items() if a not in seen}
        return sorted(nodes), nodes == {self.head.node_id, self.node.node_id}

    def stop(self) -> None:
        """Stop the second node, then the head (exactly their processes)."""
        try:
            if self._node_cm is not None:
                self._node_cm.__exit__(None, None, None)
        finally:
            left = self.head.stop()
            if left:
                print(f"warning: processes {sorted(left)} of the head survived SIGKILL", file=sys.stderr)


def node_run(
    cluster: TwoNodes, index: int, rng: random.Random, flags: list[str], env: dict, work: str, reference: tuple
) -> dict:
    """The second node's raylet SIGKILLed after a random round: the run goes on with the head's worker and must end
    exactly as the reference, without stopping; a fresh node then joins for the next run."""

    seen = cluster.workers()
    lost = cluster.node
    kill_round = rng.randint(1, NODE_ROUNDS - 4)
    delay = round(rng.uniform(0.0, KILL_DELAY_S), 3)
    folder = os.path.join(work, f"node{index}-run")
    record = {
        "kind": "node",
        "run": index,
        "plan": {"after_round": kill_round, "delay_s": delay},
        "planned": 1,
        "lost_node": lost.node_id,
    }
    run = CliRun([*flags, "--checkpoint-dir", folder], env, os.path.join(work, f"node{index}.log"))
    injected = 0
    try:
        if run.wait_round(1, ROUND_WAIT_S):
            record["worker_nodes"], record["worker_on_each_node"] = cluster.placement(seen)
        if run.wait_round(kill_round, ROUND_WAIT_S):
            time.sleep(delay)
            if run.proc.poll() is None:
                os.kill(lost.raylet_pid(), signal.SIGKILL)
                injected = 1
                record["killed_at_s"] = time.perf_counter() - run.t0
        record["injected"] = injected
        code = run.wait(CLI_TIMEOUT_S)
        record["exit_status"] = code
        stderr = run.stderr()
        record["stderr_tail"] = stderr[-1500:]
    finally:
        record["processes_left"] = run.end()
    record["wall_s"] = run.wall
    record["rounds_printed"] = run.rounds
    retired = [line.strip() for line in stderr.splitlines() if WORKER_RETIRED.search(line)]
    record["worker_retired_line"] = retired[-1] if retired else None
    record["rounds_lost"] = 0 if code == 0 else run.rounds  # a run that goes on redoes nothing
    record.update(final_outcome(folder, code, NODE_ROUNDS, reference))
    record["check_failed"] = not (record.get("worker_on_each_node") and injected and retired)
    cluster.replace_node()
    return record


def node_kind(args, app_dir: str, work: str, results: dict, save) -> None:
    """A worker node's raylet SIGKILLed mid-run on a two-node cluster: the run goes on and ends identical."""
    from tests.support.cluster import ray_env

    work = os.path.join(work, "node")
    os.makedirs(work)
    records: list[dict] = []
    results["kinds"]["node"] = {"summary": None, "runs": records}
    print("starting a two-node Ray cluster (head and node, 1 CPU each) ...", flush=True)
    cluster = TwoNodes()
    env = ray_env()
    flags = [
        "--app",
        app_dir,
        "--address",
        cluster.address,
        "--num-client-cpus",
        "1",
        *run_config_flags(NODE_RUN_CONFIG),
    ]
    ref_wall = None
    try:
        seen = cluster.workers()
        print("fault-free `python -m fl_core --address` run ...", flush=True)
        reference, ref_wall = cli_reference(
            flags, env, os.path.join(work, "reference-run"), os.path.join(work, "reference.log")
        )
        nodes, on_both = cluster.placement(seen)
        results["references"]["cli_cluster"] = {
            "wall_s": ref_wall,
            "worker_nodes": nodes,
            "worker_on_each_node": on_both,
        }
        if not on_both:
            raise RuntimeError(
                f"the fault-free run's workers ran on nodes {nodes}, not on the head "
                f"{cluster.head.node_id} and the node {cluster.node.node_id}"
            )
        for index in range(args.node_runs):
            record = node_run(cluster, index, random.Random(f"{args.seed}:node:{index}"), flags, env, work, reference)
            records.append(record)
            print(
                f"  node run {index}: raylet killed after round {record['plan']['after_round']}; run exit "
                f"{record.get('exit_status')}, worker retired: {bool(record.get('worker_retired_line'))}, "
                f"identical {record.get('identical')}; {record['wall_s']:.1f} s",
                flush=True,
            )
            results["kinds"]["node"]["summary"] = summarize("node", records, ref_wall)
            save()
    finally:
        cluster.stop()
        results["kinds"]["node"]["summary"] = summarize("node", records, ref_wall) if records else None
        save()


# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_faulty_runs_end_as_the_fault_free_ones(tmp_path):
    """Inject the faults, print the table, write the results; fails if a run differs, stops or lost rounds."""
    full = os.environ.get("FAULT_RUNS") == "full"
    args = argparse.Namespace(
        seed=int(os.environ.get("FAULT_SEED", "0")),
        runs_per_kind=3 if full else 1,
        faults_per_run=7 if full else 3,
        hang_faults_per_run=2 if full else 1,
        node_runs=2 if full else 1,
        client_timeout=10.0,  # of hang runs: a fresh worker's first call can take seconds
        out=os.environ.get("FAULT_RUNS_OUT") or str(tmp_path / "fault_runs.json"),
    )
    kinds = [k.strip() for k in os.environ.get("FAULT_KINDS", ",".join(KINDS)).split(",") if k.strip()]
    assert set(kinds) <= set(KINDS), f"FAULT_KINDS: kinds are {', '.join(KINDS)}"

    import pandas as pd

    from tests.faults import faulty_app

    t0 = time.perf_counter()
    work = tempfile.mkdtemp(prefix="bench-faults-")
    app_dir = faulty_app(os.path.join(work, "faulty_app"))
    results = {
        "settings": vars(args),
        "run_config": RUN_CONFIG,
        "node_run_config": NODE_RUN_CONFIG,
        "nodes": NODES,
        "references": {},
        "kinds": {},
        "logs": work,
    }

    def save():
        """Write the results so far (atomically: a run cut short leaves the last whole file)."""
        results["wall_s"] = time.perf_counter() - t0
        with open(args.out + ".tmp", "w") as f:
            json.dump(results, f, indent=1, default=str)
        os.replace(args.out + ".tmp", args.out)

    in_process = [k for k in KINDS if k in kinds and k in ("raise", "die", "hang", "storage")]
    steps = []
    if in_process:
        steps.append(("in-process", lambda: in_process_kinds(in_process, args, app_dir, work, results, save)))
    if "driver" in kinds:
        steps.append(("driver", lambda: driver_kind(args, app_dir, work, results, save)))
    if "node" in kinds:
        steps.append(("node", lambda: node_kind(args, app_dir, work, results, save)))
    errors = []
    for name, step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001  (a kind that cannot run is reported; the others go on)
            errors.append(f"{name}: {error_text(exc)}")
            print(f"{name} kinds failed: {error_text(exc)}", file=sys.stderr, flush=True)
    results["errors"] = errors
    for folder in RAY_TMPDIRS:
        shutil.rmtree(folder, ignore_errors=True)
    rows = [entry["summary"] for entry in results["kinds"].values() if entry.get("summary")]
    total = sum(row["faults injected"] for row in rows)
    failed = bool(errors) or any(
        row["identical runs"] < row["runs"]
        or row["runs completed"] < row["runs"]
        or row["rounds lost"] > 0
        or row["checks failed"] > 0
        for row in rows
    )
    missed = [
        (r["kind"], r["run"], m) for e in results["kinds"].values() for r in e["runs"] for m in r.get("missed", [])
    ]
    results.update(total_faults=total, passed=not failed, missed_faults=missed, load_average_at_end=os.getloadavg())
    save()

    table = pd.DataFrame(rows).set_index("kind") if rows else pd.DataFrame()
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print()
        print(table.to_string(float_format=lambda x: f"{x:.1f}"))
    print(
        f"\ntotal: {total} faults injected in {sum(r['runs'] for r in rows)} runs; wall time "
        f"{results['wall_s'] / 60:.1f} min; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in results['load_average_at_end'])}"
    )
    if missed:
        print(f"warning: {len(missed)} planned fault(s) never hit a call: {missed}")
    for error in errors:
        print(f"error: {error}")
    print(f"results written to {args.out}; logs in {work}")
    assert not failed, "a run differed, did not complete, lost rounds, or a check failed (see the results file)"
