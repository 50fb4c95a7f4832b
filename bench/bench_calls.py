"""Where a client call's time goes: the engine's per-call cost broken down, on many small clients.

    python bench/bench_calls.py --data-dir DIR [--repeats 3] [--out calls.json]
    python bench/bench_calls.py --dataset synthetic --smoke        # a quick check of the code path

The job is pfl-research's CIFAR-10 shape (issue 19): the built-in app, 1,000
IID clients of 50 images, no validation split, 50 clients a round, 1 local
epoch, batch 10, lr 0.1, FedAvg. One train phase is taken apart, every step in
this process on one thread (median over --repeats):

- driver: FedAvg's `configure_train` building the phase's messages;
- serialisation: pickling one call's arguments (message, Context, seed) and
  unpickling them, its bytes; the same for its reply (reply, state);
- worker: the received ArrayRecord into the model, the partition's tensors,
  training, the reply's ArrayRecord; the whole ClientApp call;
- aggregation: FedAvg's `aggregate_train` of the phase's replies.

Then the phase through the engine (`RayGrid.send_and_receive` on a pool of W
workers, W = --workers), alternated with the same calls in this process. The
engine's cost per call is (engine phase x W - in-process phase) / calls: what
the engine adds to each client beyond the ClientApp's own work, with W workers
sharing the machine's cores.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import statistics
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(BENCH_DIR), os.path.join(os.path.dirname(BENCH_DIR), "apps", "cifar10")]
from provenance import median_time, versions, write_results  # noqa: E402  (bench/ is on sys.path: scripts run from it)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Benchmark options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="", help="folder holding cifar-10-batches-py")
    p.add_argument("--dataset", choices=("cifar10", "synthetic"), default="cifar10")
    p.add_argument("--pool-size", type=int, default=1000)
    p.add_argument("--clients", type=int, default=50, help="clients a round")
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--workers", type=int, default=2, help="client workers of the engine's pool")
    p.add_argument("--repeats", type=int, default=3, help="phases per measurement (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="a small synthetic job, one repeat")
    p.add_argument("--out", default="calls.json")
    args = p.parse_args(argv)
    if args.smoke:
        args.dataset, args.pool_size, args.clients, args.repeats = "synthetic", 100, 10, 1
    return args


def run_config_of(args, app) -> dict:
    """The built-in app's run config for the job."""
    from fl_core.apps import bind_seed, fuse_run_config

    overrides = {
        "dataset": args.dataset,
        "data-dir": args.data_dir,
        "synthetic-size": 50 * args.pool_size,
        "val-ratio": 0.0,
        "fraction-train": args.clients / args.pool_size,
        "fraction-evaluate": 0.0,
        "local-epochs": 1,
        "batch-size": args.batch_size,
        "lr": 0.1,
        "momentum": 0.0,
        "num-server-rounds": 1,
        "seed": args.seed,
    }
    return bind_seed(app, fuse_run_config(app, overrides), args.seed)


class Phase:
    """One train phase of the job: its messages and the nodes' Contexts, as the engine builds them."""

    def __init__(self, args, app, run_config: dict) -> None:
        from cifar10_app.strategy import build_strategy
        from cifar10_app.task import initial_model
        from flwr.app import ArrayRecord, ConfigRecord

        from fl_core.grid import RayGrid
        from fl_core.seeding import NodeSampler, seeded_node_sampling

        self.run_config = run_config
        self.strategy = build_strategy(run_config, args.pool_size)
        self.arrays = ArrayRecord(initial_model(args.seed).state_dict())
        self.config = ConfigRecord({"lr": 0.1, "local-epochs": 1})
        # A grid without a pool: its node Contexts and call seeds are the engine's own.
        self.grid = RayGrid(None, num_nodes=args.pool_size, run_config=run_config, seed=args.seed, run_id=1)
        self.sampling = lambda: seeded_node_sampling(NodeSampler(args.seed))

    def messages(self) -> list:
        """FedAvg's train messages for round 1."""
        with self.sampling():
            return list(self.strategy.configure_train(1, self.arrays, self.config, self.grid))

    def calls(self, messages: list) -> list[tuple]:
        """(message, Context, seed) of each message, as the grid sends them."""
        return [(m, self.grid.contexts[m.metadata.dst_node_id], self.grid.call_seed(m)) for m in messages]


