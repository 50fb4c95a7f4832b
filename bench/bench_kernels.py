"""Where a round's compute goes, without Ray or Flower: the built-in app's own kernels on one device.

    python bench/bench_kernels.py --out kernels.json                  # CPU, 1 training thread
    python bench/bench_kernels.py --device cuda --out kernels.json    # on a GPU machine

One client's local epoch (450 samples, batch 32, `cifar10_app.task.train`) and central evaluation of 10,000
images (batch 500, `evaluate`), each in NCHW and channels_last layout; K clients trained at once with
`torch.func.vmap` over stacked parameters, for each K in --vmap-clients; and K clients trained at once as the
built-in app's cohorts train them (`cifar10_app.cohort.train_cohort`: one grouped network), for each K in
--cohort-clients, against the same K clients trained one after another with `task.train`, alternating. Random
data; best of --repeats passes after a warm-up.

    python bench/bench_kernels.py --client-samples 50 --batch-size 10 --vmap-clients   # pfl's cross-device shape
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch
import torch.nn.functional as F
from cifar10_app.task import evaluate, initial_model, train
from common import versions, write_results

LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Benchmark options."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="torch device to measure on")
    p.add_argument("--train-threads", type=int, default=1, help="torch threads while training (a worker's CPUs)")
    p.add_argument(
        "--eval-threads", type=int, default=os.cpu_count(), help="torch threads while evaluating (the server's CPUs)"
    )
    p.add_argument("--client-samples", type=int, default=450, help="training samples of one client")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--test-samples", type=int, default=10_000)
    p.add_argument("--eval-batch-size", type=int, default=500)
    p.add_argument("--vmap-clients", type=int, nargs="*", default=[1, 5, 10], help="cohort sizes K to try with vmap")
    p.add_argument(
        "--cohort-clients", type=int, nargs="*", default=[1, 2, 4, 8, 16], help="cohort sizes K of train_cohort"
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="kernels.json")
    return p.parse_args(argv)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn, device: torch.device, repeats: int) -> float:
    """Fastest of `repeats` timed calls of fn(), after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def images(n: int, device: torch.device, layout: str, seed: int) -> torch.Tensor:
    """n random normalised 3x32x32 images in the given memory layout."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g).mul_(2).sub_(1).to(device).contiguous(memory_format=LAYOUTS[layout])


def labels(n: int, device: torch.device, seed: int) -> torch.Tensor:
    """n random class labels."""
    return torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed)).to(device)


def client_epoch(args: argparse.Namespace, device: torch.device, layout: str) -> float:
    """Samples/s of one client's local epoch through cifar10_app.task.train."""
    torch.set_num_threads(args.train_threads)
    model = initial_model(0).to(device, memory_format=LAYOUTS[layout])
    x, y = images(args.client_samples, device, layout, 1), labels(args.client_samples, device, 2)
    generator = torch.Generator().manual_seed(0)

    def epoch() -> None:
        """One local epoch of the client."""
        train(
            model,
            x,
            y,
            epochs=1,
            batch_size=args.batch_size,
            lr=0.01,
            momentum=0.9,
            weight_decay=0.0,
            augment="none",
            generator=generator,
        )

    return args.client_samples / best_seconds(epoch, device, args.repeats)


def central_eval(args: argparse.Namespace, device: torch.device, layout: str) -> float:
    """Seconds of one pass of cifar10_app.task.evaluate over the test-shaped set."""
    torch.set_num_threads(args.eval_threads)
    model = initial_model(0).to(device, memory_format=LAYOUTS[layout])
    x, y = images(args.test_samples, device, layout, 3), labels(args.test_samples, device, 4)
    return best_seconds(lambda: evaluate(model, x, y, args.eval_batch_size), device, args.repeats)


