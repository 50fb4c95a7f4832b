"""fedsweep's engine on the seed's job, against a reference chosen with --against.

    python bench/bench_engine.py --against tight --data-dir DIR --rounds 8
    python bench/bench_engine.py --against flower --data-dir DIR [--flower-engine-builtin] [--seeds 0 1 2]
    python bench/bench_engine.py --against commit --commit 8a696da --data-dir DIR --repeats 3
    python bench/bench_engine.py --against gpu [--fraction-train 0.8 0.1]         # on a CUDA machine
    python bench/bench_engine.py --against tight --smoke     # any of the four: synthetic data, a few rounds

The job (common.SEED_JOB): the built-in app, 100 clients, 10 trained and 10 validated a round, 1 local epoch,
batch 32, lr 0.01, 1 CPU a client, central evaluation every round. Seconds a round are the engine's own.

* tight: the engine, then a tight loop doing its work in one thread in this process (same clients, seeds and
  FedAvg, checked every round); the ideal round is the loop's over the workers' cores. Then worker memory (RSS,
  private USS) at each --memory-pools size.
* flower: per seed, each side in a fresh process: fedsweep, Flower's template app (flower_app.py) on
  `flwr.simulation.run_simulation`, and with --flower-engine-builtin the built-in app on Flower's engine (rounds
  from the `[ROUND k/N]` lines Flower logs). Each engine samples its own clients.
* commit: the engine of --commit (a `git archive` of it, 99b6df2 or later: `fl_core.run_app`) and this one,
  alternating, each run a fresh process with its own Ray.
* gpu: synthetic CIFAR-shaped data, client workers given 1/2, 1/4, 1/8 of one GPU, no federated validation;
  training samples a second of round time against one process training the CNN over tensors on the GPU (in a
  spawned child, so this driver never initialises CUDA). `--device cpu --smoke` runs the path on CPU shares.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor

from common import PHASES, REPO, checkouts, child_env, job, start_ray, steady, versions, write_results

SIDES = ("fedsweep", "flower", "builtin-on-flower")
DEFAULT_ROUNDS = {"tight": 6, "flower": 10, "commit": 6, "gpu": 6}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Options; --smoke shrinks every size (synthetic data, few rounds and clients)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", choices=("tight", "flower", "commit", "gpu"), required=True)
    p.add_argument("--dataset", choices=("cifar10", "synthetic"), default="cifar10")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py (for --dataset cifar10)")
    p.add_argument("--synthetic-size", type=int, help="training images of synthetic data (6,000; gpu: 50,000)")
    p.add_argument("--rounds", type=int, help=f"rounds a run (default {DEFAULT_ROUNDS})")
    p.add_argument("--pool-size", type=int, default=100)
    p.add_argument("--fraction-train", type=float, nargs="+", help="0.1; gpu: 0.8 (each value is run)")
    p.add_argument("--fraction-evaluate", type=float, help="0.1; gpu: 0")
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs of each run's local Ray")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="flower: one run per seed on each side")
    p.add_argument("--commit", help="commit: the earlier engine's commit")
    p.add_argument("--repeats", type=int, default=3, help="commit: runs of each engine, alternating")
    p.add_argument("--flower-engine-builtin", action="store_true", help="flower: the built-in app on Flower too")
    p.add_argument("--flower-python", default=sys.executable, help="flower: interpreter of the Flower sides")
    p.add_argument("--memory-pools", type=int, nargs="*", default=[100, 1000], help="tight: pool sizes for memory")
    p.add_argument("--memory-rounds", type=int, default=3)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="gpu: cpu checks the code path")
    p.add_argument("--gpu-fractions", type=float, nargs="+", default=[0.5, 0.25, 0.125], help="gpu: share a worker")
    p.add_argument("--server-cpus", type=int, help="gpu: torch threads of the server's central evaluation")
    p.add_argument("--time-budget", type=float, default=420, help="gpu: no configuration starts after (s)")
    p.add_argument("--smoke", action="store_true", help="synthetic data, 2 rounds (gpu: 3), 20 clients")
    p.add_argument("--timeout", type=float, default=3600, help="seconds a child run may take")
    p.add_argument("--verbose", action="store_true", help="keep Flower's and Ray's info logging")
    p.add_argument("--out", default=os.path.join("results", "bench_engine.json"))
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # internal: one side, in a child process
    p.add_argument("--side-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    gpu = args.against == "gpu"
    if args.smoke:
        args.dataset, args.pool_size, args.rounds = "synthetic", 20, 3 if gpu else 2
        args.synthetic_size, args.memory_rounds, args.memory_pools = 2000, 2, [20, 100]
    if gpu:
        args.dataset = "synthetic"
    args.rounds = args.rounds or DEFAULT_ROUNDS[args.against]
    args.synthetic_size = args.synthetic_size or (50_000 if gpu else 6000)
    args.fraction_train = args.fraction_train or [0.8 if gpu else 0.1]
    args.fraction_evaluate = (0.0 if gpu else 0.1) if args.fraction_evaluate is None else args.fraction_evaluate
    if args.dataset == "cifar10" and not args.data_dir:
        p.error("--dataset cifar10 needs --data-dir (the folder holding cifar-10-batches-py)")
    if args.against == "commit" and not args.commit:
        p.error("--against commit needs --commit")
    return args


def overrides(args: argparse.Namespace, fraction_train: float | None = None) -> dict:
    """The run-config keys the options set."""
    return {
        "dataset": args.dataset,
        "data-dir": os.path.abspath(args.data_dir) if args.data_dir else "",
        "synthetic-size": args.synthetic_size,
        "num-server-rounds": args.rounds,
        "fraction-train": args.fraction_train[0] if fraction_train is None else fraction_train,
        "fraction-evaluate": args.fraction_evaluate,
        "local-epochs": args.local_epochs,
        "lr": args.lr,
    }


def round_rows(history: list[dict]) -> list[dict]:
    """Per round: seconds, phases, training samples and central accuracy (what the comparisons read)."""
    keys = ("round", "seconds", *PHASES, "train_samples", "central_accuracy")
    return [{k: row[k] for k in keys if k in row} for row in history]


def fedsweep_side(args: argparse.Namespace, seed: int) -> dict:
    """The job on the engine first on the path (this checkout's or an earlier commit's); per-round metrics."""
    import ray

    import fl_core

    rows = []

    class Rounds(fl_core.Callback):
        """Keeps each round's metrics."""

        def on_round_end(self, event) -> None:
            """Store the round."""
            rows.append(dict(event.metrics))

    start_ray(args.num_cpus, verbose=args.verbose)
    app = fl_core.load_app_folder(None)  # only API every Message-API engine has, so earlier commits run it too
    run_config = fl_core.fuse_run_config(app, {"batch-size": 32, "seed": seed, **overrides(args)})
    fl_core.run_app(app, run_config, fl_core.RunSettings(pool_size=args.pool_size, seed=seed), callbacks=[Rounds()])
    ray.shutdown()
    return {"rounds": round_rows(rows)}


