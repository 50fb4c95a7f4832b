"""The job's strategy from its run config, and the run config's checks (fedsweep calls them before Ray starts)."""

from __future__ import annotations

from cifar10_app.data import check_data_config
from cifar10_app.scaffold import Scaffold
from fl_core.strategies import STRATEGIES, from_run_config

AUGMENTS = ("none", "crop-flip")
# Flower's strategies, and SCAFFOLD, whose client side is in this app's ClientApp.
APP_STRATEGIES = {**STRATEGIES, "scaffold": Scaffold}


def clients_per_round(run_config, num_nodes: int) -> int:
    """Clients trained each round, as Flower's strategies count them."""
    return max(int(num_nodes * run_config["fraction-train"]), run_config["min-train-nodes"])


def build_strategy(run_config, num_nodes: int):
    """The run config's strategy (and DP wrapper), sampling as the run config says."""
    evaluates = run_config["fraction-evaluate"] > 0 and run_config["val-ratio"] > 0
    return from_run_config(
        run_config,
        strategies=APP_STRATEGIES,
        num_sampled_clients=clients_per_round(run_config, num_nodes),
        fraction_train=run_config["fraction-train"],
        fraction_evaluate=run_config["fraction-evaluate"] if evaluates else 0.0,
        min_train_nodes=run_config["min-train-nodes"],
        min_evaluate_nodes=run_config["min-evaluate-nodes"],
        # Every node is there from the start: Flower's sampler waits forever for more than exist.
        min_available_nodes=max(run_config["min-train-nodes"], run_config["min-evaluate-nodes"] if evaluates else 0),
        client_learning_rate=run_config["lr"],  # QFedAvg's: the clients' own learning rate
    )


def _need(ok: bool, message: str) -> None:
    """ValueError(message) unless ok."""
    if not ok:
        raise ValueError(message)


def check_rounds(run_config, num_partitions: int) -> None:
    """ValueError on a bad value of Flower's template keys for rounds and sampling, or of local-epochs/batch-size."""
    rc = run_config
    _need(rc["num-server-rounds"] >= 1, f"num-server-rounds must be at least 1, got {rc['num-server-rounds']}")
    _need(0 < rc["fraction-train"] <= 1, f"fraction-train must be in (0, 1], got {rc['fraction-train']}")
    _need(0 <= rc["fraction-evaluate"] <= 1, f"fraction-evaluate must be in [0, 1], got {rc['fraction-evaluate']}")
    for key in ("min-train-nodes", "min-evaluate-nodes", "local-epochs", "batch-size"):
        _need(rc[key] >= 1, f"{key} must be at least 1, got {rc[key]}")
    _need(
        num_partitions >= rc["min-train-nodes"],
        f"--pool-size {num_partitions} is smaller than min-train-nodes {rc['min-train-nodes']}: "
        "raise the pool size or lower min-train-nodes",
    )
    _need(
        rc["fraction-evaluate"] == 0 or num_partitions >= rc["min-evaluate-nodes"],
        f"--pool-size {num_partitions} is smaller than min-evaluate-nodes {rc['min-evaluate-nodes']}: "
        "raise the pool size or lower min-evaluate-nodes",
    )


def check_run_config(run_config: dict, num_partitions: int) -> None:
    """Raise ValueError, with what to change, on the first bad run-config value."""
    rc = run_config
    check_data_config(rc, num_partitions)
    check_rounds(rc, num_partitions)
    _need(rc["augment"] in AUGMENTS, f"augment must be one of {', '.join(AUGMENTS)}, got {rc['augment']!r}")
    _need(rc["eval-batch-size"] >= 1, f"eval-batch-size must be at least 1, got {rc['eval-batch-size']}")
    _need(rc["lr"] > 0, f"lr must be positive, got {rc['lr']}")
    _need(rc["momentum"] >= 0, f"momentum must be >= 0, got {rc['momentum']}")
    _need(rc["weight-decay"] >= 0, f"weight-decay must be >= 0, got {rc['weight-decay']}")
    _need(rc["fedprox.proximal-mu"] >= 0, f"fedprox.proximal-mu must be >= 0, got {rc['fedprox.proximal-mu']}")
    _need(
        rc["strategy"] != "scaffold" or rc["dp"] == "off",
        f"strategy scaffold does not take a DP wrapper (its replies carry two ArrayRecords), got dp {rc['dp']!r}: "
        "set dp to off",
    )
    build_strategy(rc, num_partitions)  # the strategy's own checks (unknown name, DP parameters...)
