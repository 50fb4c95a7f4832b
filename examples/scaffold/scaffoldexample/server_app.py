"""SCAFFOLD's ServerApp: rounds handed to fedsweep (resumable), central evaluation, then every node scores the model."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

import fl_core
from cifar10_app.data import load_data
from cifar10_app.server_app import central_evaluation  # the built-in app's: the same model and test set
from cifar10_app.task import initial_model
from scaffoldexample.strategy import Scaffold
from scaffoldexample.task import EVAL_BATCH_SIZE

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """SCAFFOLD for num-server-rounds (fedsweep runs and checkpoints them; Flower's engine via strategy.start)."""
    rc = context.run_config
    evaluates = rc["fraction-evaluate"] > 0 and rc["val-ratio"] > 0  # no validation data: nothing to evaluate on
    minimum = max(rc["min-train-nodes"], rc["min-evaluate-nodes"] if evaluates else 0)
    num_nodes = fl_core.wait_for_nodes(grid, minimum)
    data = load_data(rc, num_nodes)
    strategy = Scaffold(
        num_nodes=num_nodes,
        fraction_train=rc["fraction-train"],
        fraction_evaluate=rc["fraction-evaluate"] if evaluates else 0.0,
        min_train_nodes=rc["min-train-nodes"],
        min_evaluate_nodes=rc["min-evaluate-nodes"],
        min_available_nodes=minimum,  # every node exists from the start: Flower's sampler waits forever for more
    )
    result = fl_core.start(
        strategy,
        grid,
        initial_arrays=ArrayRecord(initial_model(rc["seed"]).state_dict()),
        num_rounds=rc["num-server-rounds"],
        train_config=ConfigRecord({"lr": rc["lr"], "local-epochs": rc["local-epochs"]}),
        evaluate_fn=central_evaluation(rc, num_nodes, len(data.test_labels), EVAL_BATCH_SIZE),
    )
    if rc["val-ratio"] > 0:  # the final model's accuracy on every node's validation split
        fl_core.evaluate_all_nodes(grid, result.arrays, server_round=rc["num-server-rounds"])
