"""Flower strategies, made deterministic and checkpointable.

Every strategy is Flower's own; a small mixin (1) aggregates results in
client-id order, so floating-point sums do not depend on which client finished
first, and (2) reads and writes the strategy's between-round state (FedAvgM's
momentum, FedAdam/FedYogi's moments and current weights) for checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAdam, FedAvg, FedAvgM, FedProx, FedYogi, Strategy

from fl_core.config import SimConfig

BASES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
}

NDArrays = list[np.ndarray]


def _by_cid(results: list) -> list:
    return sorted(results, key=lambda pair: int(pair[0].cid))


class OrderedCheckpointable:
    """Mixin for a Flower strategy: ordered aggregation and state export/import."""

    def aggregate_fit(self, server_round, results, failures):
        """Flower's aggregation over results sorted by client id."""
        return super().aggregate_fit(server_round, _by_cid(results), failures)

    def aggregate_evaluate(self, server_round, results, failures):
        """Flower's aggregation over results sorted by client id."""
        return super().aggregate_evaluate(server_round, _by_cid(results), failures)

    def get_state(self) -> dict[str, NDArrays]:
        """Every array-valued attribute: what the strategy carries from one round to the next."""
        state = {}
        for name, value in vars(self).items():
            if isinstance(value, Parameters):
                state[name] = parameters_to_ndarrays(value)
            elif isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
                state[name] = [np.array(v, copy=True) for v in value]
        return state

    def set_state(self, state: dict[str, NDArrays]) -> None:
        """Restore what `get_state` returned."""
        for name, arrays in state.items():
            current = getattr(self, name, None)
            setattr(self, name, ndarrays_to_parameters(arrays) if isinstance(current, Parameters) else list(arrays))


def weighted_mean(metrics: list[tuple[int, dict]]) -> dict:
    """Example-weighted mean of every numeric metric the clients returned."""
    total = sum(n for n, _ in metrics)
    if total == 0:
        return {}
    keys = [k for k in metrics[0][1] if k != "cid"]
    return {k: sum(n * float(m[k]) for n, m in metrics) / total for k in keys}


def build_strategy(
    config: SimConfig,
    initial_parameters: NDArrays,
    evaluate_fn: Callable,
    fit_config_fn: Callable[[int], dict],
    evaluate_config_fn: Callable[[int], dict],
) -> Strategy:
    """The configured Flower strategy with central evaluation and per-round client config."""
    base = BASES[config.strategy]
    cls = type(base.__name__, (OrderedCheckpointable, base), {"__doc__": base.__doc__})
    kwargs = dict(
        fraction_fit=config.fraction_fit,
        fraction_evaluate=config.fraction_evaluate if config.val_ratio > 0 else 0.0,
        min_fit_clients=config.min_fit_clients,
        min_evaluate_clients=config.min_evaluate_clients,
        # Every client is registered before round 1; validate() checked pool_size >= both minimums.
        min_available_clients=max(config.min_fit_clients, config.min_evaluate_clients),
        evaluate_fn=evaluate_fn,
        on_fit_config_fn=fit_config_fn,
        on_evaluate_config_fn=evaluate_config_fn,
        accept_failures=False,
        initial_parameters=ndarrays_to_parameters(initial_parameters),
        fit_metrics_aggregation_fn=weighted_mean,
        evaluate_metrics_aggregation_fn=weighted_mean,
    )
    if config.strategy == "fedprox":
        kwargs["proximal_mu"] = config.proximal_mu
    elif config.strategy == "fedavgm":
        kwargs["server_momentum"] = config.server_momentum
        if config.server_lr is not None:
            kwargs["server_learning_rate"] = config.server_lr
    elif config.strategy in ("fedadam", "fedyogi") and config.server_lr is not None:
        kwargs["eta"] = config.server_lr
    return cls(**kwargs)