def flower_side(args: argparse.Namespace, seed: int) -> dict:
    """The job as Flower's template writes it (flower_app.py), on flwr.simulation.run_simulation."""
    import random

    import flower_app
    import ray
    from cifar10_app.data import load_data
    from flwr.simulation import run_simulation

    _, run_config, settings = job(overrides(args), args.pool_size, seed, where="bench_engine")
    data = load_data(run_config, settings.pool_size)
    random.seed(seed)  # Flower samples nodes with the global `random`
    start_ray(args.num_cpus, verbose=args.verbose)  # Flower's backend uses an initialised Ray as it is
    recorder = flower_app.RoundRecorder()
    run_simulation(
        server_app=flower_app.make_server_app(data, run_config, recorder),
        client_app=flower_app.make_client_app(ray.put(data)),
        num_supernodes=settings.pool_size,
        backend_config={"client_resources": {"num_cpus": settings.num_client_cpus, "num_gpus": 0.0}},
        verbose_logging=args.verbose,
    )
    if ray.is_initialized():  # Flower's backend shuts Ray down itself
        ray.shutdown()
    return {"rounds": recorder.rounds}


class StrategyLogRounds(logging.Handler):
    """Round times and central accuracy of a `Strategy.start` run from Flower's log: `[ROUND k/N]` as round k
    begins, the central MetricRecord after "Global evaluation", "Strategy execution finished" at the end."""

    def __init__(self) -> None:
        """No rounds seen yet."""
        super().__init__(level=logging.INFO)
        self.starts, self.accuracy, self.finished, self._global = [], {}, None, False

    def emit(self, record: logging.LogRecord) -> None:
        """Note round starts, the end and each round's central accuracy."""
        now = time.perf_counter()
        if record.msg == "[ROUND %s/%s]":
            self.starts.append((int(record.args[0]), now))
        elif record.msg == "Global evaluation":
            self._global = True
        elif record.msg == "\t└──> MetricRecord: %s" and self._global and self.starts:
            metrics = record.args if isinstance(record.args, Mapping) else record.args[0]  # a lone Mapping unwraps
            self.accuracy[self.starts[-1][0]] = float(metrics["accuracy"])
            self._global = False
        elif isinstance(record.msg, str) and record.msg.startswith("Strategy execution finished"):
            self.finished = now

    def rounds(self) -> list[dict]:
        """One dict per finished round: round, seconds, central accuracy."""
        ends = [t for _, t in self.starts[1:]] + [self.finished]
        return [
            {"round": r, "seconds": end - start, "central_accuracy": self.accuracy.get(r)}
            for (r, start), end in zip(self.starts, ends)
            if end is not None
        ]