def breakdown(args, phase: Phase, client_app) -> dict:
    """Each step of a train phase in this process, on one thread (seconds, medians)."""
    import torch
    from cifar10_app.client_app import _partition, _received_model
    from cifar10_app.task import client_seed, pick_device, train
    from flwr.app import ArrayRecord

    from fl_core.seeding import seed_globals

    messages = phase.messages()
    calls = phase.calls(messages)
    message, context, seed = calls[0]
    device = pick_device()
    rc = phase.run_config

    def whole_calls() -> list:
        out = []
        for m, c, s in calls:
            seed_globals(s)
            out.append(client_app(m, c))
        return out

    replies = whole_calls()
    reply_payload = (replies[0], context.state)
    model = _received_model(message, device)
    x, y = _partition(context, "train", device)

    def train_once() -> None:
        train(
            model,
            x,
            y,
            epochs=1,
            batch_size=rc["batch-size"],
            lr=0.1,
            momentum=0.0,
            weight_decay=0.0,
            augment="none",
            generator=torch.Generator().manual_seed(client_seed(0, 1, 0)),
        )

    pickled = median_time(lambda: pickle.dumps(calls[0], protocol=5), args.repeats * 20)
    per_call = {
        "args_pickle": pickled,
        "args_unpickle": median_time(lambda: pickle.loads(pickle.dumps(calls[0], protocol=5)), args.repeats * 20)
        - pickled,
        "reply_pickle": median_time(lambda: pickle.dumps(reply_payload, protocol=5), args.repeats * 20),
        "record_to_model": median_time(lambda: _received_model(message, device), args.repeats * 20),
        "partition_tensors": median_time(lambda: _partition(context, "train", device), args.repeats * 20),
        "train": median_time(train_once, args.repeats * 5),
        "model_to_record": median_time(lambda: ArrayRecord(model.state_dict()), args.repeats * 20),
        "client_app_call": median_time(whole_calls, args.repeats) / len(calls),
    }
    return {
        "calls": len(calls),
        "args_bytes": len(pickle.dumps(calls[0], protocol=5)),
        "reply_bytes": len(pickle.dumps(reply_payload, protocol=5)),
        "phase_args_bytes_one_pickle": len(pickle.dumps(calls, protocol=5)),
        "configure_train": median_time(phase.messages, args.repeats),
        "aggregate_train": median_time(lambda: phase.strategy.aggregate_train(1, replies), args.repeats),
        "per_call": per_call,
    }


def engine_cost(args, app, phase: Phase, client_app, values: list) -> dict:
    """The train phase through the engine's grid and pool, alternated with the same calls in this process."""
    import ray

    from fl_core import shared_data
    from fl_core.grid import RayGrid
    from fl_core.pool import WorkerPool
    from fl_core.runner import RUN_ID
    from fl_core.seeding import seed_globals
    from fl_core.settings import RunSettings

    settings = RunSettings(pool_size=args.pool_size, seed=args.seed, max_parallel_clients=args.workers)
    ray.init(num_cpus=max(args.workers, os.cpu_count() or 1), include_dashboard=False, logging_level="WARNING")
    pool = None
    try:
        shared_data.publish(values)
        pool = WorkerPool(app, settings, phase.run_config, values, RUN_ID)
        grid = RayGrid(pool, num_nodes=args.pool_size, run_config=phase.run_config, seed=args.seed, run_id=RUN_ID)
        pool.wait_ready()
        grid.send_and_receive(phase.messages())  # warm-up: imports, the data fetched once per worker
        engine, local = [], []
        for _ in range(args.repeats):
            messages = phase.messages()
            t0 = time.perf_counter()
            grid.send_and_receive(messages)
            engine.append(time.perf_counter() - t0)
            calls = phase.calls(phase.messages())
            t0 = time.perf_counter()
            for m, c, s in calls:
                seed_globals(s)
                client_app(m, c)
            local.append(time.perf_counter() - t0)
        e, loc = statistics.median(engine), statistics.median(local)
        return {
            "workers": pool.size,
            "engine_phase_s": e,
            "in_process_phase_s": loc,
            "engine_per_call_s": (e * pool.size - loc) / len(messages),
            "engine_runs": engine,
            "in_process_runs": local,
        }
    finally:
        if pool is not None:
            pool.shutdown()
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Measure, print, write the results file."""
    import torch

    import fl_core
    from fl_core import shared_data
    from fl_core.runner import prepare_shared

    args = parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.WARNING)  # no line per configure/aggregate call
    torch.set_num_threads(1)
    app = fl_core.load_app_folder(None)
    run_config = run_config_of(args, app)
    values = prepare_shared(app, run_config, args.pool_size)
    shared_data.install(values)
    client_app = app.load("client")
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1
    phase = Phase(args, app, run_config)
    parts = breakdown(args, phase, client_app)
    engine = engine_cost(args, app, phase, client_app, values)
    results = {"versions": versions(), "args": vars(args), "breakdown": parts, "engine": engine}
    write_results(args.out, results)

    ms = lambda s: f"{s * 1000:8.2f} ms"  # noqa: E731
    print(f"train phase of {parts['calls']} clients, batch {args.batch_size}; one thread, in this process:")
    print(f"  configure_train (driver)        {ms(parts['configure_train'])}")
    for name, seconds in parts["per_call"].items():
        print(f"  per call: {name:22s}{ms(seconds)}")
    print(
        f"  call arguments {parts['args_bytes']:,} bytes pickled, reply {parts['reply_bytes']:,}; "
        f"the phase's arguments in one pickle {parts['phase_args_bytes_one_pickle']:,}"
    )
    print(f"  aggregate_train (driver)        {ms(parts['aggregate_train'])}")
    print(
        f"engine, {engine['workers']} workers: phase {engine['engine_phase_s']:.3f} s, in-process "
        f"{engine['in_process_phase_s']:.3f} s; engine cost per call {ms(engine['engine_per_call_s'])}"
    )
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
