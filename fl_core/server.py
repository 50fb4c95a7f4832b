"""The resumable round loop around Flower's `Server`.

Flower's `Server.fit` always starts at round 1, so the loop here drives the
public `fit_round`/`evaluate_round` itself, from round 1 or from the round after
a checkpoint. Everything else (printing, checkpoints, Tune) is a callback.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import ray
import torch
from flwr.common import EvaluateIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Server

from fl_core.callbacks import Callback, RoundEnd, RunEnd
from fl_core.checkpoint import ServerState, check_compatible
from fl_core.client_manager import SeededClientManager
from fl_core.config import SimConfig
from fl_core.data import FederatedData, load_federated_data
from fl_core.models import build_model
from fl_core.pool import ClientPool, RayClientProxy
from fl_core.strategy import build_strategy
from fl_core.task import evaluate, get_parameters, place_model, set_parameters, to_tensor


def _central_evaluator(config: SimConfig, data: FederatedData):
    """Flower `evaluate_fn` scoring the global model on the whole test set, in the server process."""
    # A GPU when the server process sees one (Ray hides GPUs a trial's bundle 0 does not hold).
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = place_model(build_model(config.model, config.seed), device)
    x, y = to_tensor(data.test_images, device), torch.from_numpy(data.test_labels).to(device)

    def evaluate_fn(server_round, parameters, fn_config):
        set_parameters(model, parameters)
        loss, accuracy = evaluate(model, x, y, config.eval_batch_size)
        return loss, {"accuracy": accuracy}

    return evaluate_fn


def server_threads(config: SimConfig) -> int:
    """Torch threads for the server's own work (central evaluation): the CPUs it owns.

    In a Tune trial that is bundle 0 of the trial's placement group. Alone it is
    every local core: client workers are idle while the server evaluates.
    """
    if config.server_cpus is not None:
        return config.server_cpus
    pg = ray.util.get_current_placement_group()
    if pg is not None:
        return max(1, int(pg.bundle_specs[0].get("CPU", 1)))
    return os.cpu_count() or 1


def _evaluate_all_clients(proxies, data: FederatedData, parameters, config: SimConfig, workers: int) -> dict:
    """Every client's validation accuracy under the final model: mean, min, max, 10th percentile."""
    clients = [p for p in proxies if len(data.client_val[int(p.cid)]) > 0]
    if not clients:
        return {}
    ins = EvaluateIns(ndarrays_to_parameters(parameters), {"batch_size": config.eval_batch_size, "server_round": 0})
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda p: p.evaluate(ins, None, None), clients))
    acc = np.array([r.metrics["accuracy"] for r in results])
    return {
        "num_clients": len(acc),
        "mean": float(acc.mean()),
        "min": float(acc.min()),
        "max": float(acc.max()),
        "p10": float(np.percentile(acc, 10)),
        "per_client": {p.cid: float(a) for p, a in zip(clients, acc)},
    }


