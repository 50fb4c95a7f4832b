"""What the bench scripts share: provenance and the results file, the seed's job, the tight loop, Ray start-up,
child processes (the environment of a checkout, an earlier commit exported, `python -m fl_core` timed from
outside), memory polling and steady-round medians.

bench/ is on sys.path when a script runs (`python bench/NAME.py`), so the scripts import this as `common`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import deque

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
# fl_core and cifar10_app of this checkout before an installed copy, but after PYTHONPATH: a child process
# measuring another checkout (child_env) has that checkout's folders there.
_AFTER_PYTHONPATH = 1 + len([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
for _path in (os.path.join(REPO, "apps", "cifar10"), REPO):
    if _path not in sys.path:
        sys.path.insert(_AFTER_PYTHONPATH, _path)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local Ray clusters of a benchmark need no token

# The seed's job: the built-in app, 100 clients, 10 trained and 10 validated a round, 1 local epoch, lr 0.01,
# batch 32, central evaluation every round (the app's other defaults).
SEED_JOB = {"fraction-train": 0.1, "fraction-evaluate": 0.1, "local-epochs": 1, "lr": 0.01, "batch-size": 32}
PHASES = ("train_seconds", "fed_seconds", "central_seconds")  # the engine's timing keys, in round order


def git_commit(repo: str = REPO) -> str | None:
    """The checkout's commit, with "+dirty" when tracked files differ from it; None without git."""
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def versions() -> dict:
    """Library versions, machine, date and commit of this run."""
    import flwr
    import ray
    import torch

    return {
        "python": platform.python_version(),
        "flwr": flwr.__version__,
        "ray": ray.__version__,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "git_commit": git_commit(),
        "load_average": os.getloadavg(),
    }


def write_results(path: str, payload: dict) -> None:
    """Write a results file atomically, creating its folder: a run cut short leaves the last whole file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(payload, f, indent=1, default=str)
    os.replace(path + ".tmp", path)


def steady(values: list[float]) -> float:
    """Median over rounds 2..N: round 1 carries start-up work (all of them for a one-round run)."""
    return statistics.median(values[1:] or values)


def job(overrides: dict, pool_size: int = 100, seed: int = 0, where: str = "bench", **settings):
    """(app, fused run config, RunSettings) of the built-in app: the seed's job with `overrides`, checked."""
    import fl_core

    app = fl_core.load_app_folder(None)
    run_config = fl_core.fuse_run_config(app, {**SEED_JOB, "seed": seed, **overrides}, where=where)
    run_settings = fl_core.RunSettings(pool_size=pool_size, seed=seed, **settings)
    app.check(run_config, pool_size)
    return app, run_config, run_settings


def start_ray(num_cpus: int | None = None, num_gpus: int = 0, verbose: bool = False) -> None:
    """A local Ray cluster of `num_cpus` CPUs (all cores by default) and `num_gpus` GPUs, quiet unless verbose."""
    import logging

    import ray

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    ray.init(
        num_cpus=num_cpus or os.cpu_count(),
        num_gpus=num_gpus,
        include_dashboard=False,
        logging_level=logging.INFO if verbose else logging.WARNING,
    )


def sampled_partitions(run_config: dict, pool_size: int, seed: int, rounds: int) -> list[tuple[list, list]]:
    """The partitions the engine trains and validates each round (its NodeSampler's draws, train first)."""
    from cifar10_app.strategy import clients_per_round

    from fl_core.grid import NODE_ID_OFFSET
    from fl_core.seeding import NodeSampler

    k_train = clients_per_round(run_config, pool_size)
    evaluates = run_config["fraction-evaluate"] > 0 and run_config["val-ratio"] > 0  # as cifar10_app.strategy
    k_eval = max(int(pool_size * run_config["fraction-evaluate"]), run_config["min-evaluate-nodes"]) if evaluates else 0
    sampler, node_ids, out = NodeSampler(seed), [NODE_ID_OFFSET + p for p in range(pool_size)], []
    for server_round in range(1, rounds + 1):
        sampler.start_round(server_round)
        train_ids = sampler.sample(node_ids, k_train)
        eval_ids = sampler.sample(node_ids, k_eval) if k_eval else []
        out.append(([n - NODE_ID_OFFSET for n in train_ids], [n - NODE_ID_OFFSET for n in eval_ids]))
    return out


