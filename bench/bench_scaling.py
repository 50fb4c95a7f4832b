"""Round time against the number of workers: a model built from measured per-phase costs, checked against engine runs.

    python bench/bench_scaling.py --data-dir /work/data-cifar --out scaling.json --plot scaling.png
    python bench/bench_scaling.py --data-dir /work/data-cifar --measure 1,2 --out scaling.json   # + engine runs, K=1, 2
    python bench/bench_scaling.py --quick --out smoke.json --plot smoke.png    # synthetic data, about a minute
    python bench/bench_scaling.py --data-dir DIR --costs-from scaling.json --measure 1 \
        --measure-configs iid:commit:message
    RUN=scaling bash bench/run_gpu.sh                    # on the 16-core device machine: --measure 1,2,4,8,14

A round of the built-in app (apps/cifar10) is: the fit phase (C sampled clients
train on W workers), the federated-evaluation phase (C_eval clients validate on
the same workers), then central evaluation of the test set (10,000 images,
`eval-batch-size` 500 a shard: 20 shards). This predicts the round time for K
worker CPUs, "today" (central evaluation serial in the server process on its 1
thread, as inside a Tune trial; the phases' calls handed to the workers in
message order) and "with the changes" (the shards spread over the workers in
contiguous groups, `--central-eval-on workers`; the calls handed out largest
first, `fl_core.grid.dispatch_order`), for IID and Dirichlet (alpha 0.5)
partitions, C = 10 and 50 of P = 100 clients.

1. Costs, measured here in this process with torch at 1 thread (every number is
   the median of `--repeats`):
   * fit(n): the app's ClientApp called in-process with a train message (1 local
     epoch, batch 32, lr 0.01: the bench_flower job) for nodes of a Dirichlet
     split whose train sizes n are nearest `--fit-sizes`; fitted as a + b*n by
     least squares of the relative residuals. The ClientApp call is everything the worker does but Ray:
     weights in, the partition made a tensor, training, weights out.
   * eval(n): the same for evaluate messages against the nodes' validation sizes.
   * central: the whole test set as the server evaluated it before the shards
     (tensor made once, then every round: weights loaded, 20 batches of 500) at
     1, 2, ... threads up to the cores (at most 16); and the app's
     ShardedEvaluation called in-process (every shard in turn, each loading the
     weights and making its 500 images a tensor: what `--central-eval-on server`
     does) at 1 thread, divided by the shards for one shard.
   * overhead per call: what a call costs on the engine beyond the same call
     in-process. One worker (Ray of 1 CPU) of the engine's own WorkerPool and
     RayGrid is sent train and evaluate messages one at a time
     (`send_and_receive([message])`) and the same messages are run in-process
     right after; overhead = median of (through the worker - in-process). The
     same for central-evaluation calls (the engine's `fl_core.central._on_workers`
     on that worker) of one shard and of all shards: a cost per call and one
     per shard (a shard ran about 3 ms slower on a worker than in-process). This
     is the Ray round trip with the weights both ways, the (de)serialisation
     and the driver's bookkeeping of one call; the model adds it to every call
     on the worker that runs it (the driver's own share is serial in truth;
     with 10 to 50 calls of tens of ms that is not where the time goes).
   * configure/aggregate: the app's strategy (Flower's FedAvg) configure_train,
     aggregate_train, configure_evaluate, aggregate_evaluate on C messages and
     replies of this model, in-process; fitted as a + b*C.
2. Partition sizes: the app's own split (`cifar10_app.data.load_data`: its
   `partition_indices` and `split_validation`, val-ratio 0.1) of P nodes; clients sampled per round as
   the engine samples them (`fl_core.seeding.NodeSampler`: train draw, then
   evaluate draw, in message order).
3. Simulation, per round over `--sim-rounds` sampled rounds: a phase is list
   scheduling of its calls (each cost(n) + overhead) onto W workers in dispatch
   order (message order, or largest first: the sizes the engine knows are those
   of each node's earlier replies of the same kind, `--lpt-knows replies`; a node
   not seen yet goes first, in message order; `--lpt-knows partitions`: every
   size known), the makespan; plus configure and aggregate. Central: today the
   whole test set at 1 thread; with the changes max over the G = min(shards, W)
   contiguous groups of (shards in the group x (one shard + its overhead on a
   worker) + overhead of a call).
   W is the pool the engine starts: min(K, clients a round uses) in the table;
   min(K, --max-parallel-clients = K) = K in the measured runs.
4. The table: mean seconds per round by phase, the share that is central
   evaluation, speedup against K = 1 of the same mode, and today / with the
   changes; JSON (`--out`) and a plot (`--plot`: round time against K).
5. `--measure K1,K2,..`: the real engine (`fl_core.run_app`, the bench_flower
   job, 100 clients, 10 trained and 10 validated a round, `--measure-rounds`
   rounds) in a fresh subprocess per run with `ray.init(num_cpus=K)`,
   `max_parallel_clients=K`, `server_cpus=1`, for each configuration of
   `--measure-configs` (partition:central place:dispatch; "message" patches
   `fl_core.grid.dispatch_order` in the subprocess to keep the message order;
   central "commit" runs the engine and app of `--commit`, by default 7eed9c4,
   the last commit before both changes, from a `git archive` of it: today's
   engine itself, predicted as "today"). Measured (median of rounds 2..N per
   phase) against predicted for the same sampled clients. The server mode of
   the new engine runs the same 20 shards one after another in the server (each
   makes its 500 images a tensor again), so its prediction is the shards in
   turn, not the old whole-set figure. `--costs-from` reuses the costs of an
   earlier results file (a model from another machine, or engine runs added
   later without measuring again).

Other work on the machine spoils every figure here. The script records how
many cores other processes (not its own, nor its runs' Ray processes) kept busy
during the cost measurement and each engine run, and flags a run where that was
0.3 or more; `--wait-quiet S` waits up to S seconds before each for them to
stop. No figure is checked against a threshold: this prints what it measured.
On a machine with fewer cores than K + 1 the K workers and the driver share
cores and the measured K is not K CPUs: the output says so. Needs matplotlib for
--plot and psutil for the other-work figures. CPU only (the GPU is hidden from
this process and its subprocesses).
"""

from __future__ import annotations

import argparse
import functools
import heapq
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU benchmark, on a GPU machine too (set before torch loads)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
sys.path[:0] = [BENCH_DIR, REPO_ROOT, os.path.join(REPO_ROOT, "apps", "cifar10")]  # no install needed
import numpy as np  # noqa: E402  (after the environment and sys.path above)
from provenance import median_time, versions, write_results  # noqa: E402

MODES = ("today", "changes")
PHASES = ("train_seconds", "fed_seconds", "central_seconds", "seconds")
TODAY_COMMIT = "7eed9c4"  # the engine before central evaluation on the workers and LPT dispatch (b2aad04 added both)
# partition:central:dispatch of the engine runs, in priority order (commit: the engine of --commit, today's).
DEFAULT_CONFIGS = (
    "dirichlet:commit:message,dirichlet:workers:lpt,iid:commit:message,iid:workers:lpt,"
    "dirichlet:server:message,dirichlet:workers:message"
)

