"""Fault injection for tests and bench/bench_faults.py: the built-in app with a ClientApp that fails on cue.

`faulty_app(folder)` writes an app folder that is the built-in CIFAR-10 app
(same server app, same run config, same results) whose ClientApp first reads
two extra run-config keys:

* `fault-plan`: JSON, a list of faults `{"kind", "round", "node", "phase",
  "times", "delay"}` (node = partition-id, phase = "train" or "evaluate").
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

from cifar10_app.client_app import app as inner
from flwr.clientapp import ClientApp

app = ClientApp()


def _faults_due(message, context, phase):
    """The fault this attempt of the call must show, or None; counts attempts in fault-dir."""
    plan = json.loads(context.run_config.get("fault-plan", "[]"))
    server_round = int(message.content.config_records["config"]["server-round"])
    node = int(context.node_config["partition-id"])
    for i, fault in enumerate(plan):
        if (fault["round"], fault["node"], fault.get("phase", "train")) != (server_round, node, phase):
            continue
        for attempt in range(int(fault.get("times", 1))):
            marker = os.path.join(context.run_config["fault-dir"], f"fault{i}-attempt{attempt}")
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            return fault
    return None


def _run(message, context, phase):
    fault = _faults_due(message, context, phase)
    kind = fault["kind"] if fault else None
    if kind == "hang":
        time.sleep(3600)
    if kind == "die":
        threading.Timer(float(fault.get("delay", 0.05)), os.kill, (os.getpid(), signal.SIGKILL)).start()
    reply = inner(message, context)
    if kind == "die":
        time.sleep(3600)  # the work ended before the timer: die anyway, mid-call
    if kind == "raise":
        raise RuntimeError(f"injected fault: round {fault['round']}, node {fault['node']}, {phase}")
    return reply


@app.train()
def train(message, context):
    return _run(message, context, "train")


@app.evaluate()
def evaluate(message, context):
    return _run(message, context, "evaluate")
'''


def faulty_app(folder: str) -> str:
    """Write the faulty app into `folder` (created); returns the folder."""
    import cifar10_app

    builtin = os.path.join(os.path.dirname(os.path.dirname(cifar10_app.__file__)), "pyproject.toml")
    with open(builtin) as f:
        text = f.read()
    text = text.replace('name = "fedsweep-cifar10"', 'name = "fedsweep-cifar10-faults"', 1)
    text = re.sub(r'clientapp = "[^"]+"', f'clientapp = "{CLIENT_MODULE}:app"', text, count=1)
    text = text.replace("[tool.flwr.app.config]\n",
                        '[tool.flwr.app.config]\nfault-plan = "[]"\nfault-dir = ""\n', 1)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "pyproject.toml"), "w") as f:
        f.write(text)
    with open(os.path.join(folder, CLIENT_MODULE + ".py"), "w") as f:
        f.write(CLIENT_CODE)
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
