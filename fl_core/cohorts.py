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
The messages may share their content (every node sent the same RecordDict
arrives as one object): read it, never change it. Under Flower's own engine
it is never called.

Where the strategy's aggregate is a weighted mean of the replies (Flower's
FedAvg family: fl_core.strategies.mean_weighting_key), the worker also folds a
cohort's replies into one (`combine`): their weighted mean by Flower's own
aggregation, weighted by their `num-examples`, which that sum carries. The
strategy's mean of the cohorts' means is the mean of the nodes' replies; only
the order of the sums changes (the last digits). Fewer, smaller replies cross
to the server, which then aggregates one reply per cohort instead of one per
node. A cohort function can skip building replies only to have them averaged:
while `folding()` names the weighting key, it may return that mean itself, one
Message (what `combine` would make of its replies, up to rounding).

fedsweep splits a phase's messages into cohorts by their order alone (`split`:
near-equal runs of at most --cohort-size), never by worker, so a run's numbers
are the same for any number of workers. A cohort is the unit of the pool's
work: it goes to one worker, and a cohort whose call failed is run again whole
with the same inputs (see grid.py for what happens when its retries are spent).
"""

from __future__ import annotations

import pickle
import weakref
from collections.abc import Callable
from contextvars import ContextVar

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords, aggregate_metricrecords

from fl_core.seeding import seeded_call

_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # ClientApp -> {message type: function}
_FOLDING: ContextVar[str | None] = ContextVar("fl_core_cohort_folding", default=None)


def cohort(client_app, message_type: str = "train") -> Callable:
    """Decorator: register `function(messages, contexts) -> replies or None` for `client_app`'s `message_type`."""

    def register(function: Callable) -> Callable:
        _FUNCTIONS.setdefault(client_app, {})[message_type] = function
        return function

    return register


def cohort_function(client_app, message_type: str) -> Callable | None:
    """The cohort function registered for `client_app` and `message_type`, or None."""
    return None if client_app is None else _FUNCTIONS.get(client_app, {}).get(message_type)


def folding() -> str | None:
    """In a cohort function: the metric its replies are weighted by when they are to be folded into their weighted
    mean (the function may then return that mean, one Message); None when every reply is wanted."""
    return _FOLDING.get()