# The engine run of one measured configuration; prints one JSON line (per-round metrics, load).
ENGINE_RUN = r"""
import json, logging, os, sys
args = json.loads(sys.argv[1])
import ray
import fl_core, fl_core.grid, fl_core.pool, fl_core.settings
if args["dispatch"] == "message" and hasattr(fl_core.grid, "dispatch_order"):
    fl_core.grid.dispatch_order = lambda sizes: list(range(len(sizes)))  # the engine before LPT
if args["dispatch"] == "message" and hasattr(fl_core.pool, "plan_groups"):  # groups in message order, sizes unused
    _groups = fl_core.pool.plan_groups
    fl_core.pool.plan_groups = lambda indices, sizes, *a, **k: _groups(indices, None, *a, **k)
from fl_core import Callback, RunSettings, fuse_run_config, load_app_folder, run_app
logging.getLogger("flwr").setLevel(logging.WARNING)
rows = []
KEYS = ("round", "seconds", "train_seconds", "fed_seconds", "central_seconds", "train_samples", "train_clients",
        "fed_clients", "central_accuracy")
class Rounds(Callback):
    def on_round_end(self, event):
        rows.append({k: event.metrics[k] for k in KEYS if k in event.metrics})
app = load_app_folder(None)
rc = fuse_run_config(app, args["run_config"], where="bench_scaling")
ray.init(num_cpus=args["k"], include_dashboard=False, logging_level="WARNING")
# An earlier engine has no such setting.
extra = {} if args["central"] == "commit" else {"central_eval_on": args["central"]}
settings = RunSettings(pool_size=args["pool_size"], seed=args["seed"], max_parallel_clients=args["k"], server_cpus=1,
                       **extra)
run_app(app, rc, settings, callbacks=[Rounds()])
engine = {"central_eval_on": "central_eval_on" in fl_core.settings.SETTING_NAMES,
          "dispatch_order": hasattr(fl_core.grid, "dispatch_order") or hasattr(fl_core.pool, "plan_groups")}
print("ROUNDS " + json.dumps({"rounds": rows, "load": os.getloadavg(), "engine_has": engine}))
"""


# ---------------------------------------------------------------------------
# Small helpers


def linear_fit(xs, ys) -> dict:
    """y = a + b*x by least squares of the relative residuals (timing noise is proportional to the time, and
    plain least squares lets the largest points set the intercept): a, b, R^2, the largest relative residual."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    if len(set(x.tolist())) < 2:
        return {"a": float(y.mean()), "b": 0.0, "r2": float("nan"), "max_rel_residual": 0.0, "points": len(x)}
    b, a = np.polyfit(x, y, 1, w=1 / np.maximum(y, 1e-9))
    pred = a + b * x
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float(((y - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return {
        "a": float(a),
        "b": float(b),
        "r2": r2,
        "max_rel_residual": float(np.max(np.abs(pred - y) / y)),
        "points": len(x),
    }


def at(fit: dict, x: float) -> float:
    """The fitted line at x (never below 0)."""
    return max(0.0, fit["a"] + fit["b"] * x)


MARKER = "BENCH_SCALING_OWNER"  # in the environment of this script's engine runs (Ray's workers inherit it)


class ForeignCpu:
    """CPU used by processes that are not this script's (nor its engine runs'): other work on the machine.

    `busy()` samples it for a second (cores busy); `start()`/`stop()` bracket a run and give the cores other
    processes kept busy on average meanwhile (processes that ended in between are not seen). Needs psutil;
    without it every figure is None.
    """

    def __init__(self) -> None:
        try:
            import psutil
        except ImportError:
            psutil = None
        self.psutil, self.me, self._start = psutil, str(os.getpid()), None

    def _foreign(self) -> list:
        """Processes now running that are neither this process's descendants nor marked as its runs'."""
        ps = self.psutil
        mine = {os.getpid()} | {c.pid for c in ps.Process().children(recursive=True)}
        out = []
        for proc in ps.process_iter():
            if proc.pid in mine:
                continue
            try:
                if proc.environ().get(MARKER) == self.me:
                    continue
            except (ps.AccessDenied, ps.NoSuchProcess, ps.ZombieProcess, OSError):
                pass
            out.append(proc)
        return out

    def _times(self) -> dict:
        """{(pid, create time): CPU seconds} of the foreign processes."""
        ps, out = self.psutil, {}
        for proc in self._foreign():
            try:
                t = proc.cpu_times()
                out[(proc.pid, proc.create_time())] = t.user + t.system
            except (ps.AccessDenied, ps.NoSuchProcess, ps.ZombieProcess):
                continue
        return out

    def busy(self, seconds: float = 1.0) -> float | None:
        """Cores other processes keep busy, over the next `seconds`."""
        if self.psutil is None:
            return None
        self.start()
        time.sleep(seconds)
        return self.stop()

    def start(self) -> None:
        """Note the foreign processes' CPU time now."""
        if self.psutil is not None:
            self._start = (time.monotonic(), self._times())

    def stop(self) -> float | None:
        """Cores the foreign processes kept busy on average since start()."""
        if self.psutil is None or self._start is None:
            return None
        t0, before = self._start
        after = self._times()
        used = sum(cpu - before.get(key, 0.0) for key, cpu in after.items())
        return max(0.0, used) / max(time.monotonic() - t0, 1e-6)


def wait_quiet(foreign: ForeignCpu, limit_s: float, threshold: float = 0.3) -> tuple[float, float | None]:
    """Wait (at most limit_s) until other processes keep less than `threshold` of a core busy; (waited s, last busy)."""
    t0 = time.monotonic()
    busy = foreign.busy()
    while busy is not None and busy >= threshold and time.monotonic() - t0 < limit_s:
        time.sleep(10)
        busy = foreign.busy()
    return time.monotonic() - t0, busy


def load_line() -> str:
    """The load average now, as uptime prints it."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def sampled_count(pool_size: int, fraction: float, minimum: int = 2) -> int:
    """Clients Flower's FedAvg samples: max(int(P x fraction), the minimum), at most P; 0 at fraction 0."""
    return 0 if fraction == 0 else min(pool_size, max(int(pool_size * fraction), minimum))


def shard_groups(num_shards: int, workers: int) -> list[list[int]]:
    """The engine's contiguous groups of shards (fl_core.pool.plan_groups without sizes)."""
    return [g.tolist() for g in np.array_split(np.arange(num_shards), min(workers, num_shards))]


def engine_has_changes() -> tuple[bool, str]:
    """(whether this checkout has both engine changes, what is missing)."""
    from fl_core import grid, pool, settings

    missing = []
    if "central_eval_on" not in settings.SETTING_NAMES:
        missing.append("RunSettings.central_eval_on")
    if not hasattr(grid, "dispatch_order") and not hasattr(pool, "plan_groups"):
        missing.append("fl_core.grid.dispatch_order or fl_core.pool.plan_groups")
    return not missing, ", ".join(missing)


# ---------------------------------------------------------------------------
# The job and its data


def job_config(args, partition: str, fraction: float, rounds: int = 1) -> dict:
    """Run-config overrides of the bench_flower job (1 local epoch, lr 0.01, batch 32) on this data set."""
    return {
        "dataset": args.dataset,
        "data-dir": os.path.abspath(args.data_dir) if args.data_dir else "",
        "synthetic-size": args.synthetic_size,
        "partition": partition,
        "alpha": args.alpha,
        "val-ratio": args.val_ratio,
        "num-server-rounds": rounds,
        "fraction-train": fraction,
        "fraction-evaluate": fraction,
        "local-epochs": 1,
        "batch-size": 32,
        "lr": 0.01,
        "seed": args.seed,
    }


def full_config(args, partition: str, fraction: float, rounds: int = 1) -> dict:
    """The app's whole run config with the job's overrides."""
    import fl_core

    app = fl_core.load_app_folder(None)
    return fl_core.fuse_run_config(app, job_config(args, partition, fraction, rounds), where="bench_scaling")


