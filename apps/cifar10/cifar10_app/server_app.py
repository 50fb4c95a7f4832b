"""The ServerApp: the chosen strategy from the seeded initial model, central evaluation on the test set (in shards
that fedsweep spreads over its client workers), then every node scores the final model."""

from __future__ import annotations

import functools
import math

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

import fl_core
from cifar10_app.data import load_data, partition_summary
from cifar10_app.strategy import build_strategy
from cifar10_app.task import evaluation_sums, initial_model, pick_device, to_tensor, working_model

app = ServerApp()


def evaluate_test_shard(
    server_round: int, arrays: ArrayRecord, shard: int, *, run_config: dict, num_nodes: int, size: int
) -> dict:
    """Sums of the model's loss and correct predictions on the test images shard x size onwards (one batch).

    Runs wherever fedsweep puts the shard: a client worker (on its device) or the server.
    """
    device = pick_device()
    images, labels = test_shard(tuple(sorted(run_config.items())), num_nodes, shard, size, str(device))
    model = working_model(str(device))
    model.load_state_dict(arrays.to_torch_state_dict())
    loss_sum, correct = evaluation_sums(model, images, labels, size)
    return {"loss_sum": loss_sum, "correct": correct, "count": len(labels)}


@functools.lru_cache(maxsize=32)
def test_shard(run_config_items: tuple, num_nodes: int, shard: int, size: int, device: str):
    """(images as a normalised tensor, labels) of one test shard on `device`, made once per process and shard.

    Keyed by the run config's items (what load_data reads), so a process that
    serves another run never gets this run's tensors. 32 shards of 500 CIFAR
    images hold 200 MB at most.
    """
    data = load_data(dict(run_config_items), num_nodes)  # @shared: the object store's copy under fedsweep
    start, end = shard * size, (shard + 1) * size
    # tensor(), not from_numpy(): the labels may be a read-only view of Ray's object store.
    return to_tensor(data.test_images[start:end], device), torch.tensor(data.test_labels[start:end], device=device)


def combine_test_shards(results: list[dict]) -> MetricRecord:
    """Loss and accuracy on the whole test set from its shards' sums, added in shard order (as one pass would)."""
    loss_sum, correct, count = 0.0, 0, 0
    for result in results:
        loss_sum += result["loss_sum"]
        correct += result["correct"]
        count += result["count"]
    return MetricRecord({"loss": loss_sum / count, "accuracy": correct / count})


def central_evaluation(run_config: dict, num_nodes: int, num_test: int, batch_size: int) -> fl_core.ShardedEvaluation:
    """`evaluate_fn` for the strategy: the global model on the whole test set, one shard per evaluation batch.

    fedsweep spreads the shards over the client workers (which are idle then);
    the result is the same for any number of workers.
    """
    shard = functools.partial(evaluate_test_shard, run_config=dict(run_config), num_nodes=num_nodes, size=batch_size)
    return fl_core.ShardedEvaluation(shard, math.ceil(num_test / batch_size), combine_test_shards)


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
        evaluate_fn=central_evaluation(run_config, num_nodes, len(data.test_labels), run_config["eval-batch-size"]),
    )
    if run_config["val-ratio"] > 0:  # the final per-client accuracy distribution
        fl_core.evaluate_all_nodes(grid, result.arrays, server_round=run_config["num-server-rounds"])
