"""Flower's Message-API strategies by name, and their state between rounds.

`from_run_config` builds any `flwr.serverapp.strategy` strategy that applies to
a PyTorch model from run-config keys: `strategy` names it, its parameters come
from the table of the same name (`fedadam.eta`, `krum.num-malicious-nodes`,
Flower's parameter names with dashes), and `dp` wraps it in one of Flower's
differential-privacy wrappers with parameters from `dp-fixed.*` or
`dp-adaptive.*`. Left out: FedXgbBagging and FedXgbCyclic, which aggregate
XGBoost trees, not arrays; and the DP wrappers' privacy accountant, an object
a run config cannot hold.

`strategy_state`/`restore_strategy_state` carry what a strategy keeps from one
round to the next (FedAdam/FedYogi/FedAdagrad moments, FedAvgM momentum, DP
adaptive clipping norms, the arrays a strategy remembers, anything else held in
plain data attributes, in wrapped strategies too) into a checkpoint and back.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp import strategy as flower
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fl_core.settings import ConfigError

STRATEGIES: dict[str, type] = {
    "fedavg": flower.FedAvg,
    "fedprox": flower.FedProx,
    "fedavgm": flower.FedAvgM,
    "fedadam": flower.FedAdam,
    "fedyogi": flower.FedYogi,
    "fedadagrad": flower.FedAdagrad,
    "fedmedian": flower.FedMedian,
    "fedtrimmedavg": flower.FedTrimmedAvg,
    "krum": flower.Krum,
    "multikrum": flower.MultiKrum,
    "bulyan": flower.Bulyan,
    "qfedavg": flower.QFedAvg,
}
# dp value -> (wrapper class, run-config table of its parameters)
DP_WRAPPERS: dict[str, tuple[type, str] | None] = {
    "off": None,
    "server-fixed": (flower.DifferentialPrivacyServerSideFixedClipping, "dp-fixed"),
    "client-fixed": (flower.DifferentialPrivacyClientSideFixedClipping, "dp-fixed"),
    "server-adaptive": (flower.DifferentialPrivacyServerSideAdaptiveClipping, "dp-adaptive"),
    "client-adaptive": (flower.DifferentialPrivacyClientSideAdaptiveClipping, "dp-adaptive"),
}


def table(run_config: Mapping, name: str) -> dict:
    """The run-config table `name` as keyword arguments: `fedadam.beta-1` -> `beta_1`."""
    prefix = name + "."
    return {k[len(prefix) :].replace("-", "_"): v for k, v in run_config.items() if k.startswith(prefix)}


def accepted_parameters(cls: type) -> set[str]:
    """Keyword arguments `cls(...)` takes: its __init__'s, and its base class's where it passes **kwargs on."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]  # without self
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names


def _construct(cls: type, where: str, kwargs: dict):
    """`cls(**kwargs)`; ConfigError naming `where` for a parameter it does not take or a value it refuses."""
    accepted = accepted_parameters(cls)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"{where}: {cls.__name__} has no parameter(s) {', '.join(unknown)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {cls.__name__} refused its parameters ({exc})") from None


def from_run_config(
    run_config: Mapping, *, num_sampled_clients: int, strategies: Mapping[str, type] = STRATEGIES, **common
):
    """The strategy a run config names, with `common` arguments (fractions, minimums...) where it takes them.

    `num_sampled_clients` is what the DP wrappers need: clients trained per
    round. `strategies`: the names an app offers (Flower's, plus its own).
    """
    name = run_config.get("strategy", "fedavg")
    if name not in strategies:
        raise ConfigError(f"strategy must be one of {', '.join(strategies)}, got {name!r}")
    cls = strategies[name]
    accepted = accepted_parameters(cls)
    kwargs = {k: v for k, v in common.items() if k in accepted}
    strategy = _construct(cls, f"run-config table {name}", {**kwargs, **table(run_config, name)})
    dp = run_config.get("dp", "off")
    if dp not in DP_WRAPPERS:
        raise ConfigError(f"dp must be one of {', '.join(DP_WRAPPERS)}, got {dp!r}")
    if DP_WRAPPERS[dp] is not None:
        wrapper, params = DP_WRAPPERS[dp]
        strategy = _construct(
            wrapper,
            f"run-config table {params}",
            {"strategy": strategy, "num_sampled_clients": num_sampled_clients, **table(run_config, params)},
        )
    return strategy


# Flower's strategies whose aggregate of a phase is FedAvg's weighted mean of the replies (FedAvgM and the FedOpt
# family then step from that mean); robust ones (Krum, median, trimmed mean), QFedAvg and DP wrappers need each reply.
WEIGHTED_MEAN_STRATEGIES = (
    flower.FedAvg,
    flower.FedProx,
    flower.FedAvgM,
    flower.FedAdam,
    flower.FedYogi,
    flower.FedAdagrad,
)


def mean_weighting_key(strategy, phase: str) -> str | None:
    """The key `strategy` weighs replies by, when its aggregate of `phase` ("train" or "evaluate") is their weighted
    mean and nothing else, so that a cohort's replies may reach it as their mean (fl_core.cohorts.combine); else None.

    Only the exact classes of WEIGHTED_MEAN_STRATEGIES with Flower's default
    metric aggregation: a subclass or a custom `*_metrics_aggr_fn` may look at
    each reply.
    """
    if type(strategy) not in WEIGHTED_MEAN_STRATEGIES:
        return None
    aggregate = strategy.train_metrics_aggr_fn if phase == "train" else strategy.evaluate_metrics_aggr_fn
    return strategy.weighted_by_key if aggregate is aggregate_metricrecords else None


def innermost(strategy):
    """The strategy a chain of wrappers (DP) wraps."""
    while isinstance(getattr(strategy, "strategy", None), flower.Strategy):
        strategy = strategy.strategy
    return strategy


# ---------------------------------------------------------------------------
# State between rounds


class StrategyState(dict):
    """A strategy's data attributes (a nested strategy's as a nested StrategyState)."""


_RECORDS = (ArrayRecord, MetricRecord, ConfigRecord, RecordDict)


def _is_data(value) -> bool:
    """Whether `value` is plain data a checkpoint can hold (no functions, no arbitrary objects)."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, np.ndarray, np.generic, *_RECORDS)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_data(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _is_data(v) for k, v in value.items())
    return False


def strategy_state(strategy) -> StrategyState:
    """Every attribute of `strategy` that holds plain data, and the state of any strategy it wraps."""
    state = StrategyState()
    for name, value in vars(strategy).items():
        if isinstance(value, flower.Strategy):
            state[name] = strategy_state(value)
        elif _is_data(value):
            state[name] = value
    return state


def restore_strategy_state(strategy, state: StrategyState) -> None:
    """Put back what `strategy_state` returned (into a strategy built with the same settings)."""
    for name, value in state.items():
        if isinstance(value, StrategyState):
            restore_strategy_state(getattr(strategy, name), value)
        else:
            setattr(strategy, name, value)
