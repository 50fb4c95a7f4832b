"""Local training of K clients at once: K copies of the Net as one network with grouped convolutions.

Client k's images are channels 3k..3k+2 of one input, its convolutions group k
of a grouped convolution, its linear layers slice k of a batched matrix
product: one step trains every client of the cohort, at the cost of one larger
kernel instead of K small ones (bench/README.md, "Cohorts"). Each client keeps
everything `task.train` gives it: its own data, generator (the same draws in
the same order), momentum buffer, FedProx anchor and SCAFFOLD correction. A
client whose data is spent leaves the cohort; batches of unequal size are
padded with zeros that count in no loss. The updates equal `task.train`'s up to
floating-point rounding (other kernels sum in another order).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from cifar10_app.task import crop_flip, local_steps, memory_format

State = dict[str, torch.Tensor]


def cohort_logits(params: State, x: torch.Tensor) -> torch.Tensor:
    """Logits (K, B, classes) of the K Nets whose parameters are stacked in `params` (each (K, *shape)).

    `x` is (B, 3K, 32, 32): client k's batch in channels 3k..3k+2. The layers
    are `task.Net.forward`'s, in the same order (tests/test_cohorts.py holds the two together).
    """
    k = params["conv1.weight"].shape[0]
    h = F.conv2d(x, params["conv1.weight"].flatten(0, 1), params["conv1.bias"].flatten(), groups=k)
    h = F.max_pool2d(F.relu(h), 2, 2)
    h = F.conv2d(h, params["conv2.weight"].flatten(0, 1), params["conv2.bias"].flatten(), groups=k)
    h = F.max_pool2d(F.relu(h), 2, 2)
    h = h.reshape(h.shape[0], k, -1).transpose(0, 1)  # (K, B, 400), each client's features in Net's flatten order
    for layer in ("fc1", "fc2"):
        h = F.relu(torch.baddbmm(params[f"{layer}.bias"].unsqueeze(1), h, params[f"{layer}.weight"].transpose(1, 2)))
    return torch.baddbmm(params["fc3.bias"].unsqueeze(1), h, params["fc3.weight"].transpose(1, 2))


def client_batches(
    x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int, augment: str, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One client's minibatches, drawn from `generator` exactly as `task.train` draws them."""
    n = x.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            xb = x[idx]
            yield (crop_flip(xb, generator) if augment == "crop-flip" else xb), y[idx]


def _stacked_input(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(x of shape (B, 3K, 32, 32), labels (K, B), each client's batch size) from K client batches, zero-padded."""
    sizes = [len(yb) for _, yb in batches]
    b = max(sizes)
    xs = [xb if len(xb) == b else F.pad(xb, (0, 0, 0, 0, 0, 0, 0, b - len(xb))) for xb, _ in batches]
    ys = [yb if len(yb) == b else F.pad(yb, (0, b - len(yb))) for _, yb in batches]
    x = torch.stack(xs, 1).flatten(1, 2).contiguous(memory_format=memory_format(xs[0].device))
    return x, torch.stack(ys), sizes


def train_cohort(
    states: list[State],
    data: list[tuple[torch.Tensor, torch.Tensor]],
    generators: list[torch.Generator],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    augment: str,
    proximal_mu: float = 0.0,
    corrections: list[State] | None = None,
) -> tuple[list[State], list[float]]:
    """`task.train` for each client k from `states[k]` on `data[k]` with `generators[k]`, all at once.

    Returns each client's parameters after training and its mean cross-entropy
    over its batches (0.0 for a client without data). `corrections` are
    SCAFFOLD's c - c_i of each client (see `task.train`).
    """
    names = list(states[0])
    steps = [local_steps(len(y), epochs, batch_size) for _, y in data]
    batches = [client_batches(x, y, epochs, batch_size, augment, g) for (x, y), g in zip(data, generators)]
    finals: list[State | None] = [None if s else dict(state) for s, state in zip(steps, states)]
    active = [k for k, s in enumerate(steps) if s > 0]
    device = data[0][0].device
    loss_sums = torch.zeros(len(states), device=device)  # summed on the device: one sync at the end, not per step

    def rows(per_client: list[State]) -> State:
        return {n: torch.stack([per_client[k][n] for k in active]) for n in names}

    params = {n: p.clone().requires_grad_() for n, p in rows(states).items()}
    anchors = rows(states) if proximal_mu > 0 else None
    corrected = rows(corrections) if corrections is not None else None
    buffers: State = {}
    step = 0
    while active:
        x, y, sizes = _stacked_input([next(batches[k]) for k in active])
        per_sample = F.cross_entropy(cohort_logits(params, x).flatten(0, 1), y.flatten(), reduction="none")
        per_sample = per_sample.view(len(active), -1)
        if min(sizes) == max(sizes):
            loss = per_sample.mean(1)
        else:
            mask = torch.arange(per_sample.shape[1], device=x.device) < torch.tensor(sizes, device=x.device)[:, None]
            loss = (per_sample * mask).sum(1) / torch.tensor(sizes, device=x.device)
        objective = loss.sum()  # client k's parameters get the gradient of its own loss alone
        if anchors is not None:
            objective = objective + 0.5 * proximal_mu * sum(((params[n] - anchors[n]) ** 2).sum() for n in names)
        grads = torch.autograd.grad(objective, [params[n] for n in names])
        with torch.no_grad():
            for n, grad in zip(names, grads):  # torch.optim.SGD's update (no dampening, no Nesterov), per element
                p = params[n]
                if weight_decay != 0:
                    grad = grad.add(p, alpha=weight_decay)
                if momentum != 0:
                    if n in buffers:
                        buffers[n].mul_(momentum).add_(grad)
                    else:
                        buffers[n] = grad.clone()
                    grad = buffers[n]
                p.add_(grad, alpha=-lr)
                if corrected is not None:
                    p.add_(corrected[n], alpha=-lr)
            loss_sums.index_add_(0, torch.tensor(active, device=device), loss.detach())
        step += 1
        done = [j for j, k in enumerate(active) if steps[k] == step]
        if done:  # those clients' data is spent: keep their parameters, go on with the others
            for j in done:
                finals[active[j]] = {n: params[n][j].detach().clone() for n in names}
            keep = [j for j in range(len(active)) if j not in done]
            index = torch.tensor(keep, dtype=torch.long, device=device)
            params = {n: p.detach()[index].requires_grad_() for n, p in params.items()}
            buffers = {n: b[index] for n, b in buffers.items()}
            anchors = {n: a[index] for n, a in anchors.items()} if anchors is not None else None
            corrected = {n: c[index] for n, c in corrected.items()} if corrected is not None else None
            active = [active[j] for j in keep]
    return finals, [total / max(s, 1) for total, s in zip(loss_sums.tolist(), steps)]


def weighted_mean(states: list[State], weights: list[float]) -> State:
    """FedAvg's weighted mean of floating-point `states`, in Flower's arithmetic (aggregate_arrayrecords: each state
    times its share of the weights, added in order), so that it is the mean of their replies bit for bit."""
    total = sum(weights)
    shares = [w / total for w in weights]
    mean = {n: t * shares[0] for n, t in states[0].items()}
    for state, share in zip(states[1:], shares[1:]):
        for n, t in state.items():
            mean[n].add_(t * share)
    return mean
