"""fedsweep's clients sharing one GPU, against a single-process tight training loop on that GPU.

For each GPU share per client (default 0.5, 0.25, 0.125: 2, 4, 8 client workers
on one GPU) this runs fedsweep (`fl_core.run_app` with the built-in app,
`RunSettings.num_client_gpus` = the share) on a CIFAR-shaped synthetic set
(default 50,000 training images, 100 clients) and reports training samples per
second of round time: each round's training samples (times local epochs) over
its wall time (`RoundEnd.metrics["seconds"]`, which includes the aggregation and
the central evaluation), median over the rounds after the warm-up. As a
diagnostic it also reports samples per second of the engine's train phase alone
(`train_seconds`: configure, train, aggregate; the engine's own
`samples_per_s`).

The reference is one process training the same CNN with the same batch size
on the same GPU in a tight loop (`cifar10_app.task.train` over tensors already
on the GPU, no DataLoader). It runs in a child process, so that this driver
never initialises CUDA: fedsweep's server then keeps its central evaluation on
the CPU, as `python -m fl_core` does (`server_gpus` 0 hides the GPU from a
server process only while CUDA is uninitialised there).

    python bench/bench_gpu.py --out gpu.json                       # on a CUDA machine
    python bench/bench_gpu.py --device cpu --smoke --out smoke.json  # same code path, tiny, on CPU

With --device cpu the GPU shares become CPU shares of the local Ray cluster
(2, 4, 8 workers on the machine's CPUs), which exercises every code path but
measures nothing useful. Results are written after every configuration, so a
run cut short by its time budget still leaves what it measured.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
sys.path[:0] = [REPO_ROOT, os.path.join(REPO_ROOT, "apps", "cifar10")]  # fl_core, cifar10_app without an install
from provenance import versions, write_results  # noqa: E402  (bench/ is on sys.path: scripts run from it)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Benchmark options (--smoke shrinks every size for a quick check)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: 2,000 images, 20 clients, 3 rounds")
    p.add_argument(
        "--gpu-fractions",
        type=float,
        nargs="+",
        default=[0.5, 0.25, 0.125],
        help="GPU share per client worker; 1/share workers share the GPU",
    )
    p.add_argument(
        "--fraction-train",
        "--fraction-fit",
        dest="fraction_train",
        type=float,
        nargs="+",
        default=[0.8],
        help="share of clients trained per round; several values: each is run (0.8 = 80 clients, "
        "a whole number of waves for 2, 4 and 8 workers)",
    )
    p.add_argument("--fraction-evaluate", type=float, default=0.0, help="share of clients validated per round")
    p.add_argument("--synthetic-size", type=int, default=50_000)
    p.add_argument("--pool-size", type=int, default=100)
    p.add_argument("--rounds", type=int, default=6, help="rounds per configuration, warm-up included")
    p.add_argument("--warmup-rounds", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument(
        "--server-cpus",
        type=int,
        default=None,
        help="torch threads of the driver's central evaluation (default: fedsweep's, every core)",
    )
    p.add_argument("--tight-samples", type=int, default=50_000, help="samples the tight loop trains on (one epoch)")
    p.add_argument("--time-budget", type=float, default=420, help="seconds; no new configuration starts after this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="gpu.json")
    args = p.parse_args(argv)
    if args.smoke:
        args.synthetic_size, args.pool_size, args.rounds = 2000, 20, 3
        args.tight_samples = min(args.tight_samples, 2000)
    if args.warmup_rounds >= args.rounds:
        p.error("--rounds must exceed --warmup-rounds")
    return args


# ---------------------------------------------------------------------------
# Device and environment


def check_device(device: str) -> None:
    """Exit with a clear message if CUDA was asked for and is absent (is_available does not initialise CUDA)."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "bench_gpu: no CUDA device is visible to torch "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); run it on a GPU machine, "
            "or use --device cpu --smoke to check the code path"
        )


