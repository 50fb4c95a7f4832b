"""Strategies: construction, ordered aggregation, state round trip; seeded sampling."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy

from fl_core.client_manager import SeededClientManager
from fl_core.config import STRATEGIES
from fl_core.strategy import build_strategy
from tests.conftest import tiny_config


class FakeProxy(ClientProxy):
    """A proxy that is never called: aggregation only needs its cid."""

    def get_properties(self, *a):  # pragma: no cover
        raise NotImplementedError

    get_parameters = fit = evaluate = reconnect = get_properties


def _results(rng, order):
    out = []
    for cid in order:
        arrays = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=5).astype(np.float32)]
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), int(10 + cid), {"train_loss": float(cid)})
        out.append((FakeProxy(str(cid)), res))
    return out


def _strategy(name):
    init = [np.zeros((3, 4), np.float32), np.zeros(5, np.float32)]
    return build_strategy(tiny_config(strategy=name), init, lambda *a: (0.0, {"accuracy": 0.0}),
                          lambda r: {}, lambda r: {})


@pytest.mark.parametrize("name", STRATEGIES)
def test_aggregation_does_not_depend_on_arrival_order(name):
    a, b = _strategy(name), _strategy(name)
    for s in (a, b):
        s.initialize_parameters(None)
    for rnd in (1, 2):
        results = _results(np.random.default_rng(rnd), range(6))
        pa, ma = a.aggregate_fit(rnd, results, [])
        pb, mb = b.aggregate_fit(rnd, list(reversed(results)), [])
        for x, y in zip(parameters_to_ndarrays(pa), parameters_to_ndarrays(pb)):
            assert np.array_equal(x, y)
        assert ma == mb


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi"])
def test_state_round_trip_continues_identically(name):
    """A strategy restored from get_state() aggregates round 3 exactly as the original."""
    original = _strategy(name)
    original.initialize_parameters(None)
    for rnd in (1, 2):
        original.aggregate_fit(rnd, _results(np.random.default_rng(rnd), range(4)), [])
    state = original.get_state()
    assert state, "a stateful strategy exported nothing"
    restored = _strategy(name)
    restored.set_state(state)
    third = _results(np.random.default_rng(3), range(4))
    pa, _ = original.aggregate_fit(3, third, [])
    pb, _ = restored.aggregate_fit(3, third, [])
    for x, y in zip(parameters_to_ndarrays(pa), parameters_to_ndarrays(pb)):
        assert np.array_equal(x, y)


def test_strategy_specific_settings_reach_flower():
    prox = build_strategy(tiny_config(strategy="fedprox", proximal_mu=0.3), [np.zeros(1)], None, lambda r: {}, lambda r: {})
    assert prox.proximal_mu == 0.3
    avgm = build_strategy(tiny_config(strategy="fedavgm", server_lr=0.5, server_momentum=0.7), [np.zeros(1)], None,
                          lambda r: {}, lambda r: {})
    assert (avgm.server_learning_rate, avgm.server_momentum) == (0.5, 0.7)
    yogi = build_strategy(tiny_config(strategy="fedyogi"), [np.zeros(1)], None, lambda r: {}, lambda r: {})
    assert yogi.eta == 1e-2  # Flower's default when --server-lr is not given


def test_seeded_sampling_depends_only_on_seed_and_round():
    def picks(seed, rnd):
        cm = SeededClientManager(seed)
        for cid in range(100):
            cm.register(FakeProxy(str(cid)))
        cm.start_round(rnd)
        return [p.cid for p in cm.sample(10)], [p.cid for p in cm.sample(5)]

    assert picks(0, 3) == picks(0, 3)
    assert picks(0, 3) != picks(0, 4) and picks(0, 3) != picks(1, 3)
    fit, ev = picks(0, 3)
    assert len(set(fit)) == 10 and fit == sorted(fit, key=int)
