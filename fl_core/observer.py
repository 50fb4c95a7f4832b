"""Rounds as the grid sees them, for a ServerApp whose rounds fedsweep does not run itself (see fl_core.loop)."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from flwr.app import Message
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fl_core.apps import ROUNDS_KEY
from fl_core.grid import message_round
from fl_core.metrics import Phase, round_row


def own_loop_note() -> str:
    """Why the rounds under way cannot be checkpointed, and what to change: named from the calling strategy."""
    frame = sys._getframe(1)
    while frame is not None and not isinstance(frame.f_locals.get("self"), Strategy):
        frame = frame.f_back
    if frame is None:
        return (
            "the ServerApp sends its round messages itself, not through a Flower strategy's start, so this run "
            "has no checkpoints, no --resume and no central metrics; fedsweep runs and checkpoints the rounds "
            "of strategy.start(grid=grid, ...) or fl_core.start(strategy, grid, ...)"
        )
    name = type(frame.f_locals["self"]).__name__
    return (
        f"strategy {name} overrides Strategy.start with its own round loop, so this run has no checkpoints, "
        f"no --resume and no central metrics; to have fedsweep run and checkpoint the rounds, drop {name}.start "
        "or have it call super().start(...), and keep the extras in the strategy's other methods or evaluate_fn"
    )


class RoundObserver:
    """Rounds as the grid sees them, for a strategy whose `start` is its own loop (or a ServerApp looping itself).

    Messages carry their round in the config (`server-round`, which Flower's
    strategies always set); a round is reported once messages of a later round
    go out, or when the ServerApp returns. The number of rounds is the run
    config's `num-server-rounds` (Flower's template key) when it has one. Metrics are the replies' aggregated
    with Flower's default (weighted by num-examples); central evaluation is not
    visible from here.
    """

    def __init__(self, run) -> None:
        self.run = run
        self.current: dict | None = None
        self.first_round: int | None = None
        self._failed_seen = 0  # the grid's failed attempts already counted
        self._paused = False
        self.active = True  # off once fedsweep runs the rounds itself (fl_core.start)

    @contextmanager
    def paused(self):
        """Messages sent within the block are not part of any round."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def __call__(self, messages: list[Message], replies: list[Message], seconds: float) -> None:
        """The grid's listener: fold one send_and_receive into the current round."""
        retries = self.run.grid.failed_attempts - self._failed_seen  # calls of this send_and_receive run again
        self._failed_seen += retries
        if not self.active or self._paused or not messages:
            return
        server_round = message_round(messages[0])
        if server_round is None:
            return
        if self.current is not None and self.current["round"] != server_round:
            self.flush()
        if self.current is None:
            self.current = {"round": server_round, "t0": time.perf_counter() - seconds, "retries": 0}
            if self.first_round is None:
                self.first_round = server_round
                print(f"note: {own_loop_note()}", flush=True)
        self.current["retries"] += retries
        kind = "train" if messages[0].metadata.message_type.startswith("train") else "fed"
        if kind == "train":
            config = next(iter(messages[0].content.config_records.values()), {})
            self.current["epochs"] = float(config.get("local-epochs", 1))
        valid = [r.content for r in replies if not r.has_error()]
        try:
            aggregated = aggregate_metricrecords(valid, "num-examples") if valid else None
        except (KeyError, StopIteration, TypeError):  # replies without one MetricRecord holding num-examples
            aggregated = None
        self.current[kind] = Phase.of(kind + "_", aggregated, replies, "num-examples", seconds)

    def flush(self) -> None:
        """Report the current round, if one is open."""
        if self.current is None:
            return
        current, self.current = self.current, None
        metrics = round_row(
            current["round"],
            current.get("train", Phase()),
            current.get("fed", Phase()),
            {},
            retries=current["retries"],
            seconds=time.perf_counter() - current["t0"],
            epochs=current.get("epochs", 1.0),
        )
        self.run.history.append(metrics)
        rounds = self.run.run_config.get(ROUNDS_KEY)
        self.run.round_done(
            current["round"], rounds if isinstance(rounds, int) else None, self.first_round, metrics, None
        )