def builtin_on_flower_side(args: argparse.Namespace, seed: int) -> dict:
    """The built-in app on Flower's engine (what `python -m fl_core --engine flower` runs)."""
    import random

    import ray

    from fl_core.flower_engine import run_with_flower

    app, run_config, settings = job(overrides(args), args.pool_size, seed, where="bench_engine")
    flower_log, rounds_log = logging.getLogger("flwr"), StrategyLogRounds()
    flower_log.addHandler(rounds_log)  # Flower's logger passes INFO on; only its console handler is quietened
    for handler in flower_log.handlers:
        if handler is not rounds_log and not args.verbose:
            handler.setLevel(logging.WARNING)
    random.seed(seed)
    start_ray(args.num_cpus, verbose=args.verbose)
    flower_log.setLevel(logging.INFO)  # start_ray quietened the logger itself; the handler needs its INFO records
    run_with_flower(app, run_config, settings, verbose=args.verbose)
    if ray.is_initialized():
        ray.shutdown()
    if len(rounds_log.rounds()) != args.rounds:
        raise RuntimeError(f"read {len(rounds_log.rounds())} of {args.rounds} rounds from Flower's log: see above")
    return {"rounds": rounds_log.rounds()}


def run_side(args: argparse.Namespace, side: str, seed: int, repo: str = REPO, python: str = sys.executable) -> dict:
    """One side with one seed in a fresh process, the checkout `repo` first on its path; its results."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{side}-") as tmp:
        out = os.path.join(tmp, "side.json")
        options = {
            "against": "flower",
            "dataset": args.dataset,
            "synthetic-size": args.synthetic_size,
            "rounds": args.rounds,
            "pool-size": args.pool_size,
            "fraction-train": args.fraction_train[0],
            "fraction-evaluate": args.fraction_evaluate,
            "local-epochs": args.local_epochs,
            "lr": args.lr,
            "num-cpus": args.num_cpus,
            "seeds": seed,
            "side": side,
            "side-out": out,
            **({"data-dir": os.path.abspath(args.data_dir)} if args.data_dir else {}),
        }
        cmd = [python, os.path.abspath(__file__), *(x for k, v in options.items() for x in (f"--{k}", str(v)))]
        cmd += ["--verbose"] if args.verbose else []
        print(f"\n=== {side}, seed {seed}, engine of {repo}", flush=True)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=repo, env=child_env(repo), timeout=args.timeout)
        if done.returncode != 0 or not os.path.exists(out):
            raise SystemExit(f"bench_engine: the {side} side failed (exit status {done.returncode}); see above")
        with open(out) as f:
            return {**json.load(f), "process_seconds": time.perf_counter() - t0}


def seconds(result: dict) -> dict:
    """Mean and median seconds a round over rounds 2..N."""
    secs = [r["seconds"] for r in result["rounds"]]
    return {"mean": statistics.fmean(secs[1:] or secs), "median": steady(secs), "all": secs}


def against_flower(args: argparse.Namespace, payload: dict) -> None:
    """fedsweep, Flower's template app and optionally the built-in app on Flower, one process each, per seed."""
    others = ["flower"] + (["builtin-on-flower"] if args.flower_engine_builtin else [])
    for seed in args.seeds:
        run = {"seed": seed, "fedsweep": run_side(args, "fedsweep", seed)}
        run.update({side: run_side(args, side, seed, python=args.flower_python) for side in others})
        fed = seconds(run["fedsweep"])
        print(f"\nseed {seed}: fedsweep {fed['mean']:.3f} s/round (mean of rounds 2..{args.rounds})")
        for side in others:
            s = seconds(run[side])
            run[side]["x_fedsweep"] = s["mean"] / fed["mean"]
            print(f"  {side}: {s['mean']:.3f} s/round, fedsweep faster by {s['mean'] / fed['mean']:.2f}x")
        payload["runs"].append(run)
        write_results(args.out, payload)
    for side in ["fedsweep"] + others:  # accuracy curves over the seeds: mean and seed-to-seed spread
        curves = [[r["central_accuracy"] for r in run[side]["rounds"]] for run in payload["runs"]]
        mean = [statistics.fmean(c) for c in zip(*curves)]
        sd = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in zip(*curves)]
        payload.setdefault("accuracy", {})[side] = {"mean": mean, "sd": sd}
        print(f"{side:>18} accuracy, mean over seeds: " + " ".join(f"{m:.3f}+-{s:.3f}" for m, s in zip(mean, sd)))


