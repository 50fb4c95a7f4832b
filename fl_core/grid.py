"""A Flower `Grid` over the Ray worker pool: what a ServerApp and its strategy talk to under fedsweep.

Flower's strategies use only `get_node_ids()` and `send_and_receive()`; the
other abstract methods are implemented as Flower's in-memory grid does. The
grid keeps every node's `Context` (node config with `partition-id` and
`num-partitions`, the run config, and `state`) in the driver and sends it with
each message, so a node's state follows it to whichever worker runs it, and a
checkpoint can hold it.

A phase's messages are split into cohorts by their order alone (one message
each, unless the app has a cohort function for their type: fl_core.cohorts),
and the cohorts go to the workers in groups, one Ray call per group (see
pool.py), balanced by each node's num-examples in its last reply of that
message type, so that the phase does not wait on a worker that drew the large
clients. Replies come back in the order the messages were sent, so
aggregation does not depend on which worker ran or finished first. While the
round loop says the strategy aggregates a weighted mean of the replies
(`combining`), a cohort's replies come back as one, their mean, and
`nodes_in` says how many nodes a reply stands for.

Faults: the pool retries a failed call (the ClientApp raised, its worker died,
it timed out) with the same inputs; every failed attempt is reported on stderr
(node, round, what happened, on which worker; the traceback the first time). A
call whose retries are spent aborts the run (ClientAppError), or, with
`on_client_failure="drop"`, becomes an error reply, as Flower's engine makes
one: Flower's strategies aggregate the other replies (a cohort is first run
again node by node, so that only the node that fails alone is dropped). A
phase of a round whose share of replies falls below `min_reply_share` fails
the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fl_core.cohorts import cohort_function, split
from fl_core.failures import CallFailure, ClientAppError, FailureReporter
from fl_core.seeding import derive_seed, message_phase

NODE_ID_OFFSET = 1000  # node ids are NODE_ID_OFFSET + partition-id (Flower's server itself is node 1)


# Flower's error code for a dropped call, by what its last attempt did.
DROPPED_CODES = {
    "raised": ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
    "worker died": ErrorCode.CLIENT_APP_CRASHED,
    "timed out": ErrorCode.REPLY_MESSAGE_UNAVAILABLE,
}


def message_round(message: Message) -> int | None:
    """The `server-round` a strategy put in the message's config, if any."""
    if not message.has_content():
        return None
    for record in message.content.config_records.values():
        if "server-round" in record:
            return int(record["server-round"])
    return None