def partition_sizes(args, partition: str, pool_size: int) -> tuple[list[int], list[int]]:
    """(train sizes, validation sizes) of the app's split of the training set into `pool_size` nodes."""
    from cifar10_app.data import load_data

    data = load_data(full_config(args, partition, 0.1), pool_size)  # the app's own (cached here for the ClientApp)
    return [len(t) for t in data.client_train], [len(v) for v in data.client_val]


def sampled_rounds(seed: int, pool_size: int, rounds: int, c_train: int, c_eval: int) -> list[tuple[list, list]]:
    """Per round, the partition ids the engine trains and validates, in message order (its NodeSampler's draws).

    (bench_fl_core.sampled_partitions does the same; importing that script would need psutil, which the device
    machine's wheels may lack.)
    """
    from fl_core.grid import NODE_ID_OFFSET
    from fl_core.seeding import NodeSampler

    sampler = NodeSampler(seed)
    node_ids = [NODE_ID_OFFSET + p for p in range(pool_size)]
    out = []
    for server_round in range(1, rounds + 1):
        sampler.start_round(server_round)
        train = sampler.sample(node_ids, c_train)
        evaluate = sampler.sample(node_ids, c_eval) if c_eval else []
        out.append(([n - NODE_ID_OFFSET for n in train], [n - NODE_ID_OFFSET for n in evaluate]))
    return out


# ---------------------------------------------------------------------------
# 1. Costs


class InProcess:
    """The app's ClientApp and central evaluation called in this process, torch at 1 thread."""

    def __init__(self, args, pool_size: int) -> None:
        import torch
        from cifar10_app.task import initial_model
        from flwr.app import ArrayRecord
        from flwr.common.constant import SUPERLINK_NODE_ID
        from flwr.supercore.task_identity import TaskIdentity

        import fl_core

        torch.set_num_threads(1)
        self.args, self.pool_size = args, pool_size
        self.app = fl_core.load_app_folder(None)
        self.client_app = self.app.load("client")
        self.app.load("server")
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1
        self.arrays = ArrayRecord(initial_model(args.seed).state_dict())
        self.sent = 0

    def message(self, partition_id: int, kind: str, server_round: int = 1):
        """A train or evaluate message for node `partition_id` as FedAvg builds it, with an id as the grid gives it."""
        from flwr.app import ConfigRecord, Message, MessageType, RecordDict

        from fl_core.grid import NODE_ID_OFFSET

        config = ConfigRecord({"lr": 0.01, "local-epochs": 1, "server-round": server_round})
        message = Message(
            RecordDict({"arrays": self.arrays, "config": config}),
            NODE_ID_OFFSET + partition_id,
            MessageType.TRAIN if kind == "train" else MessageType.EVALUATE,
        )
        self.sent += 1
        message.metadata.__dict__["_message_id"] = f"bench{self.sent}"
        return message

    def context(self, partition_id: int, run_config: dict):
        """The node's Context as the grid builds it."""
        from flwr.app import Context, RecordDict

        from fl_core.grid import NODE_ID_OFFSET

        return Context(
            run_id=1,
            node_id=NODE_ID_OFFSET + partition_id,
            state=RecordDict(),
            run_config=run_config,
            node_config={"partition-id": partition_id, "num-partitions": self.pool_size},
        )

    def call(self, partition_id: int, kind: str, run_config: dict) -> float:
        """Seconds of one ClientApp call for the node, in-process."""
        from fl_core.seeding import seed_globals

        message, context = self.message(partition_id, kind), self.context(partition_id, run_config)
        t0 = time.perf_counter()
        seed_globals(1)
        reply = self.client_app(message, context)
        seconds = time.perf_counter() - t0
        if reply.has_error():
            raise RuntimeError(f"the ClientApp failed in-process: {reply.error}")
        return seconds


def pick_nodes(sizes: list[int], targets: list[int], percentiles: bool = True) -> list[int]:
    """Distinct nodes whose sizes are nearest the targets (plus the 10/50/90th percentile nodes); by size."""
    order = np.argsort(sizes, kind="stable")
    chosen = {int(min(range(len(sizes)), key=lambda i: (abs(sizes[i] - t), i))) for t in targets}
    if percentiles:
        chosen |= {int(order[int(q * (len(order) - 1))]) for q in (0.1, 0.5, 0.9)}
    return sorted((i for i in chosen if sizes[i] > 0), key=lambda i: (sizes[i], i))


def measure_client_costs(ip: InProcess, args, rc_dirichlet: dict, sizes: tuple[list, list]) -> dict:
    """fit(n) and eval(n) of the ClientApp in-process on Dirichlet nodes of chosen sizes, and their a + b*n fits."""
    train_sizes, val_sizes = sizes
    out = {}
    for kind, sizes_of, targets in (
        ("fit", train_sizes, args.fit_sizes),
        ("eval", val_sizes, [max(1, round(t * args.val_ratio)) for t in args.fit_sizes]),
    ):
        nodes = pick_nodes(sizes_of, targets)
        message_kind = "train" if kind == "fit" else "evaluate"
        ip.call(nodes[0], message_kind, rc_dirichlet)  # warm-up: data, imports (torch._dynamo on the first optimiser)
        points = [
            (sizes_of[p], statistics.median(ip.call(p, message_kind, rc_dirichlet) for _ in range(args.repeats)))
            for p in nodes
        ]
        out[kind] = {
            "points": [{"partition": p, "n": n, "seconds": s} for p, (n, s) in zip(nodes, points)],
            "fit": linear_fit([n for n, _ in points], [s for _, s in points]),
        }
    return out


def app_sharded_evaluation(rc: dict, pool_size: int, num_test: int):
    """The app's central evaluation if it is a ShardedEvaluation (the engine with sharded evaluation), else None."""
    from cifar10_app import server_app

    try:
        from fl_core.central import ShardedEvaluation
    except ImportError:
        return None
    import inspect

    # Its parameters by name (the app's signature has moved while the engine change was made).
    known = {"run_config": rc, "num_nodes": pool_size, "num_test": num_test, "batch_size": rc["eval-batch-size"]}
    params = inspect.signature(server_app.central_evaluation).parameters
    if any(name not in known and p.default is inspect.Parameter.empty for name, p in params.items()):
        raise RuntimeError(
            f"cifar10_app.server_app.central_evaluation{inspect.signature(server_app.central_evaluation)}"
            f": bench_scaling knows only the parameters {', '.join(known)}"
        )
    evaluation = server_app.central_evaluation(**{name: known[name] for name in params if name in known})
    return evaluation if isinstance(evaluation, ShardedEvaluation) else None