def against_commit(args: argparse.Namespace, payload: dict) -> None:
    """The earlier commit's engine and this one, alternating: each run's median round and each pair's ratio."""
    with checkouts(args.commit) as trees:
        for repeat in range(args.repeats):
            pair = {label: seconds(run_side(args, "fedsweep", args.seeds[0], repo))["median"] for label, repo in trees}
            pair["ratio"] = pair["current"] / pair[args.commit]
            payload["runs"].append(pair)
            write_results(args.out, payload)
            print(f"pair {repeat + 1}: {args.commit} {pair[args.commit]:.3f}, current {pair['current']:.3f} s/round")
    ratios = [pair["ratio"] for pair in payload["runs"]]
    payload["ratio"] = {
        "median": statistics.median(ratios),
        "above_1": sum(r > 1 for r in ratios),
        "pairs": len(ratios),
    }
    means = {label: statistics.fmean(pair[label] for pair in payload["runs"]) for label in (args.commit, "current")}
    print(
        f"mean s/round {means}; current / earlier: median {payload['ratio']['median']:.3f}, above 1 in "
        f"{payload['ratio']['above_1']} of {len(ratios)} pairs"
    )


def against_tight(args: argparse.Namespace, payload: dict) -> None:
    """The engine and the tight loop in this process; then worker memory at each pool size."""
    import psutil
    import ray
    from cifar10_app.data import load_data
    from common import PeakMemory, sampled_partitions, tight_loop

    import fl_core
    from fl_core.pool import plan_pool
    from fl_core.runner import prepare_shared

    app, run_config, settings = job(overrides(args), args.pool_size, args.seeds[0], where="bench_engine")
    shared = prepare_shared(app, run_config, settings.pool_size)  # as the CLI: data read before Ray starts
    data = next(v.value for v in shared if v.function == load_data.name)
    start_ray(args.num_cpus, verbose=args.verbose)
    weights = {}

    class Weights(fl_core.Callback):
        """Keeps the global weights after each round."""

        def on_round_end(self, event) -> None:
            """Copy the round's aggregated weights."""
            weights[event.round] = event.state.arrays.to_torch_state_dict()

    end = fl_core.run_app(app, run_config, settings, callbacks=[Weights()], shared_values=shared)
    engine = round_rows(end.history)
    tight = tight_loop(run_config, data, sampled_partitions(run_config, settings.pool_size, settings.seed, args.rounds))
    cores = plan_pool(settings, run_config)[0]  # the client workers the engine started
    fed, loop = ({p: steady([r[p] for r in rows]) for p in ("seconds", *PHASES)} for rows in (engine, tight))
    checks = [
        {
            "round": e["round"],
            "same_samples": e["train_samples"] == t["train_samples"],
            "max_weight_diff": max(
                float((t["weights"][k] - w.float()).abs().max()) for k, w in weights[e["round"]].items()
            ),
            "accuracy_diff": abs(e["central_accuracy"] - t["central_accuracy"]),
        }
        for e, t in zip(engine, tight)
    ]
    payload.update(engine=engine, tight=[{k: v for k, v in r.items() if k != "weights"} for r in tight])
    payload.update(
        cores=cores, ideal_s=loop["seconds"] / cores, ratio_to_ideal=fed["seconds"] * cores / loop["seconds"]
    )
    payload["same_work"] = checks
    write_results(args.out, payload)
    print(
        f"fedsweep {fed['seconds']:.3f} s/round; tight loop {loop['seconds']:.3f} in 1 thread; ideal over {cores} "
        f"cores {payload['ideal_s']:.3f}: fedsweep at {payload['ratio_to_ideal']:.2f}x it"
    )
    for phase in PHASES:
        print(f"{phase:>16}: fedsweep {fed[phase]:.3f}, tight loop / {cores} {loop[phase] / cores:.3f}")
    print(
        f"same work: samples {'match' if all(c['same_samples'] for c in checks) else 'DIFFER'}; weights within "
        f"{max(c['max_weight_diff'] for c in checks):.1e}; accuracy within "
        f"{max(c['accuracy_diff'] for c in checks):.4f}"
    )

    def workers() -> list:
        """This process's client workers (Ray titles an actor's process ray::ClientAppWorker...)."""
        found = []
        for proc in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):  # a process may end (or be a zombie) while it is looked at
                if "ClientAppWorker" in " ".join(proc.cmdline()):
                    found.append(proc)
        return found

    for pool in args.memory_pools:
        deadline = time.monotonic() + 30
        while workers() and time.monotonic() < deadline:  # the previous run's workers end asynchronously
            time.sleep(0.2)
        fraction = min(1.0, 10 / pool)  # 10 clients a round at every pool size
        pool_app, pool_config, pool_settings = job(
            {
                **overrides(args),
                "num-server-rounds": args.memory_rounds,
                "fraction-train": fraction,
                "fraction-evaluate": fraction,
            },
            pool,
            args.seeds[0],
            where="bench_engine",
        )
        with PeakMemory(workers, interval=0.2, uss=True) as mem:
            fl_core.run_app(pool_app, pool_config, pool_settings, shared_values=shared)
        payload.setdefault("worker_memory", {})[pool] = {
            "rss_mib": mem.peak_rss / 2**20,
            "uss_mib": mem.peak_uss / 2**20,
        }
        print(
            f"pool {pool}: {len(mem.pids)} workers, peak RSS {mem.peak_rss / 2**20:.0f} MiB, "
            f"peak USS {mem.peak_uss / 2**20:.0f} MiB per worker"
        )
    ray.shutdown()