def start_ray(device: str) -> None:
    """A local Ray cluster with all CPUs and, on CUDA, one GPU."""
    import ray

    ray.init(
        num_cpus=os.cpu_count(),
        num_gpus=1 if device == "cuda" else 0,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )


# ---------------------------------------------------------------------------
# The reference: one process, one tight loop


def sync(device) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tight_loop(synthetic_size: int, seed: int, samples: int, batch_size: int, device_name: str) -> dict:
    """Samples/s of cifar10_app.task.train over tensors already on the device, after a short warm-up.

    Runs in a child process: it builds the same synthetic training set as the
    runs (`make_synthetic(size, seed)`) and reports the device it used.
    """
    import torch
    from cifar10_app.data import make_synthetic
    from cifar10_app.task import initial_model, place_model, to_tensor, train

    device = torch.device(device_name)
    images, labels = make_synthetic(synthetic_size, seed)[:2]
    images, labels = images[:samples], labels[:samples]
    x, y = to_tensor(images, device), torch.from_numpy(labels).to(device)
    model = place_model(initial_model(0), device)
    common = {
        "epochs": 1,
        "batch_size": batch_size,
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "augment": "none",
    }
    warm = min(len(y), batch_size * 100)
    train(model, x[:warm], y[:warm], generator=torch.Generator().manual_seed(1), **common)
    sync(device)
    t0 = time.perf_counter()
    train(model, x, y, generator=torch.Generator().manual_seed(2), **common)
    sync(device)
    seconds = time.perf_counter() - t0
    result = {"samples": len(y), "seconds": seconds, "samples_per_s": len(y) / seconds, "device": str(device)}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
        result["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return result


def tight_loop_in_child(args: argparse.Namespace) -> dict:
    """The tight loop in a fresh (spawned) process, keeping CUDA out of this one."""
    n = min(args.tight_samples, args.synthetic_size)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(tight_loop, args.synthetic_size, args.seed, n, args.batch_size, args.device).result()


# ---------------------------------------------------------------------------
# fedsweep


def job(args: argparse.Namespace, share: float, fraction_train: float):
    """(app, run config, settings) for one configuration: `share` of the GPU (or, on CPU, of the CPUs) per client."""
    import fl_core

    workers = round(1 / share)
    on_gpu = args.device == "cuda"
    app = fl_core.load_app_folder(None)
    run_config = fl_core.fuse_run_config(
        app,
        {
            "dataset": "synthetic",
            "synthetic-size": args.synthetic_size,
            "num-server-rounds": args.rounds,
            "fraction-train": fraction_train,
            "fraction-evaluate": args.fraction_evaluate,
            "local-epochs": args.local_epochs,
            "batch-size": args.batch_size,
            "seed": args.seed,
        },
        where="bench_gpu",
    )
    settings = fl_core.RunSettings(
        pool_size=args.pool_size,
        seed=args.seed,
        num_client_cpus=1.0 if on_gpu else os.cpu_count() * share,
        num_client_gpus=share if on_gpu else 0.0,
        server_cpus=args.server_cpus,
        max_parallel_clients=workers,
    )
    settings.validate(local_cpus=os.cpu_count(), local_gpus=1 if on_gpu else 0)
    app.check(run_config, settings.pool_size)
    return app, run_config, settings


def summarise(rounds: list[dict], epochs: int, warmup: int, tight: float) -> dict:
    """Median samples/s over the rounds after warm-up, per round time and per train phase."""
    measured = rounds[warmup:]
    per_round = [m["train_samples"] * epochs / m["seconds"] for m in measured]
    per_train = [m["train_samples"] * epochs / m["train_seconds"] for m in measured]
    median_round, median_train = statistics.median(per_round), statistics.median(per_train)
    return {
        "rounds_measured": [m["round"] for m in measured],
        "median_samples_per_s": median_round,
        "median_train_phase_samples_per_s": median_train,
        "median_round_seconds": statistics.median(m["seconds"] for m in measured),
        "median_train_seconds": statistics.median(m["train_seconds"] for m in measured),
        "median_central_seconds": statistics.median(m["central_seconds"] for m in measured),
        "train_samples_per_round": statistics.median(m["train_samples"] for m in measured),
        "x_tight_loop": median_round / tight,
        "train_phase_x_tight_loop": median_train / tight,
    }


def print_summary(payload: dict) -> None:
    """One line per configuration, against the tight loop."""
    tight = payload["tight_loop"]["samples_per_s"]
    print(f"\ntight loop (1 process, batch {payload['settings']['batch_size']}): {tight:,.0f} samples/s")
    print(
        f"{'workers':>7} {'share':>6} {'clients/rd':>10} {'round s':>8} {'samples/s':>10} {'x tight':>7} "
        f"{'train-phase/s':>13} {'x tight':>7}"
    )
    for r in payload["configs"]:
        s = r["summary"]
        print(
            f"{r['workers']:>7} {r['share']:>6} {r['clients_per_round']:>10} {s['median_round_seconds']:>8.3f} "
            f"{s['median_samples_per_s']:>10,.0f} {s['x_tight_loop']:>7.2f} "
            f"{s['median_train_phase_samples_per_s']:>13,.0f} {s['train_phase_x_tight_loop']:>7.2f}"
        )


def plan(args: argparse.Namespace) -> list[tuple[float, float]]:
    """(fraction_train, GPU share) of every configuration, in run order."""
    return [(ft, share) for ft in args.fraction_train for share in args.gpu_fractions]


def main(argv: list[str] | None = None) -> int:
    """Tight loop first (in a child process), then fedsweep in every configuration the time budget allows."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    check_device(args.device)
    import ray
    from cifar10_app.strategy import clients_per_round

    import fl_core
    from fl_core.runner import prepare_shared

    logging.getLogger("flwr").setLevel(logging.WARNING)
    for fraction_train, share in plan(args):  # bad settings fail here, before anything runs
        job(args, share, fraction_train)
    tight = tight_loop_in_child(args)
    print(
        f"tight loop: {tight['samples_per_s']:,.0f} samples/s ({tight['samples']} samples in {tight['seconds']:.2f} s)",
        flush=True,
    )
    environment = {
        **versions(),
        "device": tight["device"],
        **{k: tight[k] for k in ("gpu", "gpu_memory_gib") if k in tight},
    }
    payload = {
        "benchmark": "bench_gpu",
        "environment": environment,
        "settings": vars(args),
        "tight_loop": tight,
        "configs": [],
        "skipped": [],
    }
    app, run_config, settings = job(args, args.gpu_fractions[0], args.fraction_train[0])
    shared_values = prepare_shared(app, run_config, settings.pool_size)  # one data set for every configuration
    start_ray(args.device)
    try:
        for fraction_train, share in plan(args):
            if time.perf_counter() - t_start > args.time_budget:
                payload["skipped"].append({"share": share, "fraction_train": fraction_train, "why": "time budget"})
                continue
            app, run_config, settings = job(args, share, fraction_train)
            per_round = clients_per_round(run_config, settings.pool_size)
            print(
                f"fedsweep: {round(1 / share)} workers at {settings.num_client_gpus:g} GPU and "
                f"{settings.num_client_cpus:g} CPU each, {per_round} clients per round ...",
                flush=True,
            )
            end = fl_core.run_app(app, run_config, settings, shared_values=shared_values)
            summary = summarise(end.history, args.local_epochs, args.warmup_rounds, tight["samples_per_s"])
            print(
                f"  median {summary['median_samples_per_s']:,.0f} samples/s = "
                f"{summary['x_tight_loop']:.2f}x tight loop",
                flush=True,
            )
            payload["configs"].append(
                {
                    "share": share,
                    "workers": round(1 / share),
                    "fraction_train": fraction_train,
                    "clients_per_round": per_round,
                    "settings": settings.to_dict(),
                    "summary": summary,
                    "rounds": end.history,
                }
            )
            write_results(args.out, payload)
    finally:
        ray.shutdown()
    payload["total_seconds"] = time.perf_counter() - t_start
    write_results(args.out, payload)
    print_summary(payload)
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
