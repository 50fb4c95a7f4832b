"""SCAFFOLD's ClientApp: corrected local SGD, the node's control variate c_i kept in Context.state."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from cifar10_app.task import client_seed, evaluate, pick_device, working_model
from scaffoldexample.task import (
    CONTROL_KEY, DELTA_KEY, EVAL_BATCH_SIZE, STATE_KEY, from_record, parameter_arrays, partition, scaffold_train,
    to_record, updated_control, zeros_like,
)

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """K corrected SGD steps from the global model; stores c_i+ and replies with y_i, delta c_i and metrics."""
    run_config, config = context.run_config, msg.content["config"]
    partition_id = int(context.node_config["partition-id"])
    device = pick_device()
    model = working_model(str(device))  # one model per process, reused: the received weights overwrite it
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x_global = parameter_arrays(model)
    zeros = zeros_like(x_global)
    c = {**zeros, **from_record(msg.content.get(CONTROL_KEY))}  # absent entries are zeros
    c_i = {**zeros, **from_record(context.state.get(STATE_KEY))}  # zeros until this node first trained
    correction = {k: torch.from_numpy(c[k] - c_i[k]).to(device) for k in x_global}

    x, y = partition(run_config, partition_id, int(context.node_config["num-partitions"]), "train", device)
    lr = float(config["lr"])
    seed = client_seed(run_config["seed"], config["server-round"], partition_id)  # seed, round and node only
    loss, steps = scaffold_train(model, x, y, correction, epochs=int(config["local-epochs"]),
                                 batch_size=run_config["batch-size"], lr=lr,
                                 generator=torch.Generator().manual_seed(seed))

    c_i_new = updated_control(c_i, c, x_global, parameter_arrays(model), steps, lr)
    context.state[STATE_KEY] = to_record(c_i_new)  # fedsweep keeps it with the node, checkpoints and restores it
    delta = {k: c_i_new[k] - c_i[k] for k in c_i_new}
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(y)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), DELTA_KEY: to_record(delta), "metrics": metrics})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    """Loss and accuracy of the received model on the node's validation split."""
    device = pick_device()
    model = working_model(str(device))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = partition(context.run_config, int(context.node_config["partition-id"]),
                     int(context.node_config["num-partitions"]), "val", device)
    loss, accuracy = evaluate(model, x, y, EVAL_BATCH_SIZE)
    return Message(RecordDict({"metrics": MetricRecord({"loss": loss, "accuracy": accuracy, "num-examples": len(y)})}),
                   reply_to=msg)
