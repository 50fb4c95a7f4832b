"""fedsweep against a tight single-process loop doing the same work, and worker memory vs pool size.

    python bench/bench_fl_core.py --data-dir DIR [--rounds 6] [--out results.json]
    python bench/bench_fl_core.py --dataset synthetic --rounds 2 --memory-rounds 2 --out smoke.json   # smoke run

The job is the seed's: real CIFAR-10, 100 clients, 10 per round, 1 local epoch,
batch 32, lr 0.01, 1 CPU per client, central evaluation on the 10,000 test
images every round, federated validation on 10 sampled clients, run by
`fl_core.run_app` with the built-in app. The tight loop does the same work in
one process and one thread (no Ray, no Flower): it trains the clients the
engine samples (its draw reproduced with `fl_core.seeding.NodeSampler`) with
`cifar10_app.task.train` and the engine's generator seeds
(`client_seed(seed, round, partition-id)`), averages them weighted by their
samples as FedAvg does, and does the same evaluations. Its time divided by the
cores fedsweep's workers use is the ideal per-round time. Target: fedsweep's
round time (median after the first, warm-up round) at most 1.5x that ideal.
Both are split into the engine's phases (`train_seconds`: configure, train,
aggregate; `fed_seconds`: federated validation; `central_seconds`), to show
where the difference lies. That the tight loop does the engine's work is
checked every round: same training samples, same central accuracy, and the
largest difference between its global weights and the engine's. After round 1
that is float rounding (about 3e-8: same clients, same seeds, the aggregation
summing in another order); it compounds over the rounds (about 4e-5 by round 6
on CIFAR-10), while one wrong client moves weights by far more.

Then it runs a few rounds at pool sizes 100 and 1000 (10 clients per round both
times) while sampling the memory of every client worker process (Ray actors of
class `ClientAppWorker`): the peak must not grow with the number of clients.
Needs psutil (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import threading
import time

import psutil
import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))
from cifar10_app.data import load_data  # noqa: E402
from cifar10_app.task import client_seed, evaluate, initial_model, place_model, to_tensor, train  # noqa: E402
from provenance import versions, write_results  # noqa: E402  (bench/ is on sys.path: scripts run from it)

import fl_core  # noqa: E402
from fl_core.grid import NODE_ID_OFFSET  # noqa: E402
from fl_core.pool import plan_pool  # noqa: E402
from fl_core.runner import prepare_shared  # noqa: E402
from fl_core.seeding import NodeSampler  # noqa: E402

PHASES = ("train_seconds", "fed_seconds", "central_seconds")  # the engine's timing keys, in round order
WORKER_CLASS = "ClientAppWorker"  # Ray titles an actor's process ray::<class>[.<method>]


class RoundWeights(fl_core.Callback):
    """Keeps each round's metrics and the global weights after it."""

    def __init__(self) -> None:
        """Start with no rounds."""
        self.metrics: list[dict] = []
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_round_end(self, event: fl_core.RoundEnd) -> None:
        """Store the round's metrics and a copy of the aggregated weights."""
        self.metrics.append(dict(event.metrics))
        self.weights[event.round] = event.state.arrays.to_torch_state_dict()


