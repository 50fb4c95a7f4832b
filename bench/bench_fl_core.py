"""fedsweep against a tight single-process loop doing the same work, and worker memory vs pool size.

    python bench/bench_fl_core.py --data-dir DIR [--rounds 6] [--out results.json]

The job is the seed's: real CIFAR-10, 100 clients, 10 per round, 1 local epoch,
batch 32, 1 CPU per client, central evaluation on the 10,000 test images every
round, federated validation on 10 sampled clients. The tight loop trains the
same clients' samples with the same model in one process and one thread (no
Ray, no Flower), then does the same evaluations; its time divided by the cores
fedsweep used is the ideal per-round time. Target: fedsweep's round time (median
after the first, warm-up round) at most 1.5x that ideal. Both are also split
into phases (fit, central evaluation, federated evaluation; fedsweep's through
bench/phases.py) to show where the difference lies.

Then it runs a few rounds at pool sizes 100 and 1000 (10 clients per round both
times) while sampling the memory of every client worker process: the peak must
not grow with the number of clients.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

import psutil
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from phases import PhaseTimer  # noqa: E402  (bench/ is on sys.path: scripts run from it)
from provenance import write_results  # noqa: E402

from fl_core import Callback, SimConfig, load_federated_data, run_simulation  # noqa: E402
from fl_core.client import client_seed  # noqa: E402
from fl_core.client_manager import SeededClientManager  # noqa: E402
from fl_core.models import build_model  # noqa: E402
from fl_core.task import evaluate, get_parameters, place_model, set_parameters, to_tensor, train  # noqa: E402


class Rounds(Callback):
    """Collects per-round metrics."""

    def __init__(self):
        self.metrics = []

    def on_round_end(self, event):
        self.metrics.append(event.metrics)


class WorkerMemory:
    """Polls the RSS and USS of Ray's ClientWorker processes in a thread; keeps the peaks."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak_rss, self.peak_uss, self.workers = interval, 0, 0, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.is_set():
            for proc in psutil.process_iter(["cmdline"]):
                try:
                    if "ClientWorker" not in " ".join(proc.info["cmdline"] or []):
                        continue
                    mem = proc.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                self.workers.add(proc.pid)
                self.peak_rss, self.peak_uss = max(self.peak_rss, mem.rss), max(self.peak_uss, mem.uss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def tight_loop(config: SimConfig, data, sampled_rounds: list[tuple[list[int], list[int]]]) -> tuple[float, dict]:
    """Median seconds per round, and per phase, for the same work in one process and one thread."""
    torch.set_num_threads(1)
    model = place_model(build_model(config.model, config.seed), "cpu")  # fl_core's layout
    global_params = get_parameters(model)
    test_x, test_y = to_tensor(data.test_images), torch.from_numpy(data.test_labels)
    times, phases = [], {"fit": [], "central_evaluation": [], "federated_evaluation": []}
    for rnd, (fit_ids, eval_ids) in enumerate(sampled_rounds, start=1):
        t0 = time.perf_counter()
        updates = []
        for cid in fit_ids:
            images, labels = data.client_arrays(cid, "train")
            set_parameters(model, global_params)
            train(model, to_tensor(images), torch.from_numpy(labels), epochs=config.local_epochs,
                  batch_size=config.batch_size, lr=config.lr, momentum=config.momentum,
                  weight_decay=config.weight_decay, augment=config.augment,
                  generator=torch.Generator().manual_seed(client_seed(config.seed, rnd, cid)))
            updates.append((get_parameters(model), len(labels)))
        total = sum(n for _, n in updates)
        global_params = [sum(p[i] * n for p, n in updates) / total for i in range(len(global_params))]
        set_parameters(model, global_params)
        t1 = time.perf_counter()
        evaluate(model, test_x, test_y, config.eval_batch_size)
        t2 = time.perf_counter()
        for cid in eval_ids:
            images, labels = data.client_arrays(cid, "val")
            evaluate(model, to_tensor(images), torch.from_numpy(labels), config.eval_batch_size)
        t3 = time.perf_counter()
        times.append(t3 - t0)
        for phase, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
            phases[phase].append(seconds)
    steady = slice(1, None) if len(times) > 1 else slice(None)
    return statistics.median(times[steady]), {phase: statistics.median(v[steady]) for phase, v in phases.items()}


def sampled_clients(config: SimConfig, rounds: int) -> list[tuple[list[int], list[int]]]:
    """The clients fedsweep samples each round (same seeded draws), for the tight loop."""
    from flwr.server.client_proxy import ClientProxy

    class Stub(ClientProxy):
        get_properties = get_parameters = fit = evaluate = reconnect = None

    cm = SeededClientManager(config.seed)
    for cid in range(config.pool_size):
        cm.register(Stub(str(cid)))
    out = []
    for rnd in range(1, rounds + 1):
        cm.start_round(rnd)
        fit = [int(p.cid) for p in cm.sample(config.clients_per_round())]
        ev = [int(p.cid) for p in cm.sample(config.clients_per_evaluation())]
        out.append((fit, ev))
    return out


def main() -> int:
    """Run both comparisons and print (and optionally save) the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--memory-rounds", type=int, default=3)
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()

    import ray

    cores = os.cpu_count()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING")
    import logging

    logging.getLogger("flwr").setLevel(logging.WARNING)
    config = SimConfig(dataset="cifar10", data_dir=args.data_dir, pool_size=100, fraction_fit=0.1,
                       fraction_evaluate=0.1, num_rounds=args.rounds, local_epochs=1, batch_size=32,
                       num_client_cpus=1)
    data = load_federated_data(config)
    rounds = Rounds()
    t0 = time.perf_counter()
    with PhaseTimer() as timer:
        run_simulation(config, data=data, callbacks=[rounds])
    fedsweep_wall = time.perf_counter() - t0
    steady = rounds.metrics[1:]
    fed_round = statistics.median(m["seconds"] for m in steady)
    samples = statistics.median(m["train_samples"] for m in steady)
    workers_used = min(cores, config.clients_per_round())

    fed_phases = timer.medians([m["round"] for m in steady])
    tight_round, tight_phases = tight_loop(config, data, sampled_clients(config, args.rounds))
    ideal = tight_round / workers_used
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cores} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, torch {torch.__version__}, ray {ray.__version__}",
        "job": "CIFAR-10, 100 clients, 10/round, 1 epoch, batch 32, 1 CPU/client, central eval every round",
        "fedsweep_round_s": fed_round,
        "fedsweep_samples_per_s": samples / fed_round,
        "fedsweep_wall_s_including_startup": fedsweep_wall,
        "tight_loop_round_s_1_thread": tight_round,
        "tight_loop_samples_per_s": samples / tight_round,
        "cores_used": workers_used,
        "ideal_round_s": ideal,
        "ratio_to_ideal": fed_round / ideal,
        "final_accuracy": rounds.metrics[-1]["central_accuracy"],
        "phase_seconds": {"fedsweep": fed_phases, "tight_loop_1_thread": tight_phases},
    }
    print(f"fedsweep:   {fed_round:.3f} s/round  {samples / fed_round:,.0f} train samples/s (median of rounds 2-{args.rounds})")
    print(f"tight loop: {tight_round:.3f} s/round in 1 thread  {samples / tight_round:,.0f} samples/s")
    print(f"ideal over {workers_used} cores: {ideal:.3f} s/round -> fedsweep is {fed_round / ideal:.2f}x the ideal (target <= 1.5)")
    print(f"{'phase (median s)':>22} | {'fedsweep':>8} | {'tight loop':>10} | {f'tight / {workers_used}':>10}")
    for phase, tight_s in tight_phases.items():
        print(f"{phase:>22} | {fed_phases.get(phase, float('nan')):>8.3f} | {tight_s:>10.3f} | {tight_s / workers_used:>10.3f}")

    memory = {}
    for pool in (100, 1000):
        cfg = SimConfig(**{**config.to_dict(), "pool_size": pool, "fraction_fit": 10 / pool,
                           "fraction_evaluate": 10 / pool, "num_rounds": args.memory_rounds})
        pool_data = load_federated_data(cfg)
        with WorkerMemory() as mem:
            run_simulation(cfg, data=pool_data)
        memory[pool] = {"peak_rss_mib": mem.peak_rss / 2**20, "peak_uss_mib": mem.peak_uss / 2**20, "workers": len(mem.workers)}
        print(f"pool {pool:>4}: {len(mem.workers)} workers, peak RSS {mem.peak_rss / 2**20:.0f} MiB, "
              f"peak USS (private) {mem.peak_uss / 2**20:.0f} MiB per worker")
    results["worker_memory"] = memory
    ray.shutdown()
    if args.out:
        write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