def run_simulation(
    config: SimConfig,
    *,
    data: FederatedData | None = None,
    data_ref: ray.ObjectRef | None = None,
    resume: ServerState | None = None,
    callbacks: tuple[Callback, ...] | list[Callback] = (),
) -> RunEnd:
    """Run (or continue) one federated simulation on the connected Ray cluster.

    `data_ref` is the object-store copy of the data when the caller already made
    one (Tune shares one across trials); otherwise the data is loaded (unless
    given) and put in the object store here, once. `resume` continues after the
    checkpoint's round. Returns the run's history and final client evaluation.
    """
    config.validate()
    if resume is not None:
        check_compatible(resume, config)
    if not ray.is_initialized():
        ray.init()
    if data_ref is None:
        data = data if data is not None else load_federated_data(config)
        data_ref = ray.put(data)
    elif data is None:
        data = ray.get(data_ref)  # zero-copy view of the shared arrays
    torch.set_num_threads(server_threads(config))
    t_start = time.perf_counter()

    start_round = 1 if resume is None else resume.round + 1
    history = [] if resume is None else list(resume.history)
    initial = get_parameters(build_model(config.model, config.seed))

    def fit_config(server_round: int) -> dict:
        # The absolute round and where a resumed run picked up, as the seed's strategy sent them.
        return {
            "server_round": server_round,
            "resumed_from": start_round - 1,
            "seed": config.seed,
            "local_epochs": config.local_epochs,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "momentum": config.momentum,
            "weight_decay": config.weight_decay,
            "augment": config.augment,
        }

    def evaluate_config(server_round: int) -> dict:
        return {"server_round": server_round, "batch_size": config.eval_batch_size}

    strategy = build_strategy(config, initial, _central_evaluator(config, data), fit_config, evaluate_config)
    client_manager = SeededClientManager(config.seed)
    pool = ClientPool(data_ref, config)
    try:
        proxies = [RayClientProxy(str(cid), pool) for cid in range(data.num_clients)]
        for proxy in proxies:
            client_manager.register(proxy)
        server = Server(client_manager=client_manager, strategy=strategy)
        server.set_max_workers(pool.size)
        if resume is None:
            server.parameters = strategy.initialize_parameters(client_manager)
        else:
            server.parameters = ndarrays_to_parameters(resume.parameters)
            strategy.set_state(resume.strategy_state)

        def snapshot(round_: int, extra: dict | None = None) -> ServerState:
            return ServerState(
                round=round_,
                parameters=parameters_to_ndarrays(server.parameters),
                strategy_state=strategy.get_state(),
                history=list(history),
                config=config.to_dict(),
                extra=extra or {},
            )

        for server_round in range(start_round, config.num_rounds + 1):
            metrics = _run_round(server, client_manager, strategy, server_round)
            history.append(metrics)
            event = RoundEnd(server_round, config.num_rounds, start_round, metrics, snapshot(server_round))
            for callback in callbacks:
                callback.on_round_end(event)

        final = parameters_to_ndarrays(server.parameters)
        client_evaluation = _evaluate_all_clients(proxies, data, final, config, pool.size)
        state = snapshot(config.num_rounds, {"client_evaluation": client_evaluation})
        end = RunEnd(history, client_evaluation, time.perf_counter() - t_start, state)
        for callback in callbacks:
            callback.on_run_end(end)
        return end
    finally:
        pool.shutdown()


def _run_round(server: Server, client_manager: SeededClientManager, strategy, server_round: int) -> dict:
    """Fit the sampled clients, aggregate, evaluate centrally and federatedly; return the round's metrics."""
    t0 = time.perf_counter()
    client_manager.start_round(server_round)
    fit = server.fit_round(server_round=server_round, timeout=None)
    parameters, fit_metrics, (results, failures) = fit
    if failures or parameters is None:
        first = failures[0] if failures else "no result"
        raise RuntimeError(f"round {server_round}: {len(failures)} client fit(s) failed: {first!r}")
    server.parameters = parameters
    central_loss, central_metrics = strategy.evaluate(server_round, parameters)
    fed_loss, fed_accuracy = None, None  # None: no federated evaluation this round
    evaluated = server.evaluate_round(server_round=server_round, timeout=None)
    if evaluated is not None:
        loss, eval_metrics, (_, eval_failures) = evaluated
        if eval_failures:
            raise RuntimeError(f"round {server_round}: {len(eval_failures)} client evaluation(s) failed: {eval_failures[0]!r}")
        if loss is not None:
            fed_loss, fed_accuracy = float(loss), float(eval_metrics["accuracy"])
    seconds = time.perf_counter() - t0
    samples = sum(res.num_examples for _, res in results)
    return {
        "round": server_round,
        "central_loss": float(central_loss),
        "central_accuracy": float(central_metrics["accuracy"]),
        "fed_val_loss": fed_loss,
        "fed_val_accuracy": fed_accuracy,
        "train_loss": float(fit_metrics["train_loss"]),
        "fit_clients": len(results),
        "train_samples": int(samples),
        "seconds": seconds,
        "samples_per_s": samples / seconds,
    }
