"""SCAFFOLD's server side: Flower's FedAvg plus the server control variate c.

The global model is aggregated exactly as FedAvg does (weighted by
num-examples, i.e. SCAFFOLD with global step size 1 and weighted averaging);
the control variate follows the paper: c <- c + |S|/N * mean_i(delta c_i)
over the |S| nodes that trained, out of N.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from scaffoldexample.task import CONTROL_KEY, DELTA_KEY, from_record, to_record


class Scaffold(FedAvg):
    """FedAvg that also sends c with the model and updates it from the nodes' control-variate deltas.

    `control` (c, a dict of float32 arrays; empty means zeros) and `num_nodes`
    are plain data attributes, so fedsweep's checkpoint holds them and a
    resumed run restores them (fl_core.strategies.strategy_state).
    """

    def __init__(self, *, num_nodes: int, **fedavg_kwargs) -> None:
        """`num_nodes`: N, every node of the run; the other arguments are FedAvg's."""
        super().__init__(**fedavg_kwargs)
        self.num_nodes = num_nodes
        self.control: dict[str, np.ndarray] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """FedAvg's train messages, each also carrying c as a second ArrayRecord."""
        messages = list(super().configure_train(server_round, arrays, config, grid))
        control = to_record(self.control)
        for message in messages:  # FedAvg gives them one shared RecordDict: c goes in once per object, harmlessly
            message.content[CONTROL_KEY] = control
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
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
