"""`python -m fl_core`: run one federated simulation from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time

from fl_core.config import (AUGMENTS, DATASETS, PARTITIONS, STRATEGIES, ConfigError, SimConfig, local_resources,
                            setting_type)

HELP = {
    "dataset": f"data set: {', '.join(DATASETS)} (synthetic: CIFAR-shaped, learnable, for tests and quick runs)",
    "data_dir": "folder holding cifar-10-batches-py; default ./data, where CIFAR-10 is downloaded if absent",
    "synthetic_size": "training images of the synthetic set (test set: a fifth of it)",
    "pool_size": "number of clients the training set is split into",
    "partition": f"how to split: {', '.join(PARTITIONS)} (Flower Datasets partitioners)",
    "alpha": "Dirichlet concentration for --partition dirichlet (smaller: more skewed)",
    "classes_per_client": "labels each client holds for --partition pathological",
    "val_ratio": "share of each client's data kept as its validation split, in [0, 1)",
    "model": "model from fl_core.models.MODELS",
    "num_rounds": "federated rounds",
    "fraction_fit": "share of clients sampled to train each round, in (0, 1]",
    "fraction_evaluate": "share of clients sampled for federated validation each round (0: none)",
    "min_fit_clients": "at least this many clients train each round",
    "min_evaluate_clients": "at least this many clients validate each round",
    "local_epochs": "local epochs per round",
    "batch_size": "local minibatch size",
    "lr": "local SGD learning rate",
    "momentum": "local SGD momentum",
    "weight_decay": "local SGD weight decay",
    "augment": f"training augmentation: {', '.join(AUGMENTS)} (crop-flip: reflect-pad 4, random crop, h-flip)",
    "eval_batch_size": "batch size for evaluation",
    "strategy": f"aggregation: {', '.join(STRATEGIES)}",
    "proximal_mu": "FedProx proximal term weight",
    "server_lr": "server learning rate of fedavgm (server_learning_rate) or fedadam/fedyogi (eta); "
    "default: Flower's default for the strategy",
    "server_momentum": "FedAvgM server momentum",
    "num_client_cpus": "CPUs per client worker (its torch thread count)",
    "num_client_gpus": "GPUs per client worker, fractions share a GPU (e.g. 0.25)",
    "server_cpus": "torch threads of the server's central evaluation; default: in a Tune trial its own "
    "bundle's CPUs, alone every local core (client workers idle meanwhile)",
    "max_parallel_clients": "cap on client workers running at once (default: as many as fit)",
    "seed": "seed of partitioning, model init, client sampling and local shuffling",
}


def build_parser() -> argparse.ArgumentParser:
    """Parser whose flags mirror SimConfig; unset flags are absent from the result."""
    parser = argparse.ArgumentParser(
        prog="python -m fl_core",
        description="Federated CIFAR-10 simulation with Flower clients on Ray actors (FedAvg and friends), "
        "checkpointed every round and resumable.",
        argument_default=argparse.SUPPRESS,  # only flags given on the command line come back
    )
    defaults = SimConfig()
    for f in dataclasses.fields(SimConfig):
        default = getattr(defaults, f.name)
        kind, _ = setting_type(f.name)
        shown = "(see text)" if default is None else default
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, help=f"{HELP[f.name]} (default: {shown})")
    parser.add_argument("--checkpoint-dir", help="folder for the checkpoint and metrics (default: results/run-<time>, "
                        "or the resumed checkpoint's folder)")
    parser.add_argument("--resume", metavar="PATH", help="continue from a checkpoint (file or its folder); "
                        "settings default to the checkpoint's")
    parser.add_argument("--address", help="join this Ray cluster (e.g. auto); default: $RAY_ADDRESS when set "
                        "(as in a Ray Job), else start a local Ray in-process")
    parser.add_argument("--verbose", action="store_true", help="keep Ray's and Flower's info logging")
    return parser


def _prepare(argv: list[str] | None):
    """Parse and check everything that can be checked before Ray starts.

    Returns (config, resume state or None, output folder, Ray address or None, verbose).
    """
    from fl_core.checkpoint import CHECKPOINT_FILE, check_compatible, checkpoint_path, load_checkpoint

    args = vars(build_parser().parse_args(argv))
    resume_path = args.pop("resume", None)
    out_dir = args.pop("checkpoint_dir", None)
    address = args.pop("address", os.environ.get("RAY_ADDRESS"))  # set by Ray inside a Ray Job
    verbose = args.pop("verbose", False)
    resume = None
    if resume_path is not None:
        resume = load_checkpoint(resume_path)
        config = SimConfig.from_dict({**resume.config, **args})
        check_compatible(resume, config)
        out_dir = out_dir or os.path.dirname(os.path.abspath(checkpoint_path(resume_path)))
    else:
        config = SimConfig.from_dict(args)
        out_dir = out_dir or os.path.join("results", time.strftime("run-%Y%m%d-%H%M%S"))
        if os.path.exists(os.path.join(out_dir, CHECKPOINT_FILE)):
            raise ConfigError(f"{out_dir} already holds a run: continue it with --resume {out_dir}, or pick another --checkpoint-dir")
    if address is None:
        cpus, gpus = local_resources()
        config.validate(local_cpus=cpus, local_gpus=gpus)
    else:
        config.validate()
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"--checkpoint-dir {out_dir} is a file, not a folder")
    return config, resume, out_dir, address, verbose


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input)."""
    try:
        config, resume, out_dir, address, verbose = _prepare(argv)
        from fl_core.data import load_federated_data, partition_summary

        data = load_federated_data(config)
    except ConfigError as exc:
        print(f"fl_core: error: {exc}", file=sys.stderr)
        return 2
    import ray

    from fl_core.callbacks import CheckpointWriter, MetricsWriter, ProgressPrinter
    from fl_core.server import run_simulation

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    print(partition_summary(data))
    owns_ray = not ray.is_initialized()  # a caller (e.g. a test) may have connected already
    if owns_ray and address is None:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
    elif owns_ray:
        ray.init(address=address, logging_level=logging.WARNING)
    where = f"resuming after round {resume.round}" if resume else "starting"
    print(f"{where}: {config.num_rounds} rounds, {config.clients_per_round()} of {config.pool_size} clients per round, "
          f"strategy {config.strategy}; checkpoints and metrics in {out_dir}")
    try:
        run_simulation(
            config,
            data=data,
            resume=resume,
            callbacks=[ProgressPrinter(), CheckpointWriter(out_dir), MetricsWriter(out_dir)],
        )
    except ConfigError as exc:  # e.g. a cluster joined with --address that cannot fit one client
        print(f"fl_core: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if owns_ray:
            ray.shutdown()
    return 0