def measure_central(ip: InProcess, args, rc: dict) -> dict:
    """The whole test set as the server evaluated it before the shards, by thread count; the shards at 1 thread."""
    import torch
    from cifar10_app.data import load_data
    from cifar10_app.task import evaluate, initial_model, place_model, to_tensor

    data = load_data(rc, ip.pool_size)
    batch = rc["eval-batch-size"]
    model = place_model(initial_model(0), "cpu")
    x, y = to_tensor(data.test_images), torch.tensor(data.test_labels)

    def whole() -> None:  # the evaluate_fn of the app before the shards: tensor made once, then per round this
        model.load_state_dict(ip.arrays.to_torch_state_dict())
        evaluate(model, x, y, batch)

    sharded = app_sharded_evaluation(rc, ip.pool_size, len(data.test_labels))
    if sharded is not None:  # the app's shards one after another in this process: what --central-eval-on server does
        num_shards, how = sharded.num_shards, "the app's ShardedEvaluation, every shard in turn, / shards"

        def shards_in_turn() -> None:
            sharded(1, ip.arrays)
    else:  # its equivalent before it existed: per shard weights in, 500 images made a tensor, evaluated
        num_shards, how = math.ceil(len(data.test_labels) / batch), "replica of a shard function (none in the app)"

        def shards_in_turn() -> None:
            for shard in range(num_shards):
                model.load_state_dict(ip.arrays.to_torch_state_dict())
                evaluate(
                    model,
                    to_tensor(data.test_images[shard * batch : (shard + 1) * batch]),
                    torch.tensor(data.test_labels[shard * batch : (shard + 1) * batch]),
                    batch,
                )

    cores = os.cpu_count() or 1
    threads = list(range(1, min(cores, args.max_threads) + 1))
    if args.quick:
        threads = sorted({1, min(cores, args.max_threads)})
    by_threads = {}
    try:
        for t in threads:
            torch.set_num_threads(t)
            whole()  # warm-up at this thread count
            by_threads[t] = median_time(whole, args.repeats)
    finally:
        torch.set_num_threads(1)
    shards_in_turn()
    in_turn = median_time(shards_in_turn, args.repeats)
    return {
        "test_images": len(data.test_labels),
        "eval_batch_size": batch,
        "num_shards": num_shards,
        "whole_by_threads": {str(t): s for t, s in by_threads.items()},
        "whole_1_thread": by_threads[1],
        "shards_in_turn_1_thread": in_turn,
        "shard_1_thread": in_turn / num_shards,
        "shard_function": how,
    }


def _configure(strategy, kind: str, arrays, grid, seed: int) -> list:
    """The strategy's train or evaluate messages for round 1, nodes sampled as the engine samples them."""
    from flwr.app import ConfigRecord

    from fl_core.seeding import NodeSampler, seeded_node_sampling

    sampler = NodeSampler(seed)
    sampler.start_round(1)
    with seeded_node_sampling(sampler):
        if kind == "train":
            return list(strategy.configure_train(1, arrays, ConfigRecord({"lr": 0.01, "local-epochs": 1}), grid))
        return list(strategy.configure_evaluate(1, arrays, ConfigRecord(), grid))


def _replies(messages: list, kind: str, weights) -> list:
    """A reply of this model to each message, as the ClientApp builds it (weights and metrics, or metrics)."""
    from flwr.app import Message, MetricRecord, RecordDict

    out = []
    for i, message in enumerate(messages):
        message.metadata.__dict__["_message_id"] = f"agg{i}"
        if kind == "train":
            content = RecordDict(
                {"arrays": weights, "metrics": MetricRecord({"train_loss": 2.0, "num-examples": 400 + i})}
            )
        else:
            content = RecordDict({"metrics": MetricRecord({"loss": 2.0, "accuracy": 0.1, "num-examples": 40 + i})})
        out.append(Message(content, reply_to=message))
    return out


def measure_strategy(ip: InProcess, args, counts: list[int]) -> dict:
    """configure/aggregate of the app's strategy (FedAvg) on C messages and replies, for each C; a + b*C fits."""
    from cifar10_app.strategy import build_strategy
    from cifar10_app.task import initial_model
    from flwr.app import ArrayRecord

    from fl_core.grid import NODE_ID_OFFSET

    class Nodes:
        """All a Flower strategy asks of the grid when it configures a round."""

        def __init__(self, n: int) -> None:
            self.ids = [NODE_ID_OFFSET + p for p in range(n)]

        def get_node_ids(self) -> list[int]:
            return list(self.ids)

    grid = Nodes(ip.pool_size)
    weights = ArrayRecord(initial_model(args.seed + 1).state_dict())
    rows = {"configure_train": [], "aggregate_train": [], "configure_evaluate": [], "aggregate_evaluate": []}
    logging.getLogger("flwr").setLevel(logging.WARNING)
    for c in counts:
        strategy = build_strategy(full_config(args, "iid", c / ip.pool_size), ip.pool_size)
        for kind in ("train", "evaluate"):
            configure = functools.partial(_configure, strategy, kind, ip.arrays, grid, args.seed)
            messages = configure()
            rows[f"configure_{kind}"].append((len(messages), median_time(configure, args.repeats)))
            aggregate = strategy.aggregate_train if kind == "train" else strategy.aggregate_evaluate
            replies = _replies(messages, kind, weights)
            rows[f"aggregate_{kind}"].append(
                (len(messages), median_time(functools.partial(aggregate, 1, replies), args.repeats))
            )
    return {
        name: {
            "points": [{"clients": c, "seconds": s} for c, s in pts],
            "fit": linear_fit([c for c, _ in pts], [s for _, s in pts]),
        }
        for name, pts in rows.items()
    }


def measure_overhead(ip: InProcess, args, rc: dict, nodes: list[int]) -> dict:
    """Per-call overhead of the engine: one worker of its own pool and grid against the same calls in-process."""
    import ray

    from fl_core import shared_data
    from fl_core.grid import RayGrid
    from fl_core.pool import WorkerPool
    from fl_core.runner import RUN_ID, prepare_shared
    from fl_core.settings import RunSettings

    settings = RunSettings(pool_size=ip.pool_size, seed=args.seed, max_parallel_clients=1, server_cpus=1)
    values = prepare_shared(ip.app, rc, ip.pool_size)
    ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING")
    pool = None
    try:
        shared_data.publish(values)
        shared_data.install(values)
        pool = WorkerPool(ip.app, settings, rc, values, RUN_ID)
        grid = RayGrid(pool, num_nodes=ip.pool_size, run_config=rc, seed=args.seed, run_id=RUN_ID)
        pool.wait_ready()
        out = {}
        for kind in ("train", "evaluate"):
            grid.send_and_receive([ip.message(nodes[0], kind)])  # warm-up of the worker (imports, data)
            ip.call(nodes[0], kind, rc)
            diffs, pairs = [], []
            for _ in range(args.overhead_repeats):
                for p in nodes:
                    t0 = time.perf_counter()
                    reply = grid.send_and_receive([ip.message(p, kind)])[0]
                    wall = time.perf_counter() - t0
                    if reply.has_error():
                        raise RuntimeError(f"the worker's {kind} call failed: {reply.error}")
                    local = ip.call(p, kind, rc)
                    diffs.append(wall - local)
                    pairs.append({"partition": p, "worker_s": wall, "in_process_s": local})
            out[kind] = {"seconds": statistics.median(diffs), "calls": pairs}
        out["central_call"] = central_call_overhead(ip, args, rc, grid)
        return out
    finally:
        if pool is not None:
            pool.shutdown()
        shared_data.uninstall()
        ray.shutdown()