def gpu_tight_loop(synthetic_size: int, seed: int, batch_size: int, device_name: str) -> dict:
    """Samples/s of cifar10_app.task.train over the synthetic set's tensors already on the device, after a warm-up."""
    import torch
    from cifar10_app.data import make_synthetic
    from cifar10_app.task import initial_model, place_model, to_tensor, train

    device = torch.device(device_name)
    images, labels = make_synthetic(synthetic_size, seed)[:2]
    x, y = to_tensor(images, device), torch.from_numpy(labels).to(device)
    model = place_model(initial_model(0), device)
    opts = {"epochs": 1, "batch_size": batch_size, "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "augment": "none"}
    warm = min(len(y), batch_size * 100)
    train(model, x[:warm], y[:warm], generator=torch.Generator().manual_seed(1), **opts)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda *_: None
    sync(device)
    t0 = time.perf_counter()
    train(model, x, y, generator=torch.Generator().manual_seed(2), **opts)
    sync(device)
    out = {"samples": len(y), "samples_per_s": len(y) / (time.perf_counter() - t0), "device": str(device)}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def against_gpu(args: argparse.Namespace, payload: dict) -> None:
    """The tight loop on the GPU in a spawned child, then fedsweep with each GPU share, within the time budget."""
    import ray
    import torch  # is_available() does not initialise CUDA

    import fl_core
    from fl_core.runner import prepare_shared

    on_gpu = args.device == "cuda"
    if on_gpu and not torch.cuda.is_available():
        sys.exit("bench_engine: no CUDA device visible to torch; use --device cpu --smoke to check the code path")
    t_start = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        tight = child.submit(gpu_tight_loop, args.synthetic_size, args.seeds[0], 32, args.device).result()
    payload["tight_loop"] = tight
    print(f"tight loop: {tight['samples_per_s']:,.0f} samples/s on {tight['device']}", flush=True)
    configs = []
    for fraction_train in args.fraction_train:
        for share in args.gpu_fractions:
            settings = {
                "num_client_cpus": 1.0 if on_gpu else os.cpu_count() * share,
                "server_cpus": args.server_cpus,
                "num_client_gpus": share if on_gpu else 0.0,
                "max_parallel_clients": round(1 / share),
            }
            configs.append((share, job(overrides(args, fraction_train), args.pool_size, args.seeds[0], **settings)))
    shared = prepare_shared(*configs[0][1][:2], args.pool_size)  # one data set for every configuration
    start_ray(num_gpus=1 if on_gpu else 0, verbose=args.verbose)
    for share, (app, run_config, settings) in configs:
        if time.perf_counter() - t_start > args.time_budget:
            payload.setdefault("skipped", []).append({"share": share, "fraction-train": run_config["fraction-train"]})
            continue
        history = fl_core.run_app(app, run_config, settings, shared_values=shared).history[1:]  # after warm-up
        per_s = statistics.median(m["train_samples"] * args.local_epochs / m["seconds"] for m in history)
        result = {
            "workers": round(1 / share),
            "clients_per_round": history[0]["train_clients"],
            "samples_per_s": per_s,
            "round_s": statistics.median(m["seconds"] for m in history),
            "x_tight_loop": per_s / tight["samples_per_s"],
            "rounds": round_rows(history),
        }
        payload["runs"].append(result)
        write_results(args.out, payload)
        print(
            f"{result['workers']} workers, {result['clients_per_round']} clients a round: {result['round_s']:.3f} "
            f"s/round, {per_s:,.0f} samples/s = {result['x_tight_loop']:.2f}x the tight loop",
            flush=True,
        )
    ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Run the comparison --against names (or, with --side, one side for a parent process)."""
    args = parse_args(argv)
    if args.side:
        sides = {"fedsweep": fedsweep_side, "flower": flower_side, "builtin-on-flower": builtin_on_flower_side}
        with open(args.side_out, "w") as f:
            json.dump(sides[args.side](args, args.seeds[0]), f)
        return 0
    payload = {"benchmark": f"bench_engine --against {args.against}", "versions": versions(), "runs": []}
    payload["settings"] = vars(args)
    {"tight": against_tight, "flower": against_flower, "commit": against_commit, "gpu": against_gpu}[args.against](
        args, payload
    )
    payload["load_average_at_end"] = os.getloadavg()
    write_results(args.out, payload)
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
