"""The job as Flower 1.42's PyTorch app template (`flwr new`) writes it, in one module: a `ClientApp` with
per-sample torchvision transforms behind a `DataLoader`, a `ServerApp` running the Message-API
`FedAvg.start(...)` with a central `evaluate_fn`.

Only the data source and the model differ from the template, so that both sides of `bench_engine.py --against
flower` train on the same partitions from the same weights: the client reads the built-in app's `FederatedData`
from Ray's object store (once per worker process) and its node's `partition-id`; the model is
`cifar10_app.task.initial_model`. Ray's workers import this module by name (bench/ is on their PYTHONPATH).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np
import ray
import torch
from cifar10_app.task import initial_model
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import Compose, Normalize, ToTensor

TRANSFORMS = Compose([ToTensor(), Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
CENTRAL_EVAL_BATCH = 128  # the template's central test loader batch size


def pick_device() -> torch.device:
    """The template's device choice: the first GPU if there is one, else the CPU."""
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


class PartitionDataset(Dataset):
    """uint8 NCHW images and labels, yielded one PIL image at a time through the transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=TRANSFORMS) -> None:
        """Hold the arrays; nothing is converted until a sample is read."""
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """(normalised CHW float tensor, label) of sample i, via PIL as torchvision datasets do."""
        image = Image.fromarray(np.ascontiguousarray(self.images[i].transpose(1, 2, 0)))
        return self.transform(image), int(self.labels[i])


@functools.lru_cache(maxsize=2)
def shared_data(data_ref: ray.ObjectRef):
    """The built-in app's `FederatedData`, fetched from the object store once per worker process."""
    return ray.get(data_ref)


def partition_loader(data, partition_id: int, split: str, batch_size: int, shuffle: bool) -> DataLoader:
    """A DataLoader over one client's `train` or `val` split."""
    images, labels = data.client_arrays(partition_id, split)
    return DataLoader(PartitionDataset(images, labels), batch_size=batch_size, shuffle=shuffle)


def train_fn(net: torch.nn.Module, loader: DataLoader, epochs: int, lr: float, momentum: float, device) -> float:
    """The template's local training loop; returns the mean training loss per batch."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad()
            loss = criterion(net(images.to(device)), labels.to(device))
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    return running_loss / max(len(loader) * epochs, 1)


def test_fn(net: torch.nn.Module, loader: DataLoader, device) -> tuple[float, float]:
    """The template's evaluation loop: (mean loss per sample, accuracy)."""
    net.to(device)
    net.eval()
    criterion = torch.nn.CrossEntropyLoss(reduction="sum")
    loss, correct = 0.0, 0
    with torch.no_grad():
        for images, labels in loader:
            outputs = net(images.to(device))
            labels = labels.to(device)
            loss += criterion(outputs, labels).item()
            correct += (outputs.argmax(1) == labels).sum().item()
    n = max(len(loader.dataset), 1)
    return loss / n, correct / n


def received_model(msg: Message) -> torch.nn.Module:
    """A fresh model holding the weights the server sent."""
    net = initial_model(0)
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return net


def make_client_app(data_ref: ray.ObjectRef) -> ClientApp:
    """The ClientApp: train and evaluate on the node's partition of the shared data."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        """Local training, as the template's `@app.train()`."""
        cfg = msg.content["config"]
        net = received_model(msg)
        loader = partition_loader(
            shared_data(data_ref), int(context.node_config["partition-id"]), "train", int(cfg["batch-size"]), True
        )
        loss = train_fn(net, loader, int(cfg["local-epochs"]), float(cfg["lr"]), float(cfg["momentum"]), pick_device())
        metrics = MetricRecord({"train_loss": loss, "num-examples": len(loader.dataset)})
        content = RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Local validation, as the template's `@app.evaluate()`."""
        cfg = msg.content["config"]
        net = received_model(msg)
        loader = partition_loader(
            shared_data(data_ref), int(context.node_config["partition-id"]), "val", int(cfg["batch-size"]), False
        )
        loss, accuracy = test_fn(net, loader, pick_device())
        metrics = MetricRecord({"eval_loss": loss, "eval_acc": accuracy, "num-examples": len(loader.dataset)})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app


@dataclass
class RoundRecorder:
    """Per-round wall time and central accuracy, taken in the ServerApp.

    `Strategy.start` calls `evaluate_fn` once before round 1 and once at the end of every round (after training,
    aggregation and federated evaluation), so the time between two calls is one round, central evaluation included.
    """

    rounds: list[dict] = field(default_factory=list)
    last_mark: float | None = None

    def mark(self, server_round: int, accuracy: float) -> None:
        """Close round `server_round` (0: the initial evaluation) with its central accuracy."""
        now = time.perf_counter()
        if server_round > 0:
            self.rounds.append({"round": server_round, "seconds": now - self.last_mark, "central_accuracy": accuracy})
        self.last_mark = now


def central_loader(data) -> DataLoader:
    """The full test set behind the template's transforms."""
    return DataLoader(PartitionDataset(data.test_images, data.test_labels), batch_size=CENTRAL_EVAL_BATCH)


def make_evaluate_fn(data, recorder: RoundRecorder):
    """Central evaluation on the whole test set, timing each round as a side effect."""
    loader = central_loader(data)
    net = initial_model(0)
    device = pick_device()

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Score the global model; closes the round's timer."""
        net.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = test_fn(net, loader, device)
        recorder.mark(server_round, accuracy)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    return evaluate_fn


def make_server_app(data, run_config: dict, recorder: RoundRecorder) -> ServerApp:
    """The ServerApp: FedAvg from the same initial weights as fedsweep, central evaluation every round.

    `run_config` is the built-in app's fused run config (its keys: fraction-train,
    fraction-evaluate, min-train-nodes, min-evaluate-nodes, num-server-rounds,
    local-epochs, batch-size, lr, momentum, seed).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        """Run FedAvg for the configured rounds."""
        initial = ArrayRecord(initial_model(run_config["seed"]).state_dict())
        strategy = FedAvg(
            fraction_train=run_config["fraction-train"],
            fraction_evaluate=run_config["fraction-evaluate"],
            min_train_nodes=run_config["min-train-nodes"],
            min_evaluate_nodes=run_config["min-evaluate-nodes"],
            min_available_nodes=max(run_config["min-train-nodes"], run_config["min-evaluate-nodes"]),
        )
        train_config = ConfigRecord(
            {
                "lr": run_config["lr"],
                "momentum": run_config["momentum"],
                "local-epochs": run_config["local-epochs"],
                "batch-size": run_config["batch-size"],
            }
        )
        evaluate_config = ConfigRecord({"batch-size": run_config["batch-size"]})

        strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=run_config["num-server-rounds"],
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=make_evaluate_fn(data, recorder),
        )

    return app