class RayGrid(Grid):
    """Sends messages to the ClientApps hosted by a `WorkerPool`; holds the nodes' Context states."""

    def __init__(
        self,
        pool,
        *,
        num_nodes: int,
        run_config: dict,
        seed: int,
        run_id: int,
        node_states: dict[int, RecordDict] | None = None,
        on_client_failure: str = "abort",
        min_reply_share: float = 0.5,
        client_app=None,
        cohort_size: int = 1,
    ) -> None:
        """Nodes NODE_ID_OFFSET .. +num_nodes-1; `node_states` restores states a checkpoint held.

        `client_app` is the app's ClientApp as imported here, whose cohort
        functions (fl_core.cohorts) say which phases go in cohorts of up to
        `cohort_size` messages.
        """
        self.pool = pool
        self.client_app, self.cohort_size = client_app, cohort_size
        self.seed = seed
        self.on_client_failure = on_client_failure
        self.min_reply_share = min_reply_share
        self.run_in_progress = None  # the fedsweep run this grid serves (runner.RunInProgress), set by run_app
        self._run = Run.create_empty(run_id)
        self.node_ids = [NODE_ID_OFFSET + p for p in range(num_nodes)]
        self.run_id, self.run_config = run_id, run_config
        # Only states that hold something: a node's Context is made for each call (`context`), so that nodes that
        # keep no state cost no memory or start-up time (bench/README.md, "Contexts made per call").
        self._states = {node_id: state for node_id, state in (node_states or {}).items() if len(state) > 0}
        self.listeners: list[Callable[[list[Message], list[Message], float], None]] = []
        self._pushed: dict[str, Message] = {}
        self._replies: dict[str, Message] = {}
        self._sent = 0
        self._sizes: dict[tuple[int, str], float] = {}  # (node, message type) -> num-examples of its last reply
        self.weighting_key: str | None = None  # set (by `combining`) while a strategy's phase may fold replies
        self._stands_for: dict[str, int] = {}  # reply message id -> nodes whose replies it holds, where more than one

    # -- Grid API ---------------------------------------------------------------------------

    def set_run(self, run: Run) -> None:
        """Set the run this grid operates in."""
        self._run = run

    @property
    def run(self) -> Run:
        """The run this grid operates in."""
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        """A new message (Flower deprecates this in favour of the `Message` constructor)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        """Every node, in a stable order."""
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Queue messages for their nodes; returns their ids (they run when pulled)."""
        ids = []
        for message in messages:
            if not NODE_ID_OFFSET <= message.metadata.dst_node_id < NODE_ID_OFFSET + len(self.node_ids):
                raise ValueError(f"message for node {message.metadata.dst_node_id}, which does not exist in this run")
            self._sent += 1
            message_id = f"m{self._sent}"
            message.metadata.__dict__["_message_id"] = message_id  # as Flower's in-memory grid sets it
            self._pushed[message_id] = message
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Replies to the given messages, running those not run yet (all at once, on the pool)."""
        wanted = list(message_ids)
        to_run = [i for i in wanted if i in self._pushed]
        if to_run:
            self._execute(to_run)
        return [self._replies.pop(i) for i in wanted if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Run every message on the pool and return the replies in the order the messages came."""
        self.pool.wait_ready()  # worker start-up is not part of the first call's time
        t0 = time.perf_counter()
        messages = list(messages)
        replies = self.pull_messages(self.push_messages(messages))
        seconds = time.perf_counter() - t0
        for listener in self.listeners:
            listener(messages, replies, seconds)
        return replies

    # -- fedsweep ---------------------------------------------------------------------------

    @contextmanager
    def combining(self, weighting_key: str | None):
        """While in it, a cohort's replies come back as one (fl_core.cohorts.combine), weighted by `weighting_key`;
        None changes nothing. For a strategy that aggregates a weighted mean of the replies only
        (fl_core.strategies.mean_weighting_key): others, and fedsweep's own per-node evaluation, see every reply."""
        self.weighting_key = weighting_key
        try:
            yield
        finally:
            self.weighting_key = None

    def nodes_in(self, reply: Message) -> int:
        """How many nodes' replies `reply` holds: 1, or a cohort's number for the replies `combining` folded."""
        return self._stands_for.get(reply.metadata.message_id, 1)

    @property
    def failed_attempts(self) -> int:
        """Calls run again after a fault, over the run (rounds report their share)."""
        return self.pool.retried

    def node_states(self) -> dict[int, RecordDict]:
        """Every node's Context state that holds something (what a checkpoint keeps)."""
        return dict(self._states)

    def context(self, node_id: int) -> Context:
        """The node's Context as a ClientApp gets it: its state (empty if it holds none) and the run config."""
        return Context(
            run_id=self.run_id,
            node_id=node_id,
            node_config={"partition-id": node_id - NODE_ID_OFFSET, "num-partitions": len(self.node_ids)},
            state=self._states.get(node_id, RecordDict()),
            run_config=self.run_config,
        )

    def call_seed(self, message: Message) -> int:
        """Seed of the global generators for one ClientApp call: (seed, round, node, message type)."""
        server_round = message_round(message)
        if server_round is None:  # no round in the message: its position in the run keys it
            server_round = 1_000_000 + self._sent
        return derive_seed(
            self.seed, server_round, message.metadata.dst_node_id, message_phase(message.metadata.message_type)
        )

    def cohorts_of(self, messages: list[Message]) -> list[list[int]]:
        """The phase's messages (their indices) in cohorts: fl_core.cohorts.split by message order alone.

        Cohorts of one unless --cohort-size is above 1, every message is of
        one type and the app has a cohort function for it.
        """
        types = {m.metadata.message_type for m in messages}
        grouped = self.cohort_size > 1 and len(types) == 1 and cohort_function(self.client_app, *types) is not None
        return split(len(messages), self.cohort_size if grouped else 1)

    def _execute(self, message_ids: list[str]) -> None:
        """Run the pushed messages on the pool; store replies and node states, applying the failure policy."""
        messages = [self._pushed.pop(i) for i in message_ids]
        self._stands_for = {}  # of the last phase's replies only
        calls = [(m, self.context(m.metadata.dst_node_id), self.call_seed(m)) for m in messages]
        groups = self.cohorts_of(messages)
        results = self._run_cohorts(messages, calls, groups)
        if self.on_client_failure == "drop":
            # A cohort that failed for good is run again node by node: only the node that fails alone is dropped.
            failed = [
                i for g, result in zip(groups, results) if isinstance(result, CallFailure) and len(g) > 1 for i in g
            ]
            if failed:
                alone = self._run_cohorts(messages, calls, [[i] for i in failed])
                results += alone
                groups += [[i] for i in failed]
        outcomes: dict[int, object] = {}
        folded: dict[int, list[int]] = {}  # message index -> the cohort whose replies its reply holds
        for group, result in zip(groups, results):
            if isinstance(result, CallFailure) and self.on_client_failure != "drop":
                raise result.error(f"the ClientApp of {describe_nodes([messages[i] for i in group])}")
            for position, i in enumerate(group):
                outcomes[i] = result if isinstance(result, CallFailure) else result[position]
            if not isinstance(result, CallFailure) and len(group) > 1 and result[1][0] is None:
                folded[group[0]] = group
        ok = 0
        for i, message in enumerate(messages):
            result = outcomes[i]
            node_id = message.metadata.dst_node_id
            if isinstance(result, CallFailure):
                reply = Message(
                    Error(code=DROPPED_CODES[result.kind], reason=f"{result.kind}: {result.detail}"), reply_to=message
                )
            else:
                reply, state = result
                if len(state) > 0:
                    self._states[node_id] = state
                else:
                    self._states.pop(node_id, None)
                if reply is None:  # folded into its cohort's first reply
                    continue
                nodes = folded.get(i, [i])
                ok += 0 if reply.has_error() else len(nodes)
                size = num_examples(reply)
                if size is not None:  # a folded cohort's, shared out evenly: only the balance of the calls uses it
                    for j in nodes:
                        self._sizes[_work_key(messages[j])] = size / len(nodes)
            reply.metadata.__dict__["_message_id"] = f"r{message.metadata.message_id}"
            if i in folded:
                self._stands_for[reply.metadata.message_id] = len(folded[i])
            self._replies[message.metadata.message_id] = reply
        if ok < self.min_reply_share * len(messages):
            raise ClientAppError(
                f"only {ok} of {len(messages)} clients replied to {describe(messages[0], node=False)}, "
                f"fewer than --min-reply-share {self.min_reply_share:g} of them: the run stops"
            )

    def _run_cohorts(self, messages: list[Message], calls: list[tuple], groups: list[list[int]]) -> list:
        """The pool's result for each cohort (indices into `calls`): its [(reply, state), ...] or a CallFailure."""
        if self.on_client_failure != "drop":
            final = "the run stops after {attempts} attempt(s) (--on-client-failure abort)"
        else:
            final = {
                False: "dropped from the round after {attempts} attempt(s) (--on-client-failure drop)",
                True: "its nodes run again one by one after {attempts} attempt(s)",
            }
        report = FailureReporter(
            "client",
            lambda c: describe_nodes([messages[i] for i in groups[c]]),
            self.pool.retries,
            final if isinstance(final, str) else lambda c: final[len(groups[c]) > 1],
        )
        sizes = [self._sizes.get(_work_key(m)) for m in messages]
        known = [size for size in sizes if size is not None]
        mean = sum(known) / len(known) if known else None
        # A cohort's expected work: its nodes' sizes, an unknown one counted as the known mean; None if none is known.
        work = [
            None if all(sizes[i] is None for i in g) else sum(mean if sizes[i] is None else sizes[i] for i in g)
            for g in groups
        ]
        return self.pool.run(
            [[calls[i] for i in g] for g in groups],
            report,
            common=(self.weighting_key,),
            sizes=work,
            spans=[len(g) for g in groups],
        )


