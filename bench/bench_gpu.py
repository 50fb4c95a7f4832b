"""fedsweep's clients sharing one GPU, against a single-process tight training loop on that GPU.

For each GPU share per client (default 0.5, 0.25, 0.125: 2, 4, 8 client workers
on one GPU) this runs fedsweep (`fl_core.run_simulation`) on a CIFAR-shaped
synthetic set (default 50,000 training images, 100 clients) and reports
training samples per second of round time: each round's training samples over
its wall time (`RoundEnd.metrics["samples_per_s"]`, which includes the
aggregation and the central evaluation), median over the rounds after the
warm-up. As a diagnostic it also reports samples per second of the fit phase
alone (Flower's `Server.fit_round`, timed with bench/phases.py).

The reference is one process training the same CNN with the same batch size
on the same GPU in a tight loop (`fl_core.task.train` over tensors already on
the GPU, no DataLoader).

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
import os
import statistics
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, REPO_ROOT)
from phases import PhaseTimer  # noqa: E402  (bench/ is on sys.path: scripts run from it)
from provenance import versions, write_results  # noqa: E402

import numpy as np
import torch


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Benchmark options (--smoke shrinks every size for a quick check)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: 2,000 images, 20 clients, 3 rounds")
    p.add_argument("--gpu-fractions", type=float, nargs="+", default=[0.5, 0.25, 0.125],
                   help="GPU share per client worker; 1/share workers share the GPU")
    p.add_argument("--fraction-fit", type=float, nargs="+", default=[0.8],
                   help="share of clients trained per round; several values: each is run (0.8 = 80 clients, "
                   "a whole number of waves for 2, 4 and 8 workers)")
    p.add_argument("--fraction-evaluate", type=float, default=0.0, help="share of clients validated per round")
    p.add_argument("--synthetic-size", type=int, default=50_000)
    p.add_argument("--pool-size", type=int, default=100)
    p.add_argument("--rounds", type=int, default=6, help="rounds per configuration, warm-up included")
    p.add_argument("--warmup-rounds", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--server-cpus", type=int, default=None,
                   help="torch threads of the driver's central evaluation (default: fedsweep's, every core)")
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


def check_device(device: str) -> torch.device:
    """The torch device; exits with a clear message if CUDA was asked for and is absent."""
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "bench_gpu: no CUDA device is visible to torch "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); run it on a GPU machine, "
            "or use --device cpu --smoke to check the code path"
        )
    return torch.device(device)


def environment(device: torch.device) -> dict:
    """What the figures were measured on."""
    env = {**versions(), "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return env


def start_ray(device: torch.device) -> None:
    """A local Ray cluster with all CPUs and, on CUDA, one GPU."""
    import ray

    ray.init(
        num_cpus=os.cpu_count(),
        num_gpus=1 if device.type == "cuda" else 0,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )


# ---------------------------------------------------------------------------
# The reference: one process, one tight loop


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tight_loop(images: np.ndarray, labels: np.ndarray, batch_size: int, device: torch.device) -> dict:
    """Samples/s of fl_core.task.train over tensors already on `device`, after a short warm-up."""
    from fl_core.models import build_model
    from fl_core.task import place_model, to_tensor, train

    x, y = to_tensor(images, device), torch.from_numpy(labels).to(device)
    model = place_model(build_model("cnn", seed=0), device)
    common = {"epochs": 1, "batch_size": batch_size, "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "augment": "none"}
    warm = min(len(y), batch_size * 100)
    train(model, x[:warm], y[:warm], generator=torch.Generator().manual_seed(1), **common)
    sync(device)
    t0 = time.perf_counter()
    train(model, x, y, generator=torch.Generator().manual_seed(2), **common)
    sync(device)
    seconds = time.perf_counter() - t0
    return {"samples": len(y), "seconds": seconds, "samples_per_s": len(y) / seconds}


# ---------------------------------------------------------------------------
# fedsweep


def sim_config(args: argparse.Namespace, share: float, fraction_fit: float, device: torch.device):
    """The job for one configuration: `share` of the GPU (or, on CPU, of the CPUs) per client."""
    from fl_core import SimConfig

    workers = round(1 / share)
    on_gpu = device.type == "cuda"
    return SimConfig(
        dataset="synthetic",
        synthetic_size=args.synthetic_size,
        pool_size=args.pool_size,
        num_rounds=args.rounds,
        fraction_fit=fraction_fit,
        fraction_evaluate=args.fraction_evaluate,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        num_client_cpus=1.0 if on_gpu else os.cpu_count() * share,
        num_client_gpus=share if on_gpu else 0.0,
        server_cpus=args.server_cpus,
        max_parallel_clients=workers,
        seed=args.seed,
    ).validate()


def run_fedsweep(config, data, data_ref) -> tuple[list[dict], dict[int, float]]:
    """One fedsweep run; returns its per-round metrics and fit-phase seconds."""
    from fl_core import Callback, run_simulation

    class Collect(Callback):
        """Keeps each round's metrics."""

        def __init__(self) -> None:
            """Start with no rounds."""
            self.rounds: list[dict] = []

        def on_round_end(self, event) -> None:
            """Store the round's metrics."""
            self.rounds.append(dict(event.metrics))

    collect = Collect()
    with PhaseTimer() as timer:
        run_simulation(config, data=data, data_ref=data_ref, callbacks=[collect])
    return collect.rounds, timer.seconds["fit"]


