"""Work hung on the round loop: progress lines, checkpoints, metrics files, TensorBoard.

A callback sees a `RoundEnd` after every round (metrics and, for apps whose
rounds fedsweep runs, a full `ServerState` snapshot) and a `RunEnd` once at the
end. The Tune trainable adds its own callback that reports to Tune; the loop
itself knows none of them.

Per-round metrics are flat; fl_core.metrics names them.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass

import pandas as pd

from fl_core.checkpoint import ServerState, save_checkpoint, write_atomically
from fl_core.metrics import CENTRAL_ROUND, client_evaluation_metrics, model_metrics, scored_round


@dataclass
class RoundEnd:
    """What a callback learns after a round."""

    round: int
    num_rounds: int | None  # None when the strategy loops itself (its own start) without a num-server-rounds key
    start_round: int
    metrics: dict
    # None when the strategy loops itself: such runs cannot be checkpointed. A snapshot that shares arrays with the
    # live strategy and nodes: write or copy it during the callback to keep it.
    state: ServerState | None


@dataclass
class RunEnd:
    """What a callback learns once the run is over."""

    history: list[dict]
    client_evaluation: dict  # from fl_core.evaluate_all_nodes, when the app called it; else {}
    seconds: float
    state: ServerState | None


class Callback:
    """Base class: override what you need."""

    def on_round_end(self, event: RoundEnd) -> None:
        """Called after each round."""

    def on_run_end(self, event: RunEnd) -> None:
        """Called once after the ServerApp returned."""


def _write_text(path: str, text: str) -> None:
    """Replace `path` with `text` atomically."""
    write_atomically(path, lambda f: f.write(text.encode()))


def _short(key: str) -> str:
    """A metric name for a progress line: central_accuracy -> acc, fed_loss -> fed-loss."""
    key = key.replace("central_", "").replace("_", "-")
    return {"accuracy": "acc"}.get(key, key.replace("accuracy", "acc"))


def _headline(metrics: dict) -> str | None:
    """The central metric a run's summary line names: central_accuracy if there, else the first central one."""
    central = [k for k in model_metrics(metrics) if k.startswith("central_")]
    return "central_accuracy" if "central_accuracy" in central else next(iter(central), None)


class ProgressPrinter(Callback):
    """One line per round with the model's metrics, time and ETA; a summary at the end."""

    def __init__(self, print_fn=print) -> None:
        self.print = print_fn
        self._round_seconds = 0.0

    def on_round_end(self, event: RoundEnd) -> None:
        """Print the round's line."""
        m = event.metrics
        # From round times only: start-up (Ray workers, data) would inflate the first estimates.
        self._round_seconds += m["seconds"]
        # Values carried from an earlier round (--central-eval-every) were not measured now: not shown.
        values = "  ".join(
            f"{_short(k)} {v:.4f}" for k, v in model_metrics(m).items() if scored_round(m, k) == m["round"]
        )
        total = "" if event.num_rounds is None else f"/{event.num_rounds}"
        eta = ""
        if event.num_rounds is not None:
            left = self._round_seconds / (event.round - event.start_round + 1) * (event.num_rounds - event.round)
            eta = f"  ETA {time.strftime('%H:%M:%S', time.gmtime(left))}"
        faults = [f"{k.replace('_', ' ')} {m[k]}" for k in ("retries", "train_dropped", "fed_dropped") if m.get(k)]
        faults_note = f"  ({', '.join(faults)})" if faults else ""
        self.print(
            f"round {event.round:>3}{total}  {values}  {m['seconds']:.2f} s  "
            f"{m.get('samples_per_s', 0):,.0f} samples/s{eta}{faults_note}"
        )

    def on_run_end(self, event: RunEnd) -> None:
        """Print the final summary."""
        line = f"done: {len(event.history)} rounds in {event.seconds:.1f} s"
        metric = _headline(event.history[-1]) if event.history else None
        if metric is not None:
            pick = min if "loss" in metric else max  # as tune_search's default --mode
            best = pick((m for m in event.history if metric in m), key=lambda m: m[metric])
            name = "test accuracy" if metric == "central_accuracy" else metric
            line += (
                f"; final {name} {event.history[-1][metric]:.4f} "
                f"(best {best[metric]:.4f} at round {scored_round(best, metric)})"
            )
        self.print(line)
        ce = event.client_evaluation
        for metric, stats in ce.get("stats", {}).items():
            self.print(
                f"per-client {metric} over {ce['num_clients']} clients: mean {stats['mean']:.4f}  "
                f"min {stats['min']:.4f}  p10 {stats['p10']:.4f}  max {stats['max']:.4f}"
            )


