"""Work hung on the round loop: progress lines, checkpoints, metrics files.

A callback sees a `RoundEnd` after every round (metrics and a full
`ServerState` snapshot) and a `RunEnd` once at the end. The Tune trainable adds
its own callback that reports to Tune; the loop itself knows none of them.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import pandas as pd

from fl_core.checkpoint import ServerState, save_checkpoint, write_atomically

# Metrics that measure the machine, not the model: they differ run to run.
TIMING_KEYS = ("seconds", "samples_per_s")


@dataclass
class RoundEnd:
    """What a callback learns after a round."""

    round: int
    num_rounds: int
    start_round: int
    metrics: dict
    state: ServerState


@dataclass
class RunEnd:
    """What a callback learns once the run is over."""

    history: list[dict]
    client_evaluation: dict
    seconds: float
    state: ServerState


class Callback:
    """Base class: override what you need."""

    def on_round_end(self, event: RoundEnd) -> None:
        """Called after each round's evaluation."""

    def on_run_end(self, event: RunEnd) -> None:
        """Called once after the final all-client evaluation."""


def _write_text(path: str, text: str) -> None:
    """Replace `path` with `text` atomically."""
    write_atomically(path, lambda f: f.write(text.encode()))


class ProgressPrinter(Callback):
    """One line per round with accuracy, loss, time and ETA; a summary at the end."""

    def __init__(self, print_fn=print) -> None:
        self.print = print_fn
        self._round_seconds = 0.0

    def on_round_end(self, event: RoundEnd) -> None:
        """Print the round's line."""
        m = event.metrics
        # From round times only: start-up (Ray workers, data) would inflate the first estimates.
        self._round_seconds += m["seconds"]
        eta = self._round_seconds / (event.round - event.start_round + 1) * (event.num_rounds - event.round)
        fed = "" if m["fed_val_accuracy"] is None else f"  fed-val acc {m['fed_val_accuracy']:.4f}"
        self.print(
            f"round {event.round:>3}/{event.num_rounds}  acc {m['central_accuracy']:.4f}  loss {m['central_loss']:.4f}"
            f"{fed}  {m['seconds']:.2f} s  {m['samples_per_s']:,.0f} samples/s  ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}"
        )

    def on_run_end(self, event: RunEnd) -> None:
        """Print the final summary."""
        last = event.history[-1] if event.history else {}
        best = max(event.history, key=lambda m: m["central_accuracy"]) if event.history else {}
        self.print(
            f"done: {len(event.history)} rounds in {event.seconds:.1f} s; final test accuracy "
            f"{last.get('central_accuracy', float('nan')):.4f} (best {best.get('central_accuracy', float('nan')):.4f} "
            f"at round {best.get('round', '-')})"
        )
        ce = event.client_evaluation
        if ce:
            self.print(
                f"per-client validation accuracy over {ce['num_clients']} clients: mean {ce['mean']:.4f}  "
                f"min {ce['min']:.4f}  p10 {ce['p10']:.4f}  max {ce['max']:.4f}"
            )


class CheckpointWriter(Callback):
    """Keeps `directory/fl_checkpoint.npz` at the latest finished round."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_round_end(self, event: RoundEnd) -> None:
        """Overwrite the checkpoint atomically."""
        save_checkpoint(event.state, self.directory)

    def on_run_end(self, event: RunEnd) -> None:
        """The final checkpoint also carries the all-client evaluation."""
        save_checkpoint(event.state, self.directory)


class MetricsWriter(Callback):
    """Writes `metrics.csv` and `metrics.json` (per-round history) and `summary.json` into `directory`."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _write_history(self, history: list[dict]) -> None:
        os.makedirs(self.directory, exist_ok=True)
        _write_text(os.path.join(self.directory, "metrics.csv"), pd.DataFrame(history).to_csv(index=False))
        _write_text(os.path.join(self.directory, "metrics.json"), json.dumps(history, indent=1))

    def on_round_end(self, event: RoundEnd) -> None:
        """Rewrite the history files with the new round."""
        self._write_history(event.state.history)

    def on_run_end(self, event: RunEnd) -> None:
        """Write the final summary."""
        self._write_history(event.history)
        summary = {
            "rounds": len(event.history),
            "final": event.history[-1] if event.history else None,
            "client_evaluation": {k: v for k, v in event.client_evaluation.items() if k != "per_client"},
            "per_client_accuracy": event.client_evaluation.get("per_client"),
            "seconds": event.seconds,
            "config": event.state.config,
        }
        _write_text(os.path.join(self.directory, "summary.json"), json.dumps(summary, indent=1))