def central_call_overhead(ip: InProcess, args, rc: dict, grid) -> dict:
    """Overhead of a central-evaluation call on a worker, per call and per shard.

    The engine's own call (fl_core.central._on_workers, 1 worker) of a one-shard
    ShardedEvaluation made of the app's, and of the app's whole one, each against
    the same in-process right after; per call = one-shard difference - per
    shard; per shard = (whole difference - one-shard difference) / (shards - 1).
    """
    from cifar10_app.data import load_data

    from fl_core import central

    sharded = app_sharded_evaluation(rc, ip.pool_size, len(load_data(rc, ip.pool_size).test_labels))
    fallback = {"per_shard_seconds": 0.0, "how": "the evaluate-message overhead stands in: "}
    if sharded is None:
        return {**fallback, "how": fallback["how"] + "this app has no ShardedEvaluation"}
    one = central.ShardedEvaluation(sharded.evaluate_shard, 1, sharded.combine)

    def differences(evaluation, times: int) -> list[float]:
        out = []
        for i in range(times + 1):
            t0 = time.perf_counter()
            central._on_workers(grid, evaluation, ip.arrays, [1] * evaluation.num_shards, 1)
            wall = time.perf_counter() - t0
            t1 = time.perf_counter()
            evaluation(1, ip.arrays)
            local = time.perf_counter() - t1
            if i:  # the first is the worker's warm-up
                out.append(wall - local)
        return out

    try:
        single = differences(one, args.overhead_repeats * 4)
        whole = differences(sharded, args.overhead_repeats * 2 + 1) if sharded.num_shards > 1 else single
    except (AttributeError, TypeError) as exc:  # the engine's private call changed
        return {**fallback, "how": fallback["how"] + f"fl_core.central._on_workers failed ({exc})"}
    per_shard = (
        max(0.0, (statistics.median(whole) - statistics.median(single)) / (sharded.num_shards - 1))
        if sharded.num_shards > 1
        else 0.0
    )
    return {
        "seconds": max(0.0, statistics.median(single) - per_shard),
        "per_shard_seconds": per_shard,
        "one_shard_differences": single,
        "all_shards_differences": whole,
        "how": "fl_core.central._on_workers on 1 worker minus the same in-process: one shard, and all shards",
    }


def measure_costs(args) -> tuple[dict, dict]:
    """Every cost of the model, and the partition sizes it needs ({partition: (train sizes, val sizes)})."""
    pool_size = args.pool_size
    t0 = time.perf_counter()
    print(f"measuring costs in-process at 1 thread ({args.dataset}; {load_line()})", flush=True)
    sizes = {partition: partition_sizes(args, partition, pool_size) for partition in ("iid", "dirichlet")}
    ip = InProcess(args, pool_size)
    rc_dir = full_config(args, "dirichlet", 0.1)
    client = measure_client_costs(ip, args, rc_dir, sizes["dirichlet"])
    central = measure_central(ip, args, rc_dir)
    counts = sorted({sampled_count(pool_size, f) for f in args.fractions} | {2})
    strategy = measure_strategy(ip, args, counts)
    if args.overhead_ms is not None:
        overhead = {
            k: {"seconds": v / 1000, "how": "--overhead-ms"}
            for k, v in zip(("train", "evaluate", "central_call"), args.overhead_ms)
        }
    else:
        nodes = pick_nodes(sizes["dirichlet"][0], [50, 100, 150, 300, 450], percentiles=False)
        overhead = measure_overhead(ip, args, rc_dir, nodes)
        if "seconds" not in overhead["central_call"]:
            overhead["central_call"]["seconds"] = overhead["evaluate"]["seconds"]
    costs = {
        "client": client,
        "central": central,
        "strategy": strategy,
        "overhead": overhead,
        "seconds_to_measure": time.perf_counter() - t0,
        "load_after": os.getloadavg(),
    }
    return costs, sizes


def print_costs(costs: dict) -> None:
    """The fits and figures the model uses."""
    c = costs["client"]
    for kind in ("fit", "eval"):
        f = c[kind]["fit"]
        pts = ", ".join(f"{p['n']}: {p['seconds'] * 1000:.1f}" for p in c[kind]["points"])
        print(
            f"  {kind}(n) = {f['a'] * 1000:.2f} ms + {f['b'] * 1e6:.1f} us x n  (R^2 {f['r2']:.4f}, largest "
            f"residual {f['max_rel_residual']:.1%}; n: ms = {pts})"
        )
    cen = costs["central"]
    curve = ", ".join(f"{t}: {s:.3f}" for t, s in cen["whole_by_threads"].items())
    print(f"  central, whole test set ({cen['test_images']} images): threads: s = {curve}")
    print(
        f"  central, {cen['num_shards']} shards of {cen['eval_batch_size']} in turn at 1 thread "
        f"({cen['shard_function']}): {cen['shards_in_turn_1_thread']:.3f} s, "
        f"{cen['shard_1_thread'] * 1000:.1f} ms a shard"
    )
    o = costs["overhead"]
    print(
        f"  overhead per call: train {o['train']['seconds'] * 1000:.1f} ms, evaluate "
        f"{o['evaluate']['seconds'] * 1000:.1f}"
        f" ms, central-evaluation call {o['central_call']['seconds'] * 1000:.1f} ms + "
        f"{o['central_call'].get('per_shard_seconds', 0.0) * 1000:.1f} ms a shard on a worker"
    )
    for name, v in costs["strategy"].items():
        print(
            f"  {name}(C) = {v['fit']['a'] * 1000:.2f} ms + {v['fit']['b'] * 1000:.3f} ms x C  "
            f"({', '.join('C={}: {:.2f} ms'.format(p['clients'], p['seconds'] * 1000) for p in v['points'])})"
        )


# ---------------------------------------------------------------------------
# 2-3. The model


def makespan(durations: list[float], order: list[int], workers: int) -> float:
    """List scheduling: each call in `order` goes to the first worker free; the time the last one ends."""
    if not durations:
        return 0.0
    free = [0.0] * max(1, min(workers, len(durations)))
    for i in order:
        heapq.heappush(free, heapq.heappop(free) + durations[i])
    return max(free)


def lpt_order(sizes: list) -> list[int]:
    """Largest first, ties (and unknown sizes, first) in message order: fl_core.grid.dispatch_order's rule."""
    return sorted(range(len(sizes)), key=lambda i: (sizes[i] is not None, -(sizes[i] or 0), i))


class Model:
    """Round time from the measured costs."""

    def __init__(self, costs: dict, lpt_knows: str) -> None:
        self.costs, self.lpt_knows = costs, lpt_knows
        cl, st, o = costs["client"], costs["strategy"], costs["overhead"]
        self.fit, self.eval = cl["fit"]["fit"], cl["eval"]["fit"]
        self.o_train, self.o_eval, self.o_central = (
            o["train"]["seconds"],
            o["evaluate"]["seconds"],
            o["central_call"]["seconds"],
        )
        self.o_shard = o["central_call"].get("per_shard_seconds", 0.0)
        self.st = {k: v["fit"] for k, v in st.items()}
        cen = costs["central"]
        self.whole_1, self.shard, self.num_shards = cen["whole_1_thread"], cen["shard_1_thread"], cen["num_shards"]

    def shard_seconds(self, shards: list[int]) -> float:
        """One worker's (or the server's) time for these shards, one after another (every shard the mean one)."""
        return len(shards) * self.shard

    def central(self, place: str, workers: int) -> float:
        """Central evaluation: 'today' (whole set, 1 thread, before the shards), 'server' (the shards in turn in the
        server) or 'workers' (contiguous groups, one call per worker)."""
        if place == "today":
            return self.whole_1
        if place == "server":
            return self.shard_seconds(list(range(self.num_shards)))
        return max(
            self.shard_seconds(g) + len(g) * self.o_shard + self.o_central
            for g in shard_groups(self.num_shards, workers)
        )

    def rounds(
        self, sampled: list[tuple[list, list]], sizes: tuple[list, list], workers: int, central: str, dispatch: str
    ) -> list[dict]:
        """Predicted phases of each sampled round, in order (the sizes the engine knows grow with the replies)."""
        train_sizes, val_sizes = sizes
        seen_train, seen_val = set(), set()
        out = []
        for train_ids, eval_ids in sampled:
            phases = {}
            for kind, ids, size_of, seen, cost, overhead in (
                ("train", train_ids, train_sizes, seen_train, self.fit, self.o_train),
                ("fed", eval_ids, val_sizes, seen_val, self.eval, self.o_eval),
            ):
                durations = [at(cost, size_of[p]) + overhead for p in ids]
                if dispatch == "message":
                    order = list(range(len(ids)))
                else:
                    known = [size_of[p] if (self.lpt_knows == "partitions" or p in seen) else None for p in ids]
                    order = lpt_order(known)
                seen.update(ids)
                st_kind = "train" if kind == "train" else "evaluate"
                n = len(ids)
                phases[f"{kind}_seconds"] = (
                    (
                        at(self.st[f"configure_{st_kind}"], n)
                        + makespan(durations, order, workers)
                        + at(self.st[f"aggregate_{st_kind}"], n)
                    )
                    if n
                    else 0.0
                )
            phases["central_seconds"] = self.central(central, workers)
            phases["seconds"] = phases["train_seconds"] + phases["fed_seconds"] + phases["central_seconds"]
            out.append(phases)
        return out


