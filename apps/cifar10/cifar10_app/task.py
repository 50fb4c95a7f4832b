"""The model, and training and evaluation on tensors: no DataLoader, no per-sample transforms.

A client's images arrive as one uint8 NCHW array; they are normalised once into
a float tensor and minibatches are index slices of it. Augmentation works on
whole batches. Every random draw of a client's training comes from a generator
seeded by (seed, round, partition), so an update depends on nothing else.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    """The CNN of Flower's CIFAR-10 examples (conv6-conv16-fc120-fc84-fc10, 62,006 parameters)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of normalised 3x32x32 images."""
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def initial_model(seed: int) -> Net:
    """A freshly initialised Net; the same seed gives the same weights (torch's global generator is left as it was)."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return Net()
    finally:
        torch.random.set_rng_state(state)


@functools.lru_cache(maxsize=1)
def pick_device() -> torch.device:
    """The first GPU this process may use, else the CPU (Ray shows a worker only the GPUs it reserved).

    Where GPUs are in play (CUDA usable, or GPUs given to the process), says once
    per process which device it is and which GPUs the process was given: a run on
    a GPU cluster shows where its clients train, and a worker given a GPU that its
    torch cannot use says it falls back to the CPU. Silent on CPU-only runs.
    """
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if device.type == "cuda" or visible:
        where = f"{torch.cuda.get_device_name(device)}, " if device.type == "cuda" else ""
        print(
            f"cifar10_app: process {os.getpid()} computes on {device} ({where}CUDA_VISIBLE_DEVICES="
            f"{'unset' if visible is None else repr(visible)})",
            flush=True,
        )
    return device


@functools.lru_cache(maxsize=2)
def working_model(device: str) -> Net:
    """One model per process and device, reused: every call loads the weights it was sent into it."""
    return place_model(Net(), device)


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Seed of a client's shuffling and augmentation: a function of (seed, round, partition) only."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1, dtype=np.uint64)[0] >> 1)


def memory_format(device: torch.device | str) -> torch.memory_format:
    """Layout of images and conv weights on `device`.

    channels_last on CPU, where oneDNN runs this net's small convolutions faster
    (bench/bench_kernels.py: central evaluation 18% and local training 6% faster
    on 2 Xeon cores); the default layout elsewhere, which is not measured on GPU.
    """
    return torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format


def place_model(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Move the model to `device`, its conv weights in that device's memory_format."""
    return model.to(device, memory_format=memory_format(device))


def to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 NCHW images -> float32 tensor in [-1, 1] (Flower's Normalize(0.5, 0.5)), in the device's memory_format."""
    if not images.flags.writeable:  # object-store arrays are read-only; torch warns on those
        images = images.copy()
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return x.float().div_(127.5).sub_(1.0).contiguous(memory_format=memory_format(device))


def crop_flip(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Reflect-pad 4, take a random 32x32 crop and flip half the images, per sample."""
    b, _, h, w = batch.shape
    padded = F.pad(batch, (4, 4, 4, 4), mode="reflect")
    offsets = torch.randint(0, 9, (2, b), generator=generator).to(batch.device)
    rows = (offsets[0][:, None] + torch.arange(h, device=batch.device))[:, :, None]
    cols = (offsets[1][:, None] + torch.arange(w, device=batch.device))[:, None, :]
    batch_index = torch.arange(b, device=batch.device)[:, None, None]
    # Advanced indexing puts the indexed dims first: (B, H, W, C) -> (B, C, H, W).
    cropped = padded[batch_index, :, rows, cols].permute(0, 3, 1, 2)
    flip = (torch.rand(b, generator=generator) < 0.5).to(batch.device)
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped).contiguous(
        memory_format=memory_format(batch.device)
    )


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    augment: str,
    generator: torch.Generator,
    proximal_mu: float = 0.0,
    correction: dict[str, torch.Tensor] | None = None,
) -> float:
    """SGD on (x, y) for `epochs`; returns the mean cross-entropy over all batches.

    Shuffling and augmentation draw only from `generator`, so a client's update
    depends on nothing but its data, the incoming weights and the generator's seed.
    With `proximal_mu` > 0 the FedProx term mu/2 * ||w - w_global||^2 is added to
    the loss that is minimised, not to the one reported. With `correction`
    (SCAFFOLD's c - c_i by parameter name), every step also moves each parameter
    by -lr * correction, after the optimiser's own step (as Flower's niid_bench
    baseline does, so momentum and weight decay act on the gradient alone).
    """
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    global_weights = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    corrected = [(p, correction[name]) for name, p in model.named_parameters()] if correction is not None else []
    n = x.shape[0]
    total, batches = torch.zeros((), device=x.device), 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            xb = x[idx]
            if augment == "crop-flip":
                xb = crop_flip(xb, generator)
            loss = F.cross_entropy(model(xb), y[idx])
            objective = loss
            if global_weights is not None:
                prox = sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_weights))
                objective = loss + 0.5 * proximal_mu * prox
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            if corrected:
                with torch.no_grad():
                    for p, c in corrected:
                        p.add_(c, alpha=-lr)
            total += loss.detach()  # no .item() per batch: it would sync a GPU every step
            batches += 1
    return total.item() / max(batches, 1)


def local_steps(num_examples: int, epochs: int, batch_size: int) -> int:
    """Optimiser steps `train` takes: `epochs` passes over `num_examples` in batches of `batch_size`."""
    return epochs * math.ceil(num_examples / batch_size)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of the model on (x, y)."""
    n = x.shape[0]
    if n == 0:
        return 0.0, 0.0
    loss_sum, correct = evaluation_sums(model, x, y, batch_size)
    return loss_sum / n, correct / n


@torch.inference_mode()
def evaluation_sums(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, int]:
    """Summed cross-entropy (in float64, batch after batch) and number of correct predictions of the model on (x, y)."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for start in range(0, x.shape[0], batch_size):  # sums stay on the device: one sync at the end, not per batch
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += F.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(1) == target).sum()
    return loss_sum.item(), int(correct.item())
