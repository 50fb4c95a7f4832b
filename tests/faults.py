"""Fault injection for test_faults.py and the slow test_fault_runs.py: the built-in app with calls that fail on cue.

`faulty_app(folder)` writes an app folder that is the built-in CIFAR-10 app
(same run config, same results) whose ClientApp, its cohort function (a fault
of any node of a cohort strikes the cohort's call), and whose central
evaluation's shard function, first read two extra run-config keys:

* `fault-plan`: JSON, a list of faults `{"kind", "round", "node", "phase",
  "times", "delay"}` (node = partition-id, phase = "train" or "evaluate"; or
  phase "central" and node = the central evaluation's shard).
  `kind` is what the call does, `times` how many of its attempts (default 1):
  - "raise": run the client's work, then raise (the worker's process state has
    moved on, as after a real failure mid-call);
  - "die": SIGKILL its own worker process `delay` seconds into the work
    (default 0.05), i.e. mid-fit;
  - "hang": sleep for an hour before the work (a --client-timeout ends it).
* `fault-dir`: a folder where each faulted attempt leaves a marker file, so
  that attempts are counted across worker processes and restarts.

With the default `fault-plan = "[]"` the app is the built-in app: a faulty
run and a fault-free run differ only in those two keys, which no result reads.
"""

from __future__ import annotations

import json
import os
import re

CLIENT_MODULE = "faulty_client"
CLIENT_CODE = '''"""The built-in ClientApp behind a fault injector (tests/faults.py writes this file)."""

import json
import os
import signal
import threading
import time

import fl_core
from cifar10_app.client_app import app as inner
from cifar10_app.client_app import train_cohort_fn
from flwr.clientapp import ClientApp

app = ClientApp()


def _fault_due(run_config, server_round, node, phase):
    """The fault this attempt must show, or None; counts attempts in fault-dir."""
    plan = json.loads(run_config.get("fault-plan", "[]"))
    for i, fault in enumerate(plan):
        if (fault["round"], fault["node"], fault.get("phase", "train")) != (server_round, node, phase):
            continue
        for attempt in range(int(fault.get("times", 1))):
            marker = os.path.join(run_config["fault-dir"], f"fault{i}-attempt{attempt}")
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            return fault
    return None


def faulty(work, run_config, server_round, node, phase):
    """work(), failing as the plan says for (round, node, phase)."""
    fault = _fault_due(run_config, server_round, node, phase)
    kind = fault["kind"] if fault else None
    if kind == "hang":
        time.sleep(3600)
    if kind == "die":
        threading.Timer(float(fault.get("delay", 0.05)), os.kill, (os.getpid(), signal.SIGKILL)).start()
    result = work()
    if kind == "die":
        time.sleep(3600)  # the work ended before the timer: die anyway, mid-call
    if kind == "raise":
        raise RuntimeError(f"injected fault: round {fault['round']}, node {fault['node']}, {phase}")
    return result


def _run(message, context, phase):
    server_round = int(message.content.config_records["config"]["server-round"])
    return faulty(lambda: inner(message, context), context.run_config, server_round,
                  int(context.node_config["partition-id"]), phase)


@app.train()
def train(message, context):
    return _run(message, context, "train")


@fl_core.cohort(app, "train")
def train_cohort(messages, contexts):
    """The built-in cohort training; the fault due for any of its nodes strikes the whole cohort's call."""
    run_config = contexts[0].run_config
    server_round = int(messages[0].content.config_records["config"]["server-round"])
    work = lambda: train_cohort_fn(messages, contexts)
    for context in contexts:
        node = int(context.node_config["partition-id"])
        work = (lambda inner_work, node: lambda: faulty(inner_work, run_config, server_round, node, "train"))(
            work, node)
    return work()


@app.evaluate()
def evaluate(message, context):
    return _run(message, context, "evaluate")
'''
SERVER_MODULE = "faulty_server"
SERVER_CODE = '''"""The built-in ServerApp whose central evaluation shards fail on cue (written by tests/faults.py)."""

import cifar10_app.server_app as builtin
from flwr.serverapp import ServerApp

from faulty_client import faulty

app = ServerApp()
_builtin_shard = builtin.evaluate_test_shard


def evaluate_test_shard(server_round, arrays, shard, **options):
    """The built-in shard evaluation, failing as the plan says for (round, node = shard, phase "central")."""
    return faulty(lambda: _builtin_shard(server_round, arrays, shard, **options), options["run_config"],
                  server_round, shard, "central")


@app.main()
def main(grid, context):
    """The built-in ServerApp, its central evaluation handing the workers this module's shard function."""
    builtin.evaluate_test_shard = evaluate_test_shard  # for this run only: other apps of the process keep theirs
    try:
        builtin.main(grid, context)
    finally:
        builtin.evaluate_test_shard = _builtin_shard
'''


def faulty_app(folder: str) -> str:
    """Write the faulty app into `folder` (created); returns the folder."""
    import cifar10_app

    builtin = os.path.join(os.path.dirname(os.path.dirname(cifar10_app.__file__)), "pyproject.toml")
    with open(builtin) as f:
        text = f.read()
    text = text.replace('name = "fedsweep-cifar10"', 'name = "fedsweep-cifar10-faults"', 1)
    text = re.sub(r'clientapp = "[^"]+"', f'clientapp = "{CLIENT_MODULE}:app"', text, count=1)
    text = re.sub(r'serverapp = "[^"]+"', f'serverapp = "{SERVER_MODULE}:app"', text, count=1)
    text = text.replace("[tool.flwr.app.config]\n", '[tool.flwr.app.config]\nfault-plan = "[]"\nfault-dir = ""\n', 1)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "pyproject.toml"), "w") as f:
        f.write(text)
    for module, code in ((CLIENT_MODULE, CLIENT_CODE), (SERVER_MODULE, SERVER_CODE)):
        with open(os.path.join(folder, module + ".py"), "w") as f:
            f.write(code)
    return folder


def sampled_points(seed: int, run_config: dict, num_nodes: int, rounds: int) -> list[tuple[int, str, int]]:
    """(round, phase, partition-id) of every client call a run makes: the nodes its strategy samples.

    Flower's strategies draw the train sample, then the evaluate sample, in each
    round; fedsweep keys those draws by (seed, round, draw): NodeSampler redoes
    them, so a fault planned at one of these points is sure to be hit.
    """
    from fl_core.grid import NODE_ID_OFFSET
    from fl_core.seeding import NodeSampler
    from fl_core.settings import sampled_nodes

    node_ids = [NODE_ID_OFFSET + p for p in range(num_nodes)]
    points = []
    for server_round in range(1, rounds + 1):
        sampler = NodeSampler(seed)
        sampler.start_round(server_round)
        for phase in ("train", "evaluate"):
            for node in sampler.sample(node_ids, sampled_nodes(run_config, num_nodes, phase)):
                points.append((server_round, phase, node - NODE_ID_OFFSET))
    return points


def plan(*faults: dict) -> str:
    """The `fault-plan` run-config value of `faults`."""
    return json.dumps(list(faults))