def summarise(rounds: list[dict], fit_seconds: dict[int, float], warmup: int, tight: float) -> dict:
    """Median samples/s over the rounds after warm-up, per round time and per fit phase."""
    measured = rounds[warmup:]
    per_round = [m["samples_per_s"] for m in measured]
    per_fit = [m["train_samples"] / fit_seconds[m["round"]] for m in measured if m["round"] in fit_seconds]
    median_round = statistics.median(per_round)
    return {
        "rounds_measured": [m["round"] for m in measured],
        "median_samples_per_s": median_round,
        "median_fit_phase_samples_per_s": statistics.median(per_fit) if per_fit else None,
        "median_round_seconds": statistics.median(m["seconds"] for m in measured),
        "train_samples_per_round": statistics.median(m["train_samples"] for m in measured),
        "x_tight_loop": median_round / tight,
        "fit_phase_x_tight_loop": (statistics.median(per_fit) / tight) if per_fit else None,
    }


def print_summary(payload: dict) -> None:
    """One line per configuration, against the tight loop."""
    tight = payload["tight_loop"]["samples_per_s"]
    print(f"\ntight loop (1 process, batch {payload['settings']['batch_size']}): {tight:,.0f} samples/s")
    print(f"{'workers':>7} {'share':>6} {'clients/rd':>10} {'round s':>8} {'samples/s':>10} {'x tight':>7} "
          f"{'fit-phase/s':>11} {'x tight':>7}")
    for r in payload["configs"]:
        s = r["summary"]
        fit = s["median_fit_phase_samples_per_s"] or float("nan")
        fit_x = s["fit_phase_x_tight_loop"] or float("nan")
        print(f"{r['workers']:>7} {r['share']:>6} {r['clients_per_round']:>10} {s['median_round_seconds']:>8.3f} "
              f"{s['median_samples_per_s']:>10,.0f} {s['x_tight_loop']:>7.2f} {fit:>11,.0f} {fit_x:>7.2f}")


def plan(args: argparse.Namespace) -> list[tuple[float, float]]:
    """(fraction_fit, GPU share) of every configuration, in run order."""
    return [(ff, share) for ff in args.fraction_fit for share in args.gpu_fractions]


def main(argv: list[str] | None = None) -> int:
    """Tight loop first, then fedsweep in every configuration the time budget allows."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    device = check_device(args.device)
    import ray

    from fl_core import SimConfig, load_federated_data

    logging.getLogger("flwr").setLevel(logging.WARNING)
    data = load_federated_data(SimConfig(dataset="synthetic", synthetic_size=args.synthetic_size,
                                         pool_size=args.pool_size, seed=args.seed))
    n = min(args.tight_samples, len(data.train_labels))
    tight = tight_loop(data.train_images[:n], data.train_labels[:n], args.batch_size, device)
    print(f"tight loop: {tight['samples_per_s']:,.0f} samples/s ({tight['samples']} samples in {tight['seconds']:.2f} s)",
          flush=True)
    payload = {"benchmark": "bench_gpu", "environment": environment(device), "settings": vars(args),
               "tight_loop": tight, "configs": [], "skipped": []}
    start_ray(device)
    data_ref = ray.put(data)
    try:
        for fraction_fit, share in plan(args):
            if time.perf_counter() - t_start > args.time_budget:
                payload["skipped"].append({"share": share, "fraction_fit": fraction_fit, "why": "time budget"})
                continue
            config = sim_config(args, share, fraction_fit, device)
            print(f"fedsweep: {round(1 / share)} workers at {config.num_client_gpus:g} GPU and "
                  f"{config.num_client_cpus:g} CPU each, {config.clients_per_round()} clients per round ...", flush=True)
            rounds, fit_seconds = run_fedsweep(config, data, data_ref)
            summary = summarise(rounds, fit_seconds, args.warmup_rounds, tight["samples_per_s"])
            print(f"  median {summary['median_samples_per_s']:,.0f} samples/s = {summary['x_tight_loop']:.2f}x tight loop",
                  flush=True)
            payload["configs"].append({"share": share, "workers": round(1 / share), "fraction_fit": fraction_fit,
                                       "clients_per_round": config.clients_per_round(), "summary": summary,
                                       "rounds": rounds, "fit_phase_seconds": fit_seconds})
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