class CheckpointWriter(Callback):
    """Keeps `directory/fl_checkpoint.npz` at the latest round that is a multiple of `every`, and at the end."""

    def __init__(self, directory: str, every: int = 1) -> None:
        self.directory = directory
        self.every = every

    def on_round_end(self, event: RoundEnd) -> None:
        """Overwrite the checkpoint atomically on every `every`-th round."""
        if event.state is not None and event.round % self.every == 0:
            save_checkpoint(event.state, self.directory)

    def on_run_end(self, event: RunEnd) -> None:
        """The final checkpoint also carries the all-node evaluation."""
        if event.state is not None:
            save_checkpoint(event.state, self.directory)


class MetricsWriter(Callback):
    """Writes `metrics.csv` and `metrics.json` (per-round history) and `summary.json` into `directory`."""

    def __init__(self, directory: str, describe: dict | None = None) -> None:
        self.directory = directory
        self.describe = describe or {}  # what summary.json says the run was (app, run config, settings)
        self.history: list[dict] = []

    def _write_history(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        _write_text(os.path.join(self.directory, "metrics.csv"), pd.DataFrame(self.history).to_csv(index=False))
        _write_text(os.path.join(self.directory, "metrics.json"), json.dumps(self.history, indent=1))

    def on_round_end(self, event: RoundEnd) -> None:
        """Rewrite the history files with the new round."""
        self.history = list(event.state.history) if event.state is not None else self.history + [event.metrics]
        self._write_history()

    def on_run_end(self, event: RunEnd) -> None:
        """Write the final summary."""
        self.history = list(event.history)
        self._write_history()
        summary = {
            "rounds": len(event.history),
            "final": event.history[-1] if event.history else None,
            "client_evaluation": {k: v for k, v in event.client_evaluation.items() if k != "per_client"},
            "per_client": event.client_evaluation.get("per_client"),
            "seconds": event.seconds,
            **self.describe,
        }
        _write_text(os.path.join(self.directory, "summary.json"), json.dumps(summary, indent=1))


def round_values(metrics: dict) -> dict:
    """The finite numbers of a round's metrics for a tracker: the round and central_round left out (they are the
    step), and a model metric carried from an earlier round (--central-eval-every) left out too."""
    model = model_metrics(metrics)
    return finite_numbers(
        {
            k: v
            for k, v in metrics.items()
            if k not in ("round", CENTRAL_ROUND) and (k not in model or scored_round(metrics, k) == metrics["round"])
        }
    )


def last_round(event: RunEnd) -> int:
    """The run's last round (0 if it ran none): where a tracker puts the all-node evaluation."""
    return event.history[-1]["round"] if event.history else 0


def finite_numbers(values: dict) -> dict:
    """The finite numbers of `values` as floats (bools and anything else left out)."""
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


class TensorBoardWriter(Callback):
    """TensorBoard event files in `directory`: each round's numbers with the round as the step.

    Written with tensorboardX, as Ray Tune's own logger writes a trial's. A
    model metric carried from an earlier round (--central-eval-every) is
    written at the round that measured it only. The all-node evaluation's
    statistics (clients_*) go at the last round. A resumed run adds an event
    file beside the first; TensorBoard reads the folder as one run.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._writer = None

    def _write(self, values: dict, step: int) -> None:
        from tensorboardX import SummaryWriter  # it imports torch (seconds): at the first round, not at start

        if self._writer is None:
            self._writer = SummaryWriter(self.directory)
        for key, value in finite_numbers(values).items():
            self._writer.add_scalar(key, value, global_step=step)
        self._writer.flush()

    def on_round_end(self, event: RoundEnd) -> None:
        """Write the round's metrics, timings and counts."""
        self._write(round_values(event.metrics), event.round)

    def on_run_end(self, event: RunEnd) -> None:
        """Write the all-node evaluation, if any, at the last round; close the file."""
        clients = client_evaluation_metrics(event.client_evaluation)
        if clients:
            self._write(clients, last_round(event))
        if self._writer is not None:
            self._writer.close()