def vmap_cohort(args: argparse.Namespace, device: torch.device, k: int) -> float:
    """Samples/s of k clients' local epochs run together: one vmapped SGD step per batch index."""
    from torch.func import functional_call, grad, stack_module_state, vmap

    torch.set_num_threads(args.train_threads)
    models = [initial_model(i).to(device) for i in range(k)]
    params, buffers = stack_module_state(models)
    template = copy.deepcopy(models[0]).to("meta")

    def loss(p, b, xb, yb):
        """One client's batch loss as a function of its parameters."""
        return F.cross_entropy(functional_call(template, (p, b), (xb,)), yb)

    batched_grad = vmap(grad(loss))
    x = torch.stack([images(args.client_samples, device, "nchw", 10 + i) for i in range(k)])
    y = torch.stack([labels(args.client_samples, device, 100 + i) for i in range(k)])
    momentum = {name: torch.zeros_like(v) for name, v in params.items()}

    def epoch() -> None:
        """One epoch of all k clients: a vmapped SGD step with momentum per batch index."""
        for start in range(0, args.client_samples, args.batch_size):
            grads = batched_grad(
                params, buffers, x[:, start : start + args.batch_size], y[:, start : start + args.batch_size]
            )
            with torch.no_grad():
                for name, g in grads.items():
                    momentum[name].mul_(0.9).add_(g)
                    params[name].sub_(momentum[name], alpha=0.01)

    return k * args.client_samples / best_seconds(epoch, device, args.repeats)


def grouped_cohort(args: argparse.Namespace, device: torch.device, k: int) -> tuple[float, float]:
    """Samples/s of k clients' epochs: (one after another with task.train, together with train_cohort)."""
    from cifar10_app.cohort import train_cohort
    from cifar10_app.task import place_model

    torch.set_num_threads(args.train_threads)
    state = {name: v.to(device) for name, v in initial_model(0).state_dict().items()}
    data = [
        (images(args.client_samples, device, "channels_last", 10 + i), labels(args.client_samples, device, 100 + i))
        for i in range(k)
    ]
    options = dict(epochs=1, batch_size=args.batch_size, lr=0.01, momentum=0.9, weight_decay=0.0, augment="none")
    model = place_model(initial_model(0), device)

    def one_by_one() -> None:
        """Each client from the same weights, in turn, as a worker runs a group without cohorts."""
        for i, (x, y) in enumerate(data):
            model.load_state_dict(state)
            train(model, x, y, generator=torch.Generator().manual_seed(i), **options)

    def together() -> None:
        """All k clients in one grouped network."""
        train_cohort([state] * k, data, [torch.Generator().manual_seed(i) for i in range(k)], **options)

    samples = k * args.client_samples
    alone, cohort = [], []
    for _ in range(2):  # alternating, so that a slow spell of the machine hits both
        alone.append(samples / best_seconds(one_by_one, device, args.repeats))
        cohort.append(samples / best_seconds(together, device, args.repeats))
    return max(alone), max(cohort)


def main(argv: list[str] | None = None) -> int:
    """Run every measurement, print a table and write --out."""
    args = parse_args(argv)
    device = torch.device(args.device)
    result = {
        "benchmark": "bench_kernels",
        "settings": vars(args),
        "versions": versions(),
        "client_epoch_samples_per_s": {},
        "central_eval_seconds": {},
        "vmap_samples_per_s": {},
        "cohort_samples_per_s": {},
    }
    if device.type == "cuda":
        result["device_name"] = torch.cuda.get_device_name(device)

    def save() -> None:
        """Write the results so far: after every measurement, so a run cut short keeps what it measured."""
        result["load_average"] = os.getloadavg()
        write_results(args.out, result)

    for layout in LAYOUTS:
        rate = result["client_epoch_samples_per_s"][layout] = client_epoch(args, device, layout)
        secs = result["central_eval_seconds"][layout] = central_eval(args, device, layout)
        print(
            f"{layout:>13}: client epoch {rate:8.0f} samples/s ({args.train_threads} thread(s)); "
            f"central eval {secs:.3f} s ({args.eval_threads} thread(s))",
            flush=True,
        )
        save()
    for k in args.vmap_clients:
        rate = result["vmap_samples_per_s"][str(k)] = vmap_cohort(args, device, k)
        print(f"  vmap K={k:<3}: {rate:8.0f} samples/s ({args.train_threads} thread(s))", flush=True)
        save()
    for k in args.cohort_clients:
        alone, together = grouped_cohort(args, device, k)
        result["cohort_samples_per_s"][str(k)] = {"one_by_one": alone, "train_cohort": together}
        print(
            f"  cohort K={k:<3}: one by one {alone:8.0f}, train_cohort {together:8.0f} samples/s "
            f"({together / alone:.2f}x; {args.train_threads} thread(s))",
            flush=True,
        )
        save()
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