def tight_loop(run_config: dict, data, sampled: list[tuple[list, list]]) -> list[dict]:
    """The engine's work in one thread, no Ray or Flower (same clients, seeds, FedAvg); per round: phase seconds,
    training samples, global weights and central accuracy."""
    import torch
    from cifar10_app.task import client_seed, evaluate, initial_model, place_model, to_tensor, train

    threads, rc = torch.get_num_threads(), run_config
    torch.set_num_threads(1)
    try:
        model = place_model(initial_model(rc["seed"]), "cpu")  # the app's layout (channels_last on CPU)
        global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        test_x, test_y = to_tensor(data.test_images), torch.from_numpy(data.test_labels)
        rounds = []
        for server_round, (train_ids, eval_ids) in enumerate(sampled, start=1):
            t0 = time.perf_counter()
            updates = []
            for pid in train_ids:
                images, labels = data.client_arrays(pid, "train")
                model.load_state_dict(global_state)
                train(
                    model,
                    to_tensor(images),
                    torch.from_numpy(labels),
                    epochs=rc["local-epochs"],
                    batch_size=rc["batch-size"],
                    lr=rc["lr"],
                    momentum=rc["momentum"],
                    weight_decay=rc["weight-decay"],
                    augment=rc["augment"],
                    generator=torch.Generator().manual_seed(client_seed(rc["seed"], server_round, pid)),
                )
                updates.append(({k: v.detach().clone() for k, v in model.state_dict().items()}, len(labels)))
            total = sum(n for _, n in updates)
            global_state = {k: sum(state[k] * n for state, n in updates) / total for k in global_state}  # FedAvg
            model.load_state_dict(global_state)
            t1 = time.perf_counter()
            for pid in eval_ids:
                images, labels = data.client_arrays(pid, "val")
                evaluate(model, to_tensor(images), torch.from_numpy(labels), rc["eval-batch-size"])
            t2 = time.perf_counter()
            _, accuracy = evaluate(model, test_x, test_y, rc["eval-batch-size"])
            t3 = time.perf_counter()
            rounds.append(
                {
                    "round": server_round,
                    "seconds": t3 - t0,
                    **dict(zip(PHASES, (t1 - t0, t2 - t1, t3 - t2))),
                    "train_samples": total,
                    "central_accuracy": accuracy,
                    "weights": global_state,
                }
            )
        return rounds
    finally:
        torch.set_num_threads(threads)


def child_env(repo: str = REPO, **extra: str) -> dict:
    """Environment of a child process (and its Ray workers) running checkout `repo`: the checkout, its
    apps/cifar10 and bench/ before any installed copy; output unbuffered, so lines arrive when printed."""
    paths = [repo, os.path.join(repo, "apps", "cifar10"), BENCH_DIR, os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "PYTHONUNBUFFERED": "1",
        "RAY_AUTH_MODE": "disabled",
        **extra,
    }


@contextlib.contextmanager
def checkouts(commit: str | None):
    """[(label, folder)] to measure: this checkout, after an earlier `commit` when given (exported with
    `git archive` into a temporary folder: the repository itself is untouched)."""
    if not commit:
        yield [("current", REPO)]
        return
    with tempfile.TemporaryDirectory(prefix=f"fedsweep-{commit[:12]}-") as folder:
        archive = subprocess.run(["git", "-C", REPO, "archive", commit], capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(folder, filter="data")
        yield [(commit, folder), ("current", REPO)]


class PeakMemory:
    """Polls the RSS (and with uss=True the private USS) of the processes `find()` returns; keeps the peaks."""

    def __init__(self, find, interval: float = 0.1, uss: bool = False) -> None:
        """`find()` returns psutil.Process objects; polled every `interval` s in a thread started by `with`."""
        self.find, self.interval, self.uss = find, interval, uss
        self.peak_rss = self.peak_uss = 0
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        """Sample until stopped; processes that end between two samples are skipped."""
        import psutil

        while not self._stop.is_set():
            try:
                procs = self.find()
            except psutil.NoSuchProcess:  # it ended since the last sample
                procs = []
            for proc in procs:
                try:
                    mem = proc.memory_full_info() if self.uss else proc.memory_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                self.pids.add(proc.pid)
                self.peak_rss = max(self.peak_rss, mem.rss)
                self.peak_uss = max(self.peak_uss, getattr(mem, "uss", 0))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        """Start polling."""
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        """Stop polling."""
        self._stop.set()
        self._thread.join()


def stream(cmd: list[str], cwd: str, env: dict, timeout: float = 3600, echo: bool = False) -> dict:
    """Run `cmd`, its lines stamped (seconds since spawn) as they arrive; also the exit's seconds (`wall_s`),
    its own peak RSS (not its children's) and pid. RuntimeError with its last lines unless it exits 0; past
    `timeout` it is killed with everything in its session."""
    import psutil

    lines, tail = [], deque(maxlen=60)
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    watchdog = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL))
    watchdog.start()
    try:
        with PeakMemory(lambda: [psutil.Process(proc.pid)]) as memory:
            for line in proc.stdout:
                now = time.perf_counter() - start
                lines.append((round(now, 3), line.rstrip("\n")))
                tail.append(line)
                if echo:
                    print(f"{now:7.2f}  {line}", end="", flush=True)
            proc.wait()
    finally:
        watchdog.cancel()
    if proc.returncode != 0:
        why = " (killed: past its timeout)" if proc.returncode == -signal.SIGKILL else ""
        raise RuntimeError(f"{' '.join(cmd[:3])} exited {proc.returncode}{why}:\n{''.join(tail)}")
    return {"lines": lines, "wall_s": time.perf_counter() - start, "peak_rss": memory.peak_rss, "pid": proc.pid}


def run_cli(flags: dict, repo: str = REPO, timeout: float = 3600, echo: bool = False, env=None, inspect=None) -> dict:
    """`stream` of checkout `repo`'s `python -m fl_core` with `flags` ({name: value}) and a temporary
    --checkpoint-dir, plus the rows of its metrics.csv and `inspect(folder)` of the run folder, if given."""
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="bench-cli-") as folder:
        argv = [x for k, v in flags.items() for x in (f"--{k}", str(v))]
        if echo:
            print(f"$ python -m fl_core {' '.join(argv)}", flush=True)
        cmd = [sys.executable, "-m", "fl_core", *argv, "--checkpoint-dir", folder]
        run = stream(cmd, repo, env or child_env(repo), timeout, echo)
        run.update(command=" ".join(argv), rows=pd.read_csv(os.path.join(folder, "metrics.csv")).to_dict("records"))
        run["inspected"] = inspect(folder) if inspect else None
    return run