def split(count: int, size: int) -> list[list[int]]:
    """Indices 0..count-1 in consecutive cohorts of near-equal length (the first ones longer), at most `size` each.

    There are ceil(count / size) of them rounded up to a power of two (at
    most `count`), so that they share out evenly over 2, 4, 8... workers: 50
    messages in cohorts of up to 8 make 8 cohorts of 6 or 7, 25 clients for
    each of two workers, where 7 cohorts would leave one worker 28 of them.
    """
    if count == 0:
        return []
    cohorts = -(-count // max(size, 1))
    cohorts = min(count, 1 << (cohorts - 1).bit_length())
    length, longer = divmod(count, cohorts)
    starts = [c * length + min(c, longer) for c in range(cohorts + 1)]
    return [list(range(starts[c], starts[c + 1])) for c in range(cohorts)]


def handle(client_app, calls: list[tuple], weighting_key: str | None = None) -> list[tuple]:
    """(reply, Context state) of each (message, Context, seed) of a cohort: by its cohort function, or one by one.

    With a `weighting_key`, a cohort's replies are folded into the first
    node's (`combine`, or by the cohort function itself: `folding`) where they
    can be, and the others' replies are None.

    The cohort function runs with the global generators seeded by the first
    call's seed and gets the messages as they came, sharing what they share
    (the same content object, when a strategy sent every node the same), so
    that it can convert that once. One by one, each call runs with its own
    seed on its own copy of the message and Context, as if sent alone, so a
    ClientApp that changes what it was sent changes nothing for the next node.
    """
    messages = [message for message, _, _ in calls]
    contexts = [context for _, context, _ in calls]
    function = cohort_function(client_app, messages[0].metadata.message_type) if len(calls) > 1 else None
    replies = None
    if function is not None:
        token = _FOLDING.set(weighting_key)
        try:
            replies = seeded_call(calls[0][2], function, messages, contexts)
        finally:
            _FOLDING.reset(token)
    if isinstance(replies, Message):
        _check_mean(function, replies, weighting_key)
        return [(replies, contexts[0].state)] + [(None, context.state) for context in contexts[1:]]
    if replies is None:
        copies = [pickle.loads(pickle.dumps(call, protocol=5)) for call in calls]
        contexts = [context for _, context, _ in copies]
        replies = [seeded_call(seed, client_app, message, context) for message, context, seed in copies]
    replies = list(replies)
    if len(replies) != len(messages):
        raise ValueError(
            f"the cohort function {function.__qualname__} returned {len(replies)} replies for {len(messages)} "
            "messages: it must return one per message, in order, or None"
        )
    combined = combine(messages[0], replies, weighting_key) if weighting_key is not None and len(replies) > 1 else None
    if combined is not None:
        replies = [combined] + [None] * (len(replies) - 1)
    return [(reply, context.state) for reply, context in zip(replies, contexts)]


def _check_mean(function: Callable, reply: Message, weighting_key: str | None) -> None:
    """Raise ValueError unless `reply`, a cohort function's one reply, can stand for its cohort's replies folded."""
    if weighting_key is None:
        raise ValueError(
            f"the cohort function {function.__qualname__} returned one Message while fl_core.cohorts.folding() "
            "was None: return one reply per message, in order"
        )
    records = [] if reply.has_error() else list(reply.content.metric_records.values())
    weight = records[0].get(weighting_key) if len(records) == 1 else None
    if not _is_weight(weight) or not weight > 0:
        raise ValueError(
            f"the cohort function {function.__qualname__} returned a folded reply without one MetricRecord holding "
            f"a positive {weighting_key!r} (the sum of its replies' weights)"
        )


def combine(message: Message, replies: list[Message], weighting_key: str) -> Message | None:
    """The cohort's replies as one reply to `message` (its first): Flower's weighted mean of their arrays and
    metrics (what FedAvg computes of them), with the weights' sum as `weighting_key`.

    Each reply must hold what FedAvg aggregates and nothing else: one
    MetricRecord with a numeric `weighting_key`, and at most one ArrayRecord,
    with the same record names, metric names and list lengths, and array
    names, shapes and dtypes in every reply. None when the replies have
    another shape or an error, or weigh nothing: they then go to the server
    one by one.
    """
    if any(reply.has_error() for reply in replies):
        return None
    first = replies[0].content
    metric_keys, array_keys = list(first.metric_records), list(first.array_records)
    if len(metric_keys) != 1 or len(array_keys) > 1 or len(first) != 1 + len(array_keys):
        return None
    [metrics_key] = metric_keys
    shape = _shape(first, metrics_key, array_keys)
    if shape is None or any(_shape(reply.content, metrics_key, array_keys) != shape for reply in replies[1:]):
        return None
    weights = [reply.content[metrics_key].get(weighting_key) for reply in replies]
    if not all(_is_weight(w) for w in weights) or not sum(weights):
        return None
    contents = [reply.content for reply in replies]
    metrics = aggregate_metricrecords(contents, weighting_key)  # leaves the weighting key out
    metrics[weighting_key] = sum(weights)
    content = RecordDict({metrics_key: metrics})
    if array_keys:
        content[array_keys[0]] = aggregate_arrayrecords(contents, weighting_key)
    return Message(content, reply_to=message)


def _is_weight(value) -> bool:
    """Whether a metric can weigh a reply: a number (not a bool), not negative."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _shape(content: RecordDict, metrics_key: str, array_keys: list[str]) -> tuple | None:
    """What must match for replies to be averaged: record names, metric names and list lengths, array names, shapes
    and dtypes. None when the records are not of the kinds named."""
    metrics = content.get(metrics_key)
    if not isinstance(metrics, MetricRecord) or any(not isinstance(content.get(k), ArrayRecord) for k in array_keys):
        return None
    return (
        sorted(content.keys()),
        sorted((name, len(v) if isinstance(v, list) else -1) for name, v in metrics.items()),
        [[(name, tuple(a.shape), a.dtype) for name, a in content[k].items()] for k in array_keys],
    )
