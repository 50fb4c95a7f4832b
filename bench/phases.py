"""Time the phases of fedsweep's rounds from outside: wrap the Flower methods its round loop calls.

fl_core's round loop calls `Server.fit_round` (sample, train, aggregate), the
strategy's `evaluate` (central evaluation; fedsweep's strategies inherit it from
Flower's `FedAvg`) and `Server.evaluate_round` (federated validation). Inside a
`PhaseTimer` block those are timed per round, without touching fl_core.
"""

from __future__ import annotations

import statistics
import time


def _targets() -> dict:
    """phase name -> (class, method name) to time."""
    from flwr.server import Server
    from flwr.server.strategy import FedAvg

    return {
        "fit": (Server, "fit_round"),
        "central_evaluation": (FedAvg, "evaluate"),
        "federated_evaluation": (Server, "evaluate_round"),
    }


class PhaseTimer:
    """Seconds of each phase of each round while active: `seconds[phase][server_round]`."""

    def __init__(self) -> None:
        """Start with no timings."""
        self.seconds: dict[str, dict[int, float]] = {}
        self._originals: dict[str, tuple] = {}

    def __enter__(self) -> PhaseTimer:
        """Install the timing wrappers."""
        for phase, (cls, name) in _targets().items():
            original = getattr(cls, name)
            self._originals[phase] = (cls, name, original)
            setattr(cls, name, self._timed(phase, original))
        return self

    def _timed(self, phase: str, original):
        """`original`, recording its duration under (phase, server_round)."""
        record = self.seconds.setdefault(phase, {})

        def timed(obj, *args, **kwargs):
            """The wrapped method, timed."""
            server_round = kwargs.get("server_round", args[0] if args else None)
            t0 = time.perf_counter()
            try:
                return original(obj, *args, **kwargs)
            finally:
                record[int(server_round)] = time.perf_counter() - t0

        return timed

    def __exit__(self, *exc) -> None:
        """Put Flower's methods back."""
        for cls, name, original in self._originals.values():
            setattr(cls, name, original)

    def medians(self, rounds: list[int]) -> dict[str, float]:
        """Median seconds of each phase over `rounds` (phases that ran in none of them are left out)."""
        out = {}
        for phase, record in self.seconds.items():
            values = [record[r] for r in rounds if r in record]
            if values:
                out[phase] = statistics.median(values)
        return out