MODE_SETTINGS = {"today": ("today", "message"), "changes": ("workers", "lpt")}  # mode -> (central place, dispatch)


def build_table(args, model: Model, sizes: dict) -> list[dict]:
    """Mean predicted phases over --sim-rounds rounds for every (C, partition, K, mode)."""
    rows = []
    P = args.pool_size
    for fraction in args.fractions:
        c_train = sampled_count(P, fraction)
        c_eval = sampled_count(P, fraction) if args.val_ratio > 0 else 0
        sampled = sampled_rounds(args.seed, P, args.sim_rounds, c_train, c_eval)
        for partition in ("iid", "dirichlet"):
            base = {}
            for k in args.workers:
                w = min(k, max(c_train, c_eval))
                row = {
                    "clients": c_train,
                    "clients_eval": c_eval,
                    "pool_size": P,
                    "partition": partition,
                    "k": k,
                    "workers": w,
                }
                for mode in MODES:
                    place, dispatch = MODE_SETTINGS[mode]
                    per_round = model.rounds(sampled, sizes[partition], w, place, dispatch)
                    mean = {p: statistics.mean(r[p] for r in per_round) for p in PHASES}
                    mean["central_share"] = mean["central_seconds"] / mean["seconds"]
                    base.setdefault(mode, mean["seconds"])
                    mean["speedup_vs_k1"] = base[mode] / mean["seconds"]
                    row[mode] = mean
                row["today_over_changes"] = row["today"]["seconds"] / row["changes"]["seconds"]
                rows.append(row)
    return rows


def print_table(rows: list[dict], args) -> None:
    """The predicted table, one block per (C, partition)."""
    head = (
        f"{'K':>3} {'W':>3} | {'train':>6} {'fed':>6} {'centr':>6} {'round':>6} {'cen%':>5} {'xK1':>5} | "
        f"{'train':>6} {'fed':>6} {'centr':>6} {'round':>6} {'cen%':>5} {'xK1':>5} | {'today/chg':>9}"
    )
    block = None
    for r in rows:
        if (r["clients"], r["partition"]) != block:
            block = (r["clients"], r["partition"])
            print(
                f"\nC = {r['clients']} trained and {r['clients_eval']} validated of P = {r['pool_size']}, "
                f"{r['partition']}{' alpha ' + str(args.alpha) if r['partition'] == 'dirichlet' else ''}: "
                f"mean s/round over {args.sim_rounds} sampled rounds"
            )
            print(
                f"{'':>7} | {'today (central serial 1 thread, message order)':<44} | "
                f"{'with the changes (sharded central, LPT)':<44} |"
            )
            print(head)
        t, c = r["today"], r["changes"]
        print(
            f"{r['k']:>3} {r['workers']:>3} | {t['train_seconds']:>6.3f} {t['fed_seconds']:>6.3f} "
            f"{t['central_seconds']:>6.3f} {t['seconds']:>6.3f} {t['central_share']:>5.0%} "
            f"{t['speedup_vs_k1']:>5.2f} | "
            f"{c['train_seconds']:>6.3f} {c['fed_seconds']:>6.3f} {c['central_seconds']:>6.3f} {c['seconds']:>6.3f} "
            f"{c['central_share']:>5.0%} {c['speedup_vs_k1']:>5.2f} | {r['today_over_changes']:>9.2f}"
        )


# ---------------------------------------------------------------------------
# 5. Against the engine


def parse_configs(text: str) -> list[tuple[str, str, str]]:
    """'partition:central:dispatch,...' -> tuples, checked."""
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if (
            len(parts) != 3
            or parts[0] not in ("iid", "dirichlet")
            or parts[1] not in ("server", "workers", "commit")
            or parts[2] not in ("lpt", "message")
            or (parts[1] == "commit" and parts[2] != "message")
        ):
            raise argparse.ArgumentTypeError(
                f"bad configuration {item!r}: partition:central:dispatch with partition "
                "iid|dirichlet, central server|workers|commit (the engine of --commit: "
                "today's), dispatch lpt|message (commit: message)"
            )
        out.append(tuple(parts))
    return out


