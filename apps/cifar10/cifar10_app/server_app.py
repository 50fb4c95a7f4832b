"""The ServerApp: the chosen strategy from the seeded initial model, central evaluation every round, then every
node scores the final model."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

import fl_core
from cifar10_app.data import load_data, partition_summary
from cifar10_app.strategy import build_strategy
from cifar10_app.task import evaluate, initial_model, pick_device, place_model, to_tensor

app = ServerApp()


def central_evaluation(data, batch_size: int):
    """`evaluate_fn` for the strategy: the global model on the whole test set, in the server process."""
    device = pick_device()  # a GPU only when the server was given one
    model = place_model(initial_model(0), device)
    # tensor(), not from_numpy(): the labels may be a read-only view of Ray's object store.
    x, y = to_tensor(data.test_images, device), torch.tensor(data.test_labels, device=device)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Loss and accuracy on the test set."""
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(model, x, y, batch_size)
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    return evaluate_fn


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured rounds (fedsweep runs them resumably; Flower's engine through strategy.start)."""
    run_config = context.run_config
    num_nodes = fl_core.wait_for_nodes(grid, run_config["min-train-nodes"])
    data = load_data(run_config, num_nodes)
    print(partition_summary(data))
    result = fl_core.start(
        build_strategy(run_config, num_nodes),
        grid,
        initial_arrays=ArrayRecord(initial_model(run_config["seed"]).state_dict()),
        num_rounds=run_config["num-server-rounds"],
        train_config=ConfigRecord({"lr": run_config["lr"], "local-epochs": run_config["local-epochs"]}),
        evaluate_fn=central_evaluation(data, run_config["eval-batch-size"]),
    )
    if run_config["val-ratio"] > 0:  # the final per-client accuracy distribution
        fl_core.evaluate_all_nodes(grid, result.arrays, server_round=run_config["num-server-rounds"])
