"""SCAFFOLD's client side on fedsweep's CIFAR-10 data and CNN, the control-variate arithmetic, the run config's checks.

SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging
for Federated Learning", option II): a client starts from the global model x,
takes K local SGD steps y <- y - lr * (g(y) - c_i + c) with its own control
variate c_i and the server's c, then sets

    c_i+ = c_i - c + (x - y) / (K * lr)

and sends back y and delta c_i = c_i+ - c_i. Control variates are dicts of
float32 numpy arrays keyed like the model's parameters; a key that is absent
(c before the first aggregation, c_i before a node first trains) means zeros.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord
from torch import nn

from cifar10_app.data import check_data_config, load_data
from cifar10_app.strategy import check_rounds
from cifar10_app.task import to_tensor

CONTROL_KEY = "scaffold-control"  # the server's c, beside "arrays" in train messages
DELTA_KEY = "scaffold-control-delta"  # a client's delta c_i, beside "arrays" in train replies
STATE_KEY = "scaffold-c"  # the node's own c_i, in Context.state
EVAL_BATCH_SIZE = 500  # the built-in app's default (fast on CPU, see its pyproject.toml)

Controls = dict[str, np.ndarray]


def to_record(controls: Controls) -> ArrayRecord:
    """A control variate as an ArrayRecord (C-contiguous float32 copies)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in controls.items()})


def from_record(record: ArrayRecord | None) -> Controls:
    """A control variate from an ArrayRecord (None or empty: no entries, i.e. zeros)."""
    return {} if record is None else {k: a.numpy() for k, a in record.items()}


def parameter_arrays(model: nn.Module) -> Controls:
    """The model's trainable parameters as float32 numpy arrays (C order, whatever the memory format on device)."""
    return {n: np.ascontiguousarray(p.detach().cpu().numpy()) for n, p in model.named_parameters()}


def partition(run_config, partition_id: int, num_partitions: int, split: str,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A node's `train` or `val` split of the shared data set, as normalised tensors on `device`."""
    data = load_data(run_config, num_partitions)
    images, labels = data.client_arrays(partition_id, split)
    return to_tensor(images, device), torch.from_numpy(labels).to(device)


def scaffold_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, correction: dict[str, torch.Tensor], *,
                   epochs: int, batch_size: int, lr: float, generator: torch.Generator) -> tuple[float, int]:
    """Plain SGD on (x, y) with each parameter's gradient plus `correction[name]` (c - c_i).

    Returns (mean cross-entropy over the batches, K: the number of steps
    taken). Shuffling draws only from `generator`.
    """
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    params = list(model.named_parameters())
    n = x.shape[0]
    total, steps = torch.zeros((), device=x.device), 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                for name, p in params:
                    p.grad.add_(correction[name])  # g - c_i + c
            optimizer.step()
            total += loss.detach()
            steps += 1
    return total.item() / max(steps, 1), steps


def zeros_like(reference: Controls) -> Controls:
    """Zeros shaped like `reference`."""
    return {k: np.zeros_like(v) for k, v in reference.items()}


def updated_control(c_i: Controls, c: Controls, x: Controls, y: Controls, steps: int, lr: float) -> Controls:
    """c_i+ = c_i - c + (x - y) / (K * lr); c_i unchanged when no step was taken (an empty partition)."""
    if steps == 0:
        return dict(c_i)
    return {k: c_i[k] - c[k] + (x[k] - y[k]) / np.float32(steps * lr) for k in x}


def check_run_config(run_config: dict, num_partitions: int) -> None:
    """Raise ValueError, with what to change, on the first bad run-config value (fedsweep checks before Ray starts)."""
    check_data_config(run_config, num_partitions)  # the keys of the built-in app's data loader
    check_rounds(run_config, num_partitions)  # and its checks of rounds and sampling
    # SCAFFOLD divides by K * lr: a non-positive or non-finite lr has no meaning here.
    lr = run_config["lr"]
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr}")

