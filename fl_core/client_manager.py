"""Reproducible client selection for Flower's server."""

from __future__ import annotations

import numpy as np
from flwr.server import SimpleClientManager


class SeededClientManager(SimpleClientManager):
    """`SimpleClientManager` whose sampling depends only on (seed, round, call).

    Flower's own sampling uses Python's global `random`, so it cannot be
    replayed. The server loop calls `start_round(r)` before each round; the
    round's first sample (fit) and second (evaluate) draw from their own streams.
    """

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed
        self._round = 0
        self._calls = 0

    def start_round(self, server_round: int) -> None:
        """Select from the streams of `server_round` from now on."""
        self._round, self._calls = server_round, 0

    def sample(self, num_clients, min_num_clients=None, criterion=None):
        """`num_clients` distinct clients, returned in client-id order."""
        cids = sorted(self.clients, key=int)
        if criterion is not None:
            cids = [c for c in cids if criterion.select(self.clients[c])]
        if num_clients > len(cids):
            raise RuntimeError(f"asked to sample {num_clients} clients but only {len(cids)} are available")
        rng = np.random.default_rng([self.seed, self._round, self._calls])
        self._calls += 1
        chosen = np.sort(rng.choice(len(cids), size=num_clients, replace=False))
        return [self.clients[cids[i]] for i in chosen]
