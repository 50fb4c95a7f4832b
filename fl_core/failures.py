"""What a failed call is, and how it is reported: shared by the client calls (grid.py) and sharded central
evaluation (central.py), both run by the worker pool (pool.py), which retries them."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass

from fl_core.logs import LOGGER


class ClientAppError(RuntimeError):
    """A client call failed on every attempt (or too few replied) and the run's policy stops the run."""


class NodeLostError(RuntimeError):
    """Every client worker was lost with its node (or never came back from a restart): the run cannot go on."""


@dataclass
class CallFailure:
    """A call that failed on every attempt: what happened the last time."""

    kind: str  # "raised", "worker died" or "timed out"
    attempts: int
    worker: str  # which worker ran the last attempt
    detail: str  # the ClientApp's traceback, or Ray's account of the worker's end

    def error(self, what: str) -> ClientAppError:
        """The error that stops the run, for the call described by `what`."""
        return ClientAppError(
            f"{what} failed {self.attempts} time(s) ({self.kind}, last on {self.worker}):\n{self.detail}"
        )


@dataclass
class Raised:
    """What a worker yields for an item whose work raised: the traceback (the worker itself is fine)."""

    detail: str


def outcome(work, *args):
    """`work(*args)`, or Raised with its traceback: one item's failure must not end its group's call."""
    try:
        return work(*args)
    except Exception:  # noqa: BLE001  (anything the app raises is reported, and the call run again)
        return Raised(traceback.format_exc())


def raise_first_failure(results: list, what: Callable[[int], str]) -> list:
    """`results` unchanged, or the error of the first CallFailure among them (`what(i)` names call i)."""
    for index, result in enumerate(results):
        if isinstance(result, CallFailure):
            raise result.error(what(index))
    return results


class FailureReporter:
    """Hears of every failed attempt of a pool's calls: one warning each, with the traceback the first time.

    `name(i)` says what call i is; `final` (or `final(i)`) what happens when
    its retries are spent (with {attempts}).
    """

    def __init__(self, what: str, name: Callable[[int], str], retries: int, final: str | Callable[[int], str]) -> None:
        self.what, self.name, self.retries, self.final = what, name, retries, final
        self._shown: set[int] = set()  # calls whose traceback was printed

    def __call__(self, index: int, attempt: int, kind: str, worker: str, detail: str, retrying: bool) -> None:
        """Report one failed attempt of call `index` (the pool's report signature)."""
        final = self.final(index) if callable(self.final) else self.final
        outcome = f"running it again ({attempt} of {self.retries})" if retrying else final.format(attempts=attempt)
        first = detail.strip().splitlines()[-1] if detail.strip() else kind
        line = f"{self.what} failed: {self.name(index)}: {kind} on {worker}: {first}; {outcome}"
        if kind == "raised" and index not in self._shown:  # the traceback once: retries would repeat it
            self._shown.add(index)
            line += "\n" + detail.strip()
        LOGGER.warning(line)
