"""The ClientApp: local training and validation on the node's partition of the shared data set."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod

from cifar10_app.data import load_data
from cifar10_app.scaffold import DELTA_KEY, client_controls, correction, parameter_arrays, store_control
from cifar10_app.task import client_seed, evaluate, local_steps, pick_device, to_tensor, train, working_model


def client_dp_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's client-side clipping mod when the run config asks for client-side DP, else nothing."""
    mods = {"client-fixed": fixedclipping_mod, "client-adaptive": adaptiveclipping_mod}
    mod = mods.get(context.run_config["dp"])
    return call_next(msg, context) if mod is None else mod(msg, context, call_next)


app = ClientApp()


def _partition(context: Context, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """This node's `train` or `val` split as tensors on `device`, normalised once."""
    data = load_data(context.run_config, int(context.node_config["num-partitions"]))
    images, labels = data.client_arrays(int(context.node_config["partition-id"]), split)
    return to_tensor(images, device), torch.from_numpy(labels).to(device)


def _received_model(msg: Message, device: torch.device):
    """This process's model, holding the weights the server sent."""
    model = working_model(str(device))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


@app.train(mods=[client_dp_mod])
def train_fn(msg: Message, context: Context) -> Message:
    """Local training from the received weights; replies with the new weights and the mean training loss.

    Under SCAFFOLD the steps are corrected by the control variates, the node's
    own kept in its Context.state, and the reply also carries delta c_i.
    """
    run_config, config = context.run_config, msg.content["config"]
    device = pick_device()
    model = _received_model(msg, device)
    x, y = _partition(context, "train", device)
    seed = client_seed(run_config["seed"], config["server-round"], context.node_config["partition-id"])
    lr, epochs = float(config["lr"]), int(config["local-epochs"])
    scaffold = run_config["strategy"] == "scaffold"
    if scaffold:
        x_global = parameter_arrays(model)
        c, c_i = client_controls(msg, context, x_global)
    loss = train(
        model,
        x,
        y,
        epochs=epochs,
        batch_size=run_config["batch-size"],
        lr=lr,
        momentum=run_config["momentum"],
        weight_decay=run_config["weight-decay"],
        augment=run_config["augment"],
        generator=torch.Generator().manual_seed(seed),
        proximal_mu=float(config.get("proximal-mu", 0.0)),  # FedProx's configure_train sends it
        correction=correction(c, c_i, device) if scaffold else None,
    )
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(y)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    if scaffold:
        steps = local_steps(len(y), epochs, run_config["batch-size"])
        content[DELTA_KEY] = store_control(context, c, c_i, x_global, parameter_arrays(model), steps, lr)
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    """Loss and accuracy of the received weights on the node's validation split."""
    device = pick_device()
    model = _received_model(msg, device)
    x, y = _partition(context, "val", device)
    loss, accuracy = evaluate(model, x, y, context.run_config["eval-batch-size"])
    metrics = MetricRecord({"loss": loss, "accuracy": accuracy, "num-examples": len(y)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
