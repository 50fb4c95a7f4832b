"""The job's strategy from its run config, and the run config's checks (fedsweep calls them before Ray starts)."""

from __future__ import annotations

import math
import os

from fl_core.strategies import from_run_config

CHOICES = {
    "dataset": ("cifar10", "synthetic"),
    "partition": ("iid", "dirichlet", "pathological"),
    "augment": ("none", "crop-flip"),
}


def clients_per_round(run_config, num_nodes: int) -> int:
    """Clients trained each round, as Flower's strategies count them."""
    return max(int(num_nodes * run_config["fraction-train"]), run_config["min-train-nodes"])


def build_strategy(run_config, num_nodes: int):
    """The run config's strategy (and DP wrapper), sampling as the run config says."""
    evaluates = run_config["fraction-evaluate"] > 0 and run_config["val-ratio"] > 0
    return from_run_config(
        run_config,
        num_sampled_clients=clients_per_round(run_config, num_nodes),
        fraction_train=run_config["fraction-train"],
        fraction_evaluate=run_config["fraction-evaluate"] if evaluates else 0.0,
        min_train_nodes=run_config["min-train-nodes"],
        min_evaluate_nodes=run_config["min-evaluate-nodes"],
        # Every node is there from the start: Flower's sampler waits forever for more than exist.
        min_available_nodes=max(run_config["min-train-nodes"], run_config["min-evaluate-nodes"] if evaluates else 0),
        client_learning_rate=run_config["lr"],  # QFedAvg's: the clients' own learning rate
    )


def check_run_config(run_config: dict, num_partitions: int) -> None:
    """Raise ValueError, with what to change, on the first bad run-config value."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(message)

    rc = run_config
    for key, choices in CHOICES.items():
        need(rc[key] in choices, f"{key} must be one of {', '.join(choices)}, got {rc[key]!r}")
    need(rc["num-server-rounds"] >= 1, f"num-server-rounds must be at least 1, got {rc['num-server-rounds']}")
    need(0 < rc["fraction-train"] <= 1, f"fraction-train must be in (0, 1], got {rc['fraction-train']}")
    need(0 <= rc["fraction-evaluate"] <= 1, f"fraction-evaluate must be in [0, 1], got {rc['fraction-evaluate']}")
    for key in ("min-train-nodes", "min-evaluate-nodes", "local-epochs", "batch-size", "eval-batch-size",
                "classes-per-client"):
        need(rc[key] >= 1, f"{key} must be at least 1, got {rc[key]}")
    need(num_partitions >= rc["min-train-nodes"],
         f"--pool-size {num_partitions} is smaller than min-train-nodes {rc['min-train-nodes']}: "
         "raise the pool size or lower min-train-nodes")
    need(rc["fraction-evaluate"] == 0 or num_partitions >= rc["min-evaluate-nodes"],
         f"--pool-size {num_partitions} is smaller than min-evaluate-nodes {rc['min-evaluate-nodes']}: "
         "raise the pool size or lower min-evaluate-nodes")
    need(rc["alpha"] > 0 and math.isfinite(rc["alpha"]), f"alpha must be a positive number, got {rc['alpha']}")
    need(0 <= rc["val-ratio"] < 1, f"val-ratio must be in [0, 1), got {rc['val-ratio']}")
    need(rc["lr"] > 0, f"lr must be positive, got {rc['lr']}")
    need(rc["momentum"] >= 0, f"momentum must be >= 0, got {rc['momentum']}")
    need(rc["weight-decay"] >= 0, f"weight-decay must be >= 0, got {rc['weight-decay']}")
    need(rc["synthetic-size"] >= 10, f"synthetic-size must be at least 10, got {rc['synthetic-size']}")
    need(rc["fedprox.proximal-mu"] >= 0, f"fedprox.proximal-mu must be >= 0, got {rc['fedprox.proximal-mu']}")
    need(rc["data-dir"] == "" or os.path.isdir(rc["data-dir"]),
         f"data-dir {rc['data-dir']} does not exist: create it or point it at the folder holding cifar-10-batches-py")
    build_strategy(rc, num_partitions)  # the strategy's own checks (unknown name, DP parameters...)
