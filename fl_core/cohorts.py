"""Cohorts: several nodes' messages of one phase handled by one call of an app's cohort function.

A Flower ClientApp handles one message at a time. An app that can do better
on many nodes at once (train K clients in one pass over a GPU, or one grouped
network on a CPU) registers a cohort function beside its ClientApp::

    app = ClientApp()

    @app.train()
    def train(msg, context): ...               # one node, as Flower calls it

    @fl_core.cohort(app, "train")
    def train_cohort(messages, contexts):      # several nodes: their replies, in order, or None
        ...

It gets the messages of a cohort and their nodes' Contexts and returns one
reply per message, in order (each what `train` would reply, up to rounding),
having updated each Context's state as `train` would; or None to have the
ClientApp handle them one by one (say, for a run config it does not cover).
Under Flower's own engine it is never called.

fedsweep splits a phase's messages into cohorts by their order alone (`split`:
near-equal runs of at most --cohort-size), never by worker, so a run's numbers
are the same for any number of workers. A cohort is the unit of the pool's
work: it goes to one worker, and a cohort whose call failed is run again whole
with the same inputs (see grid.py for what happens when its retries are spent).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from fl_core.seeding import seeded_call

_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # ClientApp -> {message type: function}


def cohort(client_app, message_type: str = "train") -> Callable:
    """Decorator: register `function(messages, contexts) -> replies or None` for `client_app`'s `message_type`."""

    def register(function: Callable) -> Callable:
        _FUNCTIONS.setdefault(client_app, {})[message_type] = function
        return function

    return register


def cohort_function(client_app, message_type: str) -> Callable | None:
    """The cohort function registered for `client_app` and `message_type`, or None."""
    return None if client_app is None else _FUNCTIONS.get(client_app, {}).get(message_type)


def split(count: int, size: int) -> list[list[int]]:
    """Indices 0..count-1 in ceil(count / size) consecutive cohorts of near-equal length (the first ones longer)."""
    if count == 0:
        return []
    cohorts = -(-count // max(size, 1))
    length, longer = divmod(count, cohorts)
    starts = [c * length + min(c, longer) for c in range(cohorts + 1)]
    return [list(range(starts[c], starts[c + 1])) for c in range(cohorts)]


def handle(client_app, calls: list[tuple]) -> list[tuple]:
    """(reply, Context state) of each (message, Context, seed) of a cohort: by its cohort function, or one by one.

    The cohort function runs with the global generators seeded by the first
    call's seed; one by one, each call with its own seed.
    """
    messages = [message for message, _, _ in calls]
    contexts = [context for _, context, _ in calls]
    function = cohort_function(client_app, messages[0].metadata.message_type) if len(calls) > 1 else None
    replies = None if function is None else seeded_call(calls[0][2], function, messages, contexts)
    if replies is None:
        replies = [seeded_call(seed, client_app, message, context) for message, context, seed in calls]
    replies = list(replies)
    if len(replies) != len(messages):
        raise ValueError(
            f"the cohort function {function.__qualname__} returned {len(replies)} replies for {len(messages)} "
            "messages: it must return one per message, in order, or None"
        )
    return [(reply, context.state) for reply, context in zip(replies, contexts)]
