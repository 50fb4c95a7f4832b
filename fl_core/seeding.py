"""Randomness as a function of (seed, round, node, phase), whichever process or worker does the work.

Apps and Flower's strategies draw from global generators: Flower samples nodes
with Python's `random`, DP wrappers add noise with `numpy.random`, templates
shuffle with torch's global generator. fedsweep reseeds those generators before
every call it makes (each client call in its worker, each strategy call and
central evaluation in the server process), so a call's randomness depends on
what the call is, not on what ran before it in that process. That is what makes
runs reproducible whatever worker runs a client, and a resumed run identical to
an uninterrupted one.
"""

from __future__ import annotations

import random
import sys
from contextlib import contextmanager

import numpy as np
from flwr.serverapp.strategy import strategy_utils

# Phases of a round, as seed components.
MAIN, TRAIN, EVALUATE, QUERY, AGGREGATE_TRAIN, AGGREGATE_EVALUATE, CENTRAL, FINAL = range(8)
MESSAGE_PHASES = {"train": TRAIN, "evaluate": EVALUATE, "query": QUERY}


def derive_seed(*keys: int) -> int:
    """A 32-bit seed that depends only on `keys` (non-negative integers)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint32)[0])


def message_phase(message_type: str) -> int:
    """Seed component of a message type ("train", "evaluate.custom", ...)."""
    return MESSAGE_PHASES.get(message_type.split(".")[0], QUERY)


def seed_globals(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (torch only when it is imported)."""
    random.seed(seed)
    np.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def seeded_call(seed: int, work, *args):
    """`work(*args)` with the global generators seeded with `seed` first: a call's draws depend on the call alone."""
    seed_globals(seed)
    return work(*args)


class NodeSampler:
    """Stands in for the `random` module inside Flower's strategy_utils, whose `sample_nodes` draws nodes.

    Each draw comes from its own stream keyed by (seed, round, draw within the
    round); `start_round` sets the round. Without it (a strategy whose `start`
    is its own loop) draws are keyed by their position in the run.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.round = 0
        self.draws = 0

    def start_round(self, server_round: int) -> None:
        """Key the next draws by `server_round`."""
        self.round, self.draws = server_round, 0

    def sample(self, population, k: int) -> list:
        """`k` distinct members of `population` (in a stable order first), as `random.sample` gives them."""
        rng = random.Random(derive_seed(self.seed, self.round, self.draws))
        self.draws += 1
        return rng.sample(sorted(population), k)

    def __getattr__(self, name):
        """Anything else the module uses comes from the real `random`."""
        return getattr(random, name)


@contextmanager
def seeded_node_sampling(sampler: NodeSampler):
    """Within the block, Flower's strategies sample nodes with `sampler`."""
    original = strategy_utils.random
    strategy_utils.random = sampler
    try:
        yield sampler
    finally:
        strategy_utils.random = original