class WorkerMemory:
    """Polls the RSS and USS of this run's ClientAppWorker processes in a thread; keeps the peaks."""

    def __init__(self, interval: float = 0.2) -> None:
        """Set up the polling thread (started by `with`)."""
        self.interval, self.peak_rss, self.peak_uss, self.workers = interval, 0, 0, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def _workers() -> list:
        """This process's ClientAppWorker descendants.

        Descendants only: the local Ray's raylet is this process's child and the
        workers are the raylet's; other Ray clusters on the machine run
        ClientAppWorkers too.
        """
        found = []
        for proc in psutil.Process().children(recursive=True):
            try:
                if WORKER_CLASS in " ".join(proc.cmdline()):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    def _poll(self) -> None:
        """Sample every worker process until stopped."""
        while not self._stop.is_set():
            for proc in self._workers():
                try:
                    mem = proc.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                self.workers.add(proc.pid)
                self.peak_rss, self.peak_uss = max(self.peak_rss, mem.rss), max(self.peak_uss, mem.uss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "WorkerMemory":
        """Start polling, once the previous run's workers (killed asynchronously) have exited."""
        deadline = time.monotonic() + 30
        while self._workers() and time.monotonic() < deadline:
            time.sleep(0.2)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        """Stop polling."""
        self._stop.set()
        self._thread.join()


def job(args: argparse.Namespace, pool_size: int, rounds: int):
    """(app, run config, settings) of the seed's job: `pool_size` nodes, --clients-per-round trained and validated."""
    app = fl_core.load_app_folder(None)
    run_config = fl_core.fuse_run_config(
        app,
        {
            "dataset": args.dataset,
            "data-dir": os.path.abspath(args.data_dir) if args.data_dir else "",
            "synthetic-size": args.synthetic_size,
            "num-server-rounds": rounds,
            "fraction-train": args.clients_per_round / pool_size,
            "fraction-evaluate": args.clients_per_round / pool_size,
            "local-epochs": 1,
            "batch-size": 32,
            "lr": 0.01,
            "seed": args.seed,
        },
        where="bench_fl_core",
    )
    settings = fl_core.RunSettings(pool_size=pool_size, seed=args.seed, num_client_cpus=1)
    app.check(run_config, pool_size)
    return app, run_config, settings


def sample_sizes(run_config: dict, pool_size: int) -> tuple[int, int]:
    """Nodes trained and validated per round, as Flower's FedAvg counts them under the built-in app's strategy."""

    def count(fraction: float, minimum: int) -> int:
        """FedAvg's sample size: the fraction of the nodes, at least the minimum; none at fraction 0."""
        return 0 if fraction == 0 else max(int(pool_size * fraction), minimum)

    evaluates = run_config["fraction-evaluate"] > 0 and run_config["val-ratio"] > 0  # as cifar10_app.strategy decides
    return (
        count(run_config["fraction-train"], run_config["min-train-nodes"]),
        count(run_config["fraction-evaluate"], run_config["min-evaluate-nodes"]) if evaluates else 0,
    )


def sampled_partitions(
    seed: int, pool_size: int, rounds: int, k_train: int, k_eval: int
) -> list[tuple[list[int], list[int]]]:
    """The partitions the engine trains and validates each round: its NodeSampler's draws, train first then evaluate."""
    sampler = NodeSampler(seed)
    node_ids = [NODE_ID_OFFSET + p for p in range(pool_size)]
    out = []
    for server_round in range(1, rounds + 1):
        sampler.start_round(server_round)
        train_ids = sampler.sample(node_ids, k_train)
        eval_ids = sampler.sample(node_ids, k_eval) if k_eval else []
        out.append(([n - NODE_ID_OFFSET for n in train_ids], [n - NODE_ID_OFFSET for n in eval_ids]))
    return out


def tight_loop(run_config: dict, data, sampled: list[tuple[list[int], list[int]]]) -> list[dict]:
    """The same work in one process and one thread; per round: seconds per phase, samples, global weights, accuracy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rc = run_config
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
                    "train_seconds": t1 - t0,
                    "fed_seconds": t2 - t1,
                    "central_seconds": t3 - t2,
                    "train_samples": total,
                    "central_accuracy": accuracy,
                    "weights": global_state,
                }
            )
        return rounds
    finally:
        torch.set_num_threads(threads)


def steady(rounds: list[dict]) -> list[dict]:
    """The rounds after the first (warm-up) one, or all when there is only one."""
    return rounds[1:] or rounds


def check_same_work(engine: RoundWeights, tight: list[dict]) -> list[dict]:
    """Per round: training samples of both, and how far the tight loop's weights and accuracy are from the engine's."""
    out = []
    for metrics, ours in zip(engine.metrics, tight):
        theirs = engine.weights[metrics["round"]]
        max_diff = max(float((ours["weights"][k].float() - theirs[k].float()).abs().max()) for k in theirs)
        out.append(
            {
                "round": metrics["round"],
                "engine_train_samples": metrics["train_samples"],
                "tight_train_samples": ours["train_samples"],
                "max_abs_weight_diff": max_diff,
                "central_accuracy_diff": abs(metrics["central_accuracy"] - ours["central_accuracy"]),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """Run both comparisons, print the figures and write --out."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("cifar10", "synthetic"), default="cifar10")
    ap.add_argument("--data-dir", help="folder holding cifar-10-batches-py (required for --dataset cifar10)")
    ap.add_argument("--synthetic-size", type=int, default=6000, help="training images of --dataset synthetic")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--clients-per-round", type=int, default=10)
    ap.add_argument("--memory-rounds", type=int, default=3)
    ap.add_argument("--memory-pools", type=int, nargs="*", default=[100, 1000], help="pool sizes of the memory part")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench_fl_core.json", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.dataset == "cifar10" and not args.data_dir:
        ap.error("--dataset cifar10 needs --data-dir (the folder holding cifar-10-batches-py)")

    import ray

    cores = os.cpu_count()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    logging.getLogger("flwr").setLevel(logging.WARNING)
    app, run_config, settings = job(args, 100, args.rounds)
    shared_values = prepare_shared(app, run_config, settings.pool_size)  # as the CLI: data read before Ray starts
    data = next(v.value for v in shared_values if v.function == load_data.name)  # the FederatedData the run shares
    ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING")
    workers_used = plan_pool(settings, run_config)[0]  # the pool the engine will start
    engine = RoundWeights()
    t0 = time.perf_counter()
    fl_core.run_app(app, run_config, settings, callbacks=[engine], shared_values=shared_values)
    fedsweep_wall = time.perf_counter() - t0
    fed_steady = steady(engine.metrics)
    epochs = run_config["local-epochs"]
    fed_round = statistics.median(m["seconds"] for m in fed_steady)
    samples = statistics.median(m["train_samples"] for m in fed_steady) * epochs
    fed_phases = {p: statistics.median(m[p] for m in fed_steady) for p in PHASES}

    k_train, k_eval = sample_sizes(run_config, settings.pool_size)
    sampled = sampled_partitions(settings.seed, settings.pool_size, args.rounds, k_train, k_eval)
    tight = tight_loop(run_config, data, sampled)
    tight_round = statistics.median(r["seconds"] for r in steady(tight))
    tight_phases = {p: statistics.median(r[p] for r in steady(tight)) for p in PHASES}
    same_work = check_same_work(engine, tight)
    ideal = tight_round / workers_used
    results = {
        "benchmark": "bench_fl_core",
        "versions": versions(),
        "machine": f"{cores} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "job": (
            f"{args.dataset}, 100 clients, {k_train}/round trained and {k_eval} validated, 1 epoch, batch 32, "
            "lr 0.01, 1 CPU/client, central eval every round"
        ),
        "settings": vars(args),
        "run_config": run_config,
        "fedsweep_round_s": fed_round,
        "fedsweep_samples_per_s": samples / fed_round,
        "fedsweep_wall_s_including_startup": fedsweep_wall,
        "tight_loop_round_s_1_thread": tight_round,
        "tight_loop_samples_per_s": samples / tight_round,
        "cores_used": workers_used,
        "ideal_round_s": ideal,
        "ratio_to_ideal": fed_round / ideal,
        "final_accuracy": engine.metrics[-1]["central_accuracy"],
        "phase_seconds": {"fedsweep": fed_phases, "tight_loop_1_thread": tight_phases},
        "same_work_check": same_work,
        "fedsweep_rounds": engine.metrics,
        "tight_loop_rounds": [{k: v for k, v in r.items() if k != "weights"} for r in tight],
    }
    write_results(args.out, results)  # now, and again with the memory figures: a run cut short keeps these
    last = f"2-{args.rounds}" if args.rounds > 1 else "1"
    print(f"fedsweep:   {fed_round:.3f} s/round  {samples / fed_round:,.0f} train samples/s (median of rounds {last})")
    print(f"tight loop: {tight_round:.3f} s/round in 1 thread  {samples / tight_round:,.0f} samples/s")
    print(
        f"ideal over {workers_used} cores: {ideal:.3f} s/round -> fedsweep is {fed_round / ideal:.2f}x the ideal "
        "(target <= 1.5)"
    )
    print(f"{'phase (median s)':>16} | {'fedsweep':>8} | {'tight loop':>10} | {f'tight / {workers_used}':>10}")
    for phase in PHASES:
        print(
            f"{phase:>16} | {fed_phases[phase]:>8.3f} | {tight_phases[phase]:>10.3f} | "
            f"{tight_phases[phase] / workers_used:>10.3f}"
        )
    worst = max(c["max_abs_weight_diff"] for c in same_work)
    samples_match = all(c["engine_train_samples"] == c["tight_train_samples"] for c in same_work)
    print(
        f"same work: training samples per round {'match' if samples_match else 'DIFFER'}; global weights differ "
        f"by {same_work[0]['max_abs_weight_diff']:.1e} after round 1, at most {worst:.1e} (round {args.rounds}); "
        f"central accuracy by at most {max(c['central_accuracy_diff'] for c in same_work):.4f}"
    )

    memory = {}
    for pool in args.memory_pools:
        pool_app, pool_config, pool_settings = job(args, pool, args.memory_rounds)
        with WorkerMemory() as mem:
            fl_core.run_app(
                pool_app, pool_config, pool_settings, shared_values=shared_values
            )  # pool 100 reuses its data
        memory[pool] = {
            "peak_rss_mib": mem.peak_rss / 2**20,
            "peak_uss_mib": mem.peak_uss / 2**20,
            "workers": len(mem.workers),
        }
        print(
            f"pool {pool:>4}: {len(mem.workers)} workers, peak RSS {mem.peak_rss / 2**20:.0f} MiB, "
            f"peak USS (private) {mem.peak_uss / 2**20:.0f} MiB per worker"
        )
    results["worker_memory"] = memory
    results["load_average_at_end"] = os.getloadavg()
    ray.shutdown()
    write_results(args.out, results)
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