def engine_run(args, partition: str, central: str, dispatch: str, k: int, tree: str = REPO_ROOT) -> dict:
    """One engine run in a fresh process (the engine and app of `tree`): per-round metrics and the load at its end."""
    payload = {
        "run_config": job_config(args, partition, args.measure_fraction, args.measure_rounds),
        "k": k,
        "pool_size": args.pool_size,
        "seed": args.seed,
        "central": central,
        "dispatch": dispatch,
    }
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([tree, os.path.join(tree, "apps", "cifar10"), os.environ.get("PYTHONPATH", "")]),
        "RAY_AUTH_MODE": "disabled",
        "CUDA_VISIBLE_DEVICES": "",
        MARKER: str(os.getpid()),
    }
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", ENGINE_RUN, json.dumps(payload)],
        check=False,
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=args.run_timeout,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("ROUNDS ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"engine run {partition}:{central}:{dispatch} K={k} failed:\n{done.stderr[-3000:]}")
    result = json.loads(line[len("ROUNDS ") :])
    result["wall_s"] = time.perf_counter() - t0
    return result


def compare(
    args, model: Model, sizes: dict, partition: str, central: str, dispatch: str, k: int, measured: dict
) -> dict:
    """Measured (median of rounds 2..N) against predicted for the same sampled rounds, per phase."""
    P = args.pool_size
    c = sampled_count(P, args.measure_fraction)
    sampled = sampled_rounds(args.seed, P, args.measure_rounds, c, c if args.val_ratio > 0 else 0)
    workers = min(k, P)  # max_parallel_clients = K on a cluster of K CPUs: the pool is K whatever C is
    predicted = model.rounds(sampled, sizes[partition], workers, "today" if central == "commit" else central, dispatch)
    rounds = measured["rounds"]
    steady = slice(1, None) if len(rounds) > 1 else slice(None)
    out = {}
    for phase in PHASES:
        m = statistics.median(r[phase] for r in rounds[steady])
        p = statistics.median(r[phase] for r in predicted[steady])
        out[phase] = {"measured": m, "predicted": p, "rel_error": (p - m) / m if m else float("nan")}
    return out


def run_measurements(args, model: Model, sizes: dict, t_start: float, results: dict) -> list[dict]:
    """Every (configuration, K) in priority order until --time-budget; results written after each run."""
    cores = os.cpu_count() or 1
    rows = []
    results["measured"] = rows
    tree = None
    if any(central == "commit" for _, central, _ in args.measure_configs):
        try:
            tree = export_commit(args.commit)
            results["commit_engine"] = {"commit": args.commit, "resolved": tree_commit(args.commit)}
        except (OSError, subprocess.CalledProcessError) as exc:  # no git history here (the device machine's copy)
            print(f"  no engine of commit {args.commit} here ({exc}): its configurations are left out", flush=True)
            args.measure_configs = [c for c in args.measure_configs if c[1] != "commit"]
    try:
        return _run_measurements(args, model, sizes, t_start, results, rows, cores, tree)
    finally:
        if tree is not None:
            shutil.rmtree(tree, ignore_errors=True)


def export_commit(commit: str) -> str:
    """A temporary folder holding the files of `commit` (git archive: no worktree, the repository untouched)."""
    tree = tempfile.mkdtemp(prefix="bench-scaling-commit-")
    archive = subprocess.run(
        ["git", "-C", REPO_ROOT, "archive", "--format=tar", commit], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    return tree


def tree_commit(commit: str) -> str | None:
    """The full hash of `commit`."""
    done = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", commit], check=False, capture_output=True, text=True)
    return done.stdout.strip() or None


def _run_measurements(
    args, model: Model, sizes: dict, t_start: float, results: dict, rows: list, cores: int, tree: str | None
) -> list[dict]:
    """The loop of run_measurements."""
    foreign = ForeignCpu()
    for partition, central, dispatch in args.measure_configs:
        for k in args.measure:
            if time.perf_counter() - t_start > args.time_budget:
                print(f"  (time budget of {args.time_budget:.0f} s spent: no more engine runs)", flush=True)
                return rows
            note = "" if k + 1 <= cores else f"  [K={k} workers + driver on {cores} cores: they contend]"
            waited, busy_before = wait_quiet(foreign, args.wait_quiet) if args.wait_quiet else (0.0, foreign.busy())
            foreign.start()
            try:
                measured = engine_run(args, partition, central, dispatch, k, tree if central == "commit" else REPO_ROOT)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"  {partition}:{central}:{dispatch} K={k}: FAILED {exc}", flush=True)
                rows.append(
                    {
                        "partition": partition,
                        "central": central,
                        "dispatch": dispatch,
                        "k": k,
                        "error": str(exc)[-2000:],
                    }
                )
                continue
            cmp = compare(args, model, sizes, partition, central, dispatch, k, measured)
            busy_during = foreign.stop()
            if central == "commit" and any(measured.get("engine_has", {}).values()):
                note += (
                    f"  [the engine of --commit {args.commit} already has {measured['engine_has']}: not today's engine]"
                )
            row = {
                "partition": partition,
                "central": central,
                "dispatch": dispatch,
                "k": k,
                "workers": min(k, args.pool_size),
                "phases": cmp,
                "rounds": measured["rounds"],
                "load_at_end": measured["load"],
                "wall_s": measured["wall_s"],
                "contended": k + 1 > cores,
                "waited_for_quiet_s": waited,
                "other_cores_busy_before": busy_before,
                "other_cores_busy_during": busy_during,
                "engine_has": measured.get("engine_has"),
            }
            rows.append(row)
            if busy_during is not None and busy_during >= 0.3:
                note += f"  [OTHER WORK kept {busy_during:.1f} cores busy during this run: not a clean figure]"
            print_comparison(row, note)
            write_results(args.out, results)
    return rows


def print_comparison(row: dict, note: str = "") -> None:
    """One measured run against the model: measured / predicted / error per phase."""
    cells = []
    for phase, name in zip(PHASES, ("train", "fed", "central", "round")):
        v = row["phases"][phase]
        cells.append(f"{name} {v['measured']:.3f}/{v['predicted']:.3f} ({v['rel_error']:+.0%})")
    load = row["load_at_end"][0]
    other = row.get("other_cores_busy_during")
    print(
        f"  {row['partition']:<9} {row['central']:<7} {row['dispatch']:<7} K={row['k']:<2} | "
        + "  ".join(cells)
        + f" | load {load:.2f}"
        + ("" if other is None else f", other work {other:.2f} cores")
        + note,
        flush=True,
    )


# ---------------------------------------------------------------------------
# 4. Plot


def plot(path: str, rows: list[dict], measured: list[dict], args) -> None:
    """Predicted round time against K (log2), one panel per C; measured runs as markers where there are any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    counts = sorted({r["clients"] for r in rows})
    fig, axes = plt.subplots(1, len(counts), figsize=(6 * len(counts), 4.5), squeeze=False)
    colors = {"today": "tab:red", "changes": "tab:blue"}
    styles = {"iid": "-", "dirichlet": "--"}
    labels = {"today": "today", "changes": "with the changes"}
    for ax, c in zip(axes[0], counts):
        for partition in ("iid", "dirichlet"):
            sel = [r for r in rows if r["clients"] == c and r["partition"] == partition]
            ks = [r["k"] for r in sel]
            for mode in MODES:
                ax.plot(
                    ks,
                    [r[mode]["seconds"] for r in sel],
                    styles[partition],
                    color=colors[mode],
                    marker="o",
                    markersize=3,
                    label=f"{labels[mode]}, {partition}",
                )
            ax.plot(
                ks,
                [r["changes"]["train_seconds"] + r["changes"]["fed_seconds"] for r in sel],
                ":",
                color="gray",
                linewidth=1,
                label="fit + federated evaluation alone (with the changes)",
            )
        if c == sampled_count(args.pool_size, args.measure_fraction):
            markers = {
                ("commit", "message"): ("D", "tab:red"),
                ("server", "message"): ("s", "tab:orange"),
                ("workers", "lpt"): ("^", "tab:blue"),
                ("server", "lpt"): ("s", "tab:brown"),
                ("workers", "message"): ("v", "tab:purple"),
            }
            for m in measured:
                if "phases" not in m:
                    continue
                shape, color = markers[(m["central"], m["dispatch"])]
                ax.scatter(
                    [m["k"]],
                    [m["phases"]["seconds"]["measured"]],
                    marker=shape,
                    color=color,
                    facecolors="none" if m["partition"] == "iid" else color,
                    zorder=5,
                    label=f"measured {m['partition']} {m['central']} {m['dispatch']}",
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        for axis in (ax.yaxis,):
            axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            axis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_xticks(args.workers)
        ax.set_xticklabels([str(k) for k in args.workers])
        ax.set_xlabel("K (worker CPUs)")
        ax.set_ylabel("seconds per round (mean of sampled rounds, log)")
        ax.set_title(f"C = {c} of P = {args.pool_size} clients per round")
        ax.grid(True, alpha=0.3)
        handles, names = ax.get_legend_handles_labels()
        unique = dict(zip(names, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=6, loc="best", framealpha=0.7)
    fig.suptitle(
        f"bench_scaling: predicted round time ({args.dataset}; costs measured at 1 thread on {os.cpu_count()} cores)",
        fontsize=10,
    )
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4] (empty -> [])."""
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv):
    """Options; --quick shrinks everything for a smoke run on synthetic data."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--dataset", choices=("cifar10", "synthetic"), default="cifar10")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py (needed for --dataset cifar10)")
    p.add_argument(
        "--synthetic-size",
        type=int,
        default=50_000,
        help="training images of --dataset synthetic (test set: a fifth; 50,000 gives CIFAR-10's sizes)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: synthetic 6,000 images whatever --dataset says, 1 repeat, 20 simulated rounds, "
        "3 measured rounds",
    )
    p.add_argument("--pool-size", type=int, default=100, help="P, the nodes")
    p.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=[0.1, 0.5],
        help="fraction-train (= fraction-evaluate) of each table block: C = P x fraction",
    )
    p.add_argument("--workers", type=int_list, default="1,2,4,8,16,32,64", help="K values of the table")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    p.add_argument("--val-ratio", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fit-sizes",
        type=int_list,
        default="50,150,450,1000,2000",
        help="partition sizes to time fit at (nearest Dirichlet nodes; eval at a tenth of them)",
    )
    p.add_argument("--repeats", type=int, default=5, help="timings per cost point (median)")
    p.add_argument("--max-threads", type=int, default=16, help="central evaluation timed at 1 .. min(cores, this)")
    p.add_argument("--overhead-repeats", type=int, default=2, help="passes over the overhead nodes")
    p.add_argument(
        "--overhead-ms",
        type=float,
        nargs=3,
        metavar=("TRAIN", "EVALUATE", "CENTRAL"),
        help="per-call overheads to use instead of measuring them (no Ray in the cost phase)",
    )
    p.add_argument("--sim-rounds", type=int, default=50, help="sampled rounds the table averages")
    p.add_argument(
        "--lpt-knows",
        choices=("replies", "partitions"),
        default="replies",
        help="the sizes largest-first dispatch knows: of each node's earlier replies (fl_core.grid now), "
        "or every partition's from the start",
    )
    p.add_argument(
        "--measure", type=int_list, default="", help="K values to run the engine at, e.g. 1,2 (default none)"
    )
    p.add_argument(
        "--measure-configs",
        type=parse_configs,
        default=DEFAULT_CONFIGS,
        help="partition:central:dispatch of the engine runs, in priority order",
    )
    p.add_argument(
        "--commit",
        default=TODAY_COMMIT,
        help="the engine of central 'commit' configurations: today's (serial central evaluation in the "
        "server, message order), run from a git archive of it; the default is the last commit before "
        "both changes",
    )
    p.add_argument("--measure-rounds", type=int, default=6, help="rounds per engine run (median of 2..N)")
    p.add_argument("--measure-fraction", type=float, default=0.1, help="fraction-train/evaluate of the engine runs")
    p.add_argument(
        "--time-budget", type=float, default=3600, help="seconds since the start after which no new engine run starts"
    )
    p.add_argument("--run-timeout", type=float, default=600, help="seconds one engine run may take")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        help="before each engine run (and the costs), wait up to this many seconds until other processes "
        "keep under 0.3 of a core busy (needs psutil; 0: do not wait, only record it)",
    )
    p.add_argument("--costs-from", help="take the costs from this earlier results file instead of measuring them")
    p.add_argument("--out", default="bench_scaling.json")
    p.add_argument("--plot", help="write the plot here (PNG)")
    args = p.parse_args(argv)
    if args.quick:
        args.dataset, args.synthetic_size = "synthetic", min(args.synthetic_size, 6000)
        args.repeats, args.sim_rounds = 1, 20
        args.measure_rounds = min(args.measure_rounds, 3)
    if args.dataset == "cifar10" and not args.data_dir:
        p.error("--dataset cifar10 needs --data-dir (the folder holding cifar-10-batches-py); or --dataset synthetic")
    if args.measure_rounds < 2:
        p.error("--measure-rounds must be at least 2 (round 1 is warm-up)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure the costs, print the model's table, optionally check it against engine runs; write JSON and plot."""
    t_start = time.perf_counter()
    args = parse_args(argv)
    os.environ[MARKER] = str(os.getpid())  # what this run starts (Ray's processes too) is not "other work"
    logging.getLogger("flwr").setLevel(logging.WARNING)
    if args.measure:
        ok, missing = engine_has_changes()
        if not ok:
            print(f"bench_scaling: this engine lacks {missing}: --measure needs both engine changes", file=sys.stderr)
            return 2
    cores = os.cpu_count() or 1
    results = {
        "benchmark": "bench_scaling",
        "versions": versions(),
        "settings": {
            k: (v if not isinstance(v, list) or not v or not isinstance(v[0], tuple) else [":".join(t) for t in v])
            for k, v in vars(args).items()
        },
        "load_at_start": os.getloadavg(),
    }
    foreign = ForeignCpu()
    if args.wait_quiet:
        waited, busy = wait_quiet(foreign, args.wait_quiet)
        print(f"waited {waited:.0f} s for other work to stop (other processes: {busy} cores busy)", flush=True)
    if args.costs_from:
        with open(args.costs_from) as f:
            earlier = json.load(f)
        costs = earlier["costs"]
        sizes = {p: (v["train_sizes"], v["val_sizes"]) for p, v in earlier["partitions"].items()}
        results["costs_from"] = {"file": os.path.abspath(args.costs_from), "versions": earlier.get("versions")}
        print(f"costs and partitions taken from {args.costs_from} (measured {earlier.get('versions', {}).get('date')})")
    else:
        foreign.start()
        costs, sizes = measure_costs(args)
        costs["other_cores_busy_during"] = foreign.stop()
    results["costs"] = costs
    results["partitions"] = {
        p: {
            "train_min": min(t),
            "train_mean": statistics.mean(t),
            "train_max": max(t),
            "val_min": min(v),
            "val_max": max(v),
            "train_sizes": t,
            "val_sizes": v,
        }
        for p, (t, v) in sizes.items()
    }
    other = costs.get("other_cores_busy_during")
    print(
        f"costs ({costs['seconds_to_measure']:.0f} s to measure; {load_line()}"
        + ("" if other is None else f"; other processes kept {other:.2f} cores busy meanwhile")
        + "):"
    )
    print_costs(costs)
    for p, s in results["partitions"].items():
        print(
            f"  partitions {p}: train sizes min {s['train_min']} / mean {s['train_mean']:.0f} / max {s['train_max']}; "
            f"validation {s['val_min']}..{s['val_max']}"
        )
    model = Model(costs, args.lpt_knows)
    rows = build_table(args, model, sizes)
    results["table"] = rows
    print_table(rows, args)
    print(
        "\n(K: worker CPUs; W: workers the engine starts, min(K, clients a round uses); xK1: speedup against K = 1 "
        "of the same mode; cen%: central evaluation's share of the round; today/chg: round today over round with "
        f"the changes. LPT knows the sizes of {args.lpt_knows}.)"
    )
    write_results(args.out, results)
    measured = []
    if args.measure:
        print(
            f"\nmeasured (median of rounds 2..{args.measure_rounds}) / predicted (same sampled clients) seconds, "
            f"relative error of the prediction; {cores} cores here, {load_line()} before:",
            flush=True,
        )
        if max(args.measure) + 1 > cores:
            print(
                f"  note: K workers plus the driver need K + 1 cores; this machine has {cores}, so the runs with "
                f"K >= {cores} share cores (the driver idles during the phases, but not during aggregation and "
                "the server's central evaluation) and Ray's own processes take some too",
                flush=True,
            )
        measured = run_measurements(args, model, sizes, t_start, results)
        errors = [abs(m["phases"]["seconds"]["rel_error"]) for m in measured if "phases" in m]
        if errors:
            print(
                f"  round time: |relative error| median {statistics.median(errors):.0%}, largest {max(errors):.0%} "
                f"over {len(errors)} runs"
            )
    results["load_at_end"] = os.getloadavg()
    results["wall_s"] = time.perf_counter() - t_start
    write_results(args.out, results)
    if args.plot:
        plot(args.plot, rows, measured, args)
        print(f"plot written to {args.plot}")
    print(f"results written to {args.out} ({results['wall_s']:.0f} s; {load_line()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
