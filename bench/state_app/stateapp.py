"""A ClientApp that only keeps `state-size` float32 numbers in Context.state, and a ServerApp that runs it.

Each train call reads the node's state (zeros the first time), changes it and stores it back, as a stateful client
(SCAFFOLD's control variate, a personal head) would; it trains nothing and echoes the 10-number model, so the
call's time is the engine's cost of carrying the state plus this read-modify-write (the reply's `app_seconds`).
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

import fl_core

STATE_KEY = "bench-state"
client_app = ClientApp()
server_app = ServerApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Read, change and store the node's state; reply with the received model and the time that took."""
    t0 = time.perf_counter()
    size = int(context.run_config["state-size"])
    if size > 0:
        held = context.state.get(STATE_KEY)
        values = held["numbers"].numpy() if held is not None else np.zeros(size, np.float32)
        context.state[STATE_KEY] = ArrayRecord({"numbers": Array(values + np.float32(1))})
    seconds = time.perf_counter() - t0
    metrics = MetricRecord({"num-examples": 1, "app_seconds": seconds})
    return Message(RecordDict({"arrays": msg.content["arrays"], "metrics": metrics}), reply_to=msg)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Every node trains every round, no evaluation; fedsweep runs the rounds (fl_core.start)."""
    fl_core.wait_for_nodes(grid)
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
    fl_core.start(
        strategy,
        grid,
        initial_arrays=ArrayRecord([np.zeros(10, np.float32)]),
        num_rounds=context.run_config["num-server-rounds"],
        train_config=ConfigRecord(),
    )
