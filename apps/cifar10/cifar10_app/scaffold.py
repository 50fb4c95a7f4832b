"""SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning"), option II:
the run config's `strategy = "scaffold"`. Flower does not ship it.

A client starts from the global model x, takes K local steps, each followed by
y <- y - lr * (c - c_i) with its own control variate c_i and the server's c,
then sets

    c_i+ = c_i - c + (x - y) / (K * lr)

keeps c_i+ in its `Context.state` (fedsweep keeps it with the node, in every
checkpoint, whichever worker runs the node next) and sends back y and
delta c_i = c_i+ - c_i. The server aggregates the models as FedAvg does and
sets c <- c + |S|/N * mean_i(delta c_i) over the |S| nodes that trained, out of
N. Control variates are dicts of float32 numpy arrays keyed like the model's
parameters; an absent key (c before the first aggregation, c_i before a node
first trains) means zeros.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import nn

CONTROL_KEY = "scaffold-control"  # the server's c, beside "arrays" in train messages
DELTA_KEY = "scaffold-control-delta"  # a client's delta c_i, beside "arrays" in train replies
STATE_KEY = "scaffold-c"  # the node's own c_i, in Context.state

Controls = dict[str, np.ndarray]


def to_record(controls: Controls) -> ArrayRecord:
    """A control variate as an ArrayRecord (C-contiguous float32 copies)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in controls.items()})


def from_record(record: ArrayRecord | None) -> Controls:
    """A control variate from an ArrayRecord (None or empty: no entries, i.e. zeros)."""
    return {} if record is None else {k: a.numpy() for k, a in record.items()}


def parameter_arrays(model: nn.Module) -> Controls:
    """Copies of the model's trainable parameters as float32 numpy arrays (C order, whatever the memory format).

    Copies: on the CPU `.numpy()` shares the parameter's memory, and the
    global model x must not follow the local steps taken after it is read.
    """
    return {n: np.array(p.detach().cpu().numpy(), dtype=np.float32, order="C") for n, p in model.named_parameters()}


# ---------------------------------------------------------------------------
# Client side


def client_controls(msg: Message, context: Context, x: Controls) -> tuple[Controls, Controls]:
    """(c, c_i): the server's control variate from the message and the node's from its state, zeros where absent."""
    zeros = {k: np.zeros_like(v) for k, v in x.items()}
    c = {**zeros, **from_record(msg.content.get(CONTROL_KEY))}
    c_i = {**zeros, **from_record(context.state.get(STATE_KEY))}
    return c, c_i


def correction(c: Controls, c_i: Controls, device: torch.device) -> dict[str, torch.Tensor]:
    """c - c_i by parameter name, as tensors on `device` (task.train's `correction`)."""
    return {k: torch.from_numpy(c[k] - c_i[k]).to(device) for k in c}


def updated_control(c_i: Controls, c: Controls, x: Controls, y: Controls, steps: int, lr: float) -> Controls:
    """c_i+ = c_i - c + (x - y) / (K * lr); c_i unchanged when no step was taken (an empty partition)."""
    if steps == 0:
        return dict(c_i)
    return {k: c_i[k] - c[k] + (x[k] - y[k]) / np.float32(steps * lr) for k in x}


def store_control(
    context: Context, c: Controls, c_i: Controls, x: Controls, y: Controls, steps: int, lr: float
) -> ArrayRecord:
    """Keep c_i+ in the node's Context.state; returns delta c_i for the reply."""
    c_i_new = updated_control(c_i, c, x, y, steps, lr)
    context.state[STATE_KEY] = to_record(c_i_new)
    return to_record({k: c_i_new[k] - c_i[k] for k in c_i_new})


# ---------------------------------------------------------------------------
# Server side


class Scaffold(FedAvg):
    """Flower's FedAvg that also sends c with the model and updates it from the nodes' control-variate deltas.

    The global model is aggregated exactly as FedAvg does (weighted by
    num-examples: SCAFFOLD with global step size 1). `control` (c) and
    `num_nodes` (N, read from the grid every round) are plain data attributes,
    so fedsweep's checkpoint holds them (fl_core.strategies.strategy_state).
    """

    def __init__(self, **fedavg_kwargs) -> None:
        """FedAvg's arguments."""
        super().__init__(**fedavg_kwargs)
        self.control: Controls = {}
        self.num_nodes = 0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's train messages, each also carrying c as a second ArrayRecord."""
        self.num_nodes = len(list(grid.get_node_ids()))
        messages = list(super().configure_train(server_round, arrays, config, grid))
        control = to_record(self.control)
        for message in messages:  # FedAvg gives them one shared RecordDict: c goes in once per object, harmlessly
            message.content[CONTROL_KEY] = control
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Take each reply's delta c_i out (FedAvg accepts one ArrayRecord a reply), aggregate, then update c."""
        replies = list(replies)
        deltas = []
        for reply in replies:
            if reply.has_error() or DELTA_KEY not in reply.content:
                continue
            deltas.append(from_record(reply.content[DELTA_KEY]))
            reply.content = RecordDict({k: v for k, v in reply.content.items() if k != DELTA_KEY})
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None and deltas:
            scale = np.float32(len(deltas) / self.num_nodes)
            # A new dict, not an in-place update: earlier rounds' checkpointed states keep their c.
            self.control = {
                key: self.control.get(key, np.zeros_like(deltas[0][key]))
                + scale * np.mean(np.stack([d[key] for d in deltas]), axis=0)
                for key in deltas[0]
            }
        return arrays, metrics