def num_examples(reply: Message) -> float | None:
    """The `num-examples` of a reply's first MetricRecord (Flower's weighting key), if it has one."""
    if reply.has_error():
        return None
    for record in reply.content.metric_records.values():
        value = record.get("num-examples")
        return float(value) if isinstance(value, (int, float)) else None
    return None


def _work_key(message: Message) -> tuple[int, str]:
    """What a call's size is remembered by: its node and message type (a node trains and validates on different
    splits)."""
    return message.metadata.dst_node_id, message.metadata.message_type


def describe_nodes(messages: list[Message]) -> str:
    """`describe` of one message; of several (a cohort): 'nodes N1, N2 (partition-ids P1, P2), round R (train)'."""
    if len(messages) == 1:
        return describe(messages[0])
    nodes = [m.metadata.dst_node_id for m in messages]
    return (
        f"nodes {', '.join(map(str, nodes))} (partition-ids {', '.join(str(n - NODE_ID_OFFSET) for n in nodes)}), "
        f"{describe(messages[0], node=False)}"
    )


def describe(message: Message, node: bool = True) -> str:
    """'node N (partition-id P), round R (train)' for reports; without the node with node=False."""
    server_round = message_round(message)
    where = f"round {server_round}" if server_round is not None else "a message"
    where += f" ({message.metadata.message_type})"
    if not node:
        return where
    node_id = message.metadata.dst_node_id
    return f"node {node_id} (partition-id {node_id - NODE_ID_OFFSET}), {where}"
