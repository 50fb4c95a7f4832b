"""The ClientApp: local training and validation on the node's partition of the shared data set."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

import fl_core
from cifar10_app.cohort import train_cohort, weighted_mean
from cifar10_app.data import load_data
from cifar10_app.scaffold import DELTA_KEY, client_controls, correction, parameter_arrays, store_control
from cifar10_app.task import client_seed, evaluate, local_steps, pick_device, to_tensor, train, working_model

CLIENT_DP_MODS = {"client-fixed": fixedclipping_mod, "client-adaptive": adaptiveclipping_mod}


def client_dp_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's client-side clipping mod when the run config asks for client-side DP, else nothing."""
    mod = CLIENT_DP_MODS.get(context.run_config["dp"])
    return call_next(msg, context) if mod is None else mod(msg, context, call_next)


app = ClientApp()


def _partition(context: Context, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """This node's `train` or `val` split as tensors on `device`, normalised once."""
    data = load_data(context.run_config, int(context.node_config["num-partitions"]))
    images, labels = data.client_arrays(int(context.node_config["partition-id"]), split)
    return to_tensor(images, device), torch.from_numpy(labels).to(device)


def _sgd_options(run_config, config) -> dict:
    """The settings of local SGD that `task.train` and `cohort.train_cohort` take, from the run config and the
    message's config (which carries lr and epochs, and FedProx's configure_train the proximal mu)."""
    return {
        "epochs": int(config["local-epochs"]),
        "batch_size": run_config["batch-size"],
        "lr": float(config["lr"]),
        "momentum": run_config["momentum"],
        "weight_decay": run_config["weight-decay"],
        "augment": run_config["augment"],
        "proximal_mu": float(config.get("proximal-mu", 0.0)),
    }


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
    options = _sgd_options(run_config, config)
    scaffold = run_config["strategy"] == "scaffold"
    if scaffold:
        x_global = parameter_arrays(model)
        c, c_i = client_controls(msg, context, x_global)
    loss = train(
        model,
        x,
        y,
        generator=torch.Generator().manual_seed(seed),
        correction=correction(c, c_i, device) if scaffold else None,
        **options,
    )
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(y)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    if scaffold:
        steps = local_steps(len(y), options["epochs"], options["batch_size"])
        content[DELTA_KEY] = store_control(context, c, c_i, x_global, parameter_arrays(model), steps, options["lr"])
    return Message(content, reply_to=msg)


@fl_core.cohort(app, "train")
def train_cohort_fn(msgs: list[Message], contexts: list[Context]) -> list[Message] | None:
    """`train_fn` for several nodes at once (fedsweep's cohorts): one grouped network trains them all.

    None (each node through `train_fn`) under client-side DP, whose clipping
    mod wraps one message at a time, and when the nodes were sent different
    training settings. When fedsweep folds the replies by num-examples, their
    mean alone (fl_core.cohorts.folding), without building each reply.
    """
    run_config = contexts[0].run_config
    configs = [msg.content["config"] for msg in msgs]
    options = _sgd_options(run_config, configs[0])
    if run_config["dp"] in CLIENT_DP_MODS or any(_sgd_options(run_config, c) != options for c in configs):
        return None
    device = pick_device()
    # In the model's dtypes, as load_state_dict casts them (a strategy such as FedAdam sends float64 arrays).
    dtypes = {k: v.dtype for k, v in working_model(str(device)).state_dict().items()}
    received: dict[int, dict] = {}  # the nodes were sent one ArrayRecord (fl_core.cohorts): converted once, read only
    for msg in msgs:
        arrays = msg.content["arrays"]
        if id(arrays) not in received:
            received[id(arrays)] = {k: v.to(device, dtypes[k]) for k, v in arrays.to_torch_state_dict().items()}
    states = [received[id(msg.content["arrays"])] for msg in msgs]
    data = [_partition(context, "train", device) for context in contexts]
    seeds = [
        client_seed(run_config["seed"], c["server-round"], x.node_config["partition-id"])
        for c, x in zip(configs, contexts)
    ]
    scaffold = run_config["strategy"] == "scaffold"
    if scaffold:
        as_numpy = {key: {k: v.cpu().numpy() for k, v in state.items()} for key, state in received.items()}
        x_globals = [as_numpy[id(msg.content["arrays"])] for msg in msgs]
        controls = [client_controls(msg, context, x) for msg, context, x in zip(msgs, contexts, x_globals)]
    finals, losses = train_cohort(
        states,
        data,
        [torch.Generator().manual_seed(seed) for seed in seeds],
        corrections=[correction(c, c_i, device) for c, c_i in controls] if scaffold else None,
        **options,
    )
    sizes = [len(y) for _, y in data]
    if fl_core.cohorts.folding() == "num-examples" and not scaffold and sum(sizes) > 0:
        return _mean_reply(msgs[0], finals, losses, sizes)
    replies = []
    for k, (msg, context) in enumerate(zip(msgs, contexts)):
        num_examples = sizes[k]
        metrics = MetricRecord({"train_loss": losses[k], "num-examples": num_examples})
        content = RecordDict({"arrays": ArrayRecord(finals[k]), "metrics": metrics})
        if scaffold:
            steps = local_steps(num_examples, options["epochs"], options["batch_size"])
            y = {name: t.detach().cpu().numpy() for name, t in finals[k].items()}
            content[DELTA_KEY] = store_control(context, *controls[k], x_globals[k], y, steps, options["lr"])
        replies.append(Message(content, reply_to=msg))
    return replies


def _mean_reply(msg: Message, states: list[dict], losses: list[float], sizes: list[int]) -> Message:
    """The cohort's replies folded as fedsweep folds them (fl_core.cohorts.combine): the weighted mean of the new
    weights and of train_loss by num-examples, which holds their sum. One ArrayRecord instead of one per node."""
    each = [RecordDict({"metrics": MetricRecord({"train_loss": x, "num-examples": n})}) for x, n in zip(losses, sizes)]
    mean_metrics = aggregate_metricrecords(each, "num-examples")
    mean_metrics["num-examples"] = sum(sizes)
    content = RecordDict({"arrays": ArrayRecord(weighted_mean(states, sizes)), "metrics": mean_metrics})
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
