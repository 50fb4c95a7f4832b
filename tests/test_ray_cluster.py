"""Sweeps on real Ray clusters started with `ray start`: jobs, two nodes, a node lost mid-sweep.

Every test here talks to real Ray processes, as a user would:

* a head started with `ray start --head` (loopback, its own ports and temp
  dir, token authentication explicitly off), shared by the module;
* sweeps submitted with the documented `ray job submit ... -- python
  tune_search.py ...`;
* a second node joined with `ray start --address`, which must run the clients;
* that node's raylet killed mid-sweep: without retries the job fails at once
  with the trial listed as errored; with retries and a replacement node, every
  trial finishes from its checkpoints (never a hang);
* a node holding one of the client workers of `python -m fl_core --address`
  (a run alone on the cluster) killed: the run goes on with the others;
* a head with token authentication: clients without the token are refused.

Only processes started here are ever signalled (never `ray stop`, which stops
every Ray on the machine). Each `ray start` runs in a session of its own
(`start_new_session`); Ray's daemons keep that session id after `ray start`
exits, and everything else of that node (workers, job drivers, which Ray puts
in sessions of their own) descends from one of them. That set is found in
/proc and nothing else: process titles like `ray::IDLE` overwrite the
command line and environment that /proc shows, so neither can be relied on.

Takes about 3.5 minutes on 2 cores. Deselect with `-m "not cluster"`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pandas as pd
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
# The `ray` of this interpreter's environment: the head then runs jobs with this environment's `python`.
RAY = os.path.join(BIN, "ray")

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds Ray's processes through /proc"),
    pytest.mark.skipif(not os.path.exists(RAY), reason=f"no `ray` command next to {sys.executable}"),
]
# The tiny sweep of tests/test_tune_search.py: synthetic data, 4 clients, 2 rounds; 2 trials with the grid.
TINY = [
    "--set", "dataset=synthetic", "--set", "synthetic-size=600", "--set", "pool_size=4",
    "--set", "min-train-nodes=1", "--set", "min-evaluate-nodes=1", "--set", "eval-batch-size=200",
    "--set", "num-server-rounds=2",
]
TWO_TRIALS = ["--grid", "local-epochs=1,2"]
HOOKED = "tests/hooked_sweep.py"  # tune_search.py with the round log (see round_log_env), as a job entrypoint
START_TIMEOUT_S = 120  # one `ray start` (about 10 s for a head here)
JOB_TIMEOUT_S = 240  # one tiny sweep as a job (about 20 s here)


# ---------------------------------------------------------------------------
# Processes, found through /proc


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, parent pid, session id, start time in clock ticks) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[3]), int(fields[19])


def _all_processes() -> dict[int, tuple[str, int, int, int]]:
    """_stat of every live process."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _stat(int(entry))
            if info is not None:
                table[int(entry)] = info
    return table


def session_processes(session: int, since_ticks: int) -> set[int]:
    """Live processes of session `session` started at or after `since_ticks`, and all their descendants.

    Zombies are left out: they hold no resources and their parent reaps them.
    """
    table = {pid: info for pid, info in _all_processes().items() if info[0] != "Z"}
    found = {pid for pid, (_, _, sid, start) in table.items() if sid == session and start >= since_ticks}
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def cmdline(pid: int) -> list[str]:
    """The command line of a process ([] if gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return []


def terminate(pids: set[int], grace_s: float = 10) -> set[int]:
    """SIGTERM `pids`, SIGKILL those alive after `grace_s`; returns those still alive 10 s after that."""

    def alive(candidates):
        return {pid for pid in candidates if (_stat(pid) or ("Z",))[0] != "Z"}

    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10)):
        for pid in alive(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.time() + wait_s
        while alive(pids) and time.time() < deadline:
            time.sleep(0.2)
    return alive(pids)


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on every interface right now (the OS picks them)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# ---------------------------------------------------------------------------
# Nodes


def ray_env(**extra: str) -> dict:
    """Environment for `ray start` and for clients.

    RAY_AUTH_MODE is set explicitly: otherwise Ray 2.60 switches token
    authentication on whenever ~/.ray/auth_token happens to exist, and clients
    without the token are refused. PATH starts with this environment's bin, so
    a job's `python` is the project's. Address variables are dropped: Ray's
    clients let them override the address they are given.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
               PATH=BIN + os.pathsep + env.get("PATH", ""))
    env.update(extra)
    return env


class RayNode:
    """One node started with `ray start`, in a session of its own; `stop()` ends exactly its processes."""

    def __init__(self, name: str, args: list[str], env: dict, node_manager_port: int) -> None:
        """Start the node: `ray start ARGS` with its own temp dir; raises with the log if it fails."""
        self.name = name
        self.node_manager_port = node_manager_port
        self.temp_dir = tempfile.mkdtemp(prefix=f"fsc{name}", dir="/tmp")  # short: socket paths <= 107 bytes
        self.log_path = os.path.join(self.temp_dir, "ray_start.log")
        self.since = _stat(os.getpid())[3]  # no process of this node is older than the test process
        command = [RAY, "start", *args, "--temp-dir", self.temp_dir, "--disable-usage-stats",
                   "--object-store-memory", str(200 * 1024 * 1024), "--min-worker-port", "0", "--max-worker-port", "0"]
        with open(self.log_path, "w") as log:
            proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.session = proc.pid
        try:
            code = proc.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = "timeout"
        if code != 0:
            tail = self.log()[-3000:]  # before stop() removes the temp dir
            self.stop()
            raise RuntimeError(f"`{shlex.join(command)}` failed ({code}):\n{tail}")

    def log(self) -> str:
        """What `ray start` printed."""
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def processes(self) -> set[int]:
        """Every live process of this node (daemons, workers, job drivers started on it)."""
        return session_processes(self.session, self.since)

    def raylet_pid(self) -> int:
        """The pid of this node's raylet (told apart by its node manager port)."""
        flag = f"--node_manager_port={self.node_manager_port}"
        pids = [pid for pid in self.processes() if os.path.basename((cmdline(pid) or [""])[0]) == "raylet"
                and flag in cmdline(pid)]
        assert len(pids) == 1, f"expected one raylet of node {self.name}, found {pids}"
        return pids[0]

    @property
    def node_id(self) -> str:
        """Ray's id of this node (from its raylet's command line)."""
        for arg in cmdline(self.raylet_pid()):
            if arg.startswith("--node_id="):
                return arg.split("=", 1)[1]
        raise AssertionError(f"no --node_id on the raylet of node {self.name}")

    def stop(self) -> set[int]:
        """End this node's processes; remove its temp dir. Returns processes still alive after SIGKILL.

        In the order that lets each exit at once on SIGTERM (all at once, the GCS
        and the raylet each wait ~10 s for the other): the raylet first (it tells
        the GCS that the node is gone), then all but the GCS, then the rest.
        Processes are listed before anything is signalled: a job driver is no
        longer found once its job supervisor has died.
        """
        seen = self.processes()

        def named(binary: str) -> set[int]:
            return {pid for pid in seen if os.path.basename((cmdline(pid) or [""])[0]) == binary}

        terminate(named("raylet"))
        seen |= self.processes()
        terminate(seen - named("gcs_server"))
        left = terminate(seen | self.processes())
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return left


class Head(RayNode):
    """`ray start --head` with its own ports; dashboard and Jobs API on 127.0.0.1 only.

    Ray replaces `--node-ip-address 127.0.0.1` by this machine's own address for
    the node's identity (its GCS listens on every interface); clients here use
    127.0.0.1 throughout.
    """

    def __init__(self, num_cpus: int, env: dict, num_gpus: int = 0) -> None:
        """Start the head (with `num_gpus` logical GPUs: Ray hands out their ids with none present) and wait until
        its Jobs API answers."""
        (self.gcs_port, self.dashboard_port, agent_http, agent_grpc, client_server, node_manager, object_manager,
         metrics, runtime_env_agent) = free_ports(9)
        self.env = env
        args = ["--head", "--node-ip-address", "127.0.0.1", "--port", str(self.gcs_port),
                "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                "--dashboard-port", str(self.dashboard_port),
                "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
                "--ray-client-server-port", str(client_server), "--node-manager-port", str(node_manager),
                "--object-manager-port", str(object_manager), "--metrics-export-port", str(metrics),
                "--runtime-env-agent-port", str(runtime_env_agent), "--num-cpus", str(num_cpus),
                "--num-gpus", str(num_gpus)]
        super().__init__("h", args, env, node_manager)
        self.url = f"http://127.0.0.1:{self.dashboard_port}"
        # Jobs are handed to the head's dashboard agent: wait for the dashboard and the agent both.
        deadline = time.time() + 60
        while not (self._answers("/api/version") and _port_open(agent_http)):
            if time.time() > deadline:
                tail = self.log()[-3000:]
                self.stop()
                raise RuntimeError(f"the dashboard at {self.url} did not come up:\n{tail}")
            time.sleep(0.5)

    def _request(self, path: str) -> urllib.request.Request:
        """A GET of a dashboard path, with the cluster's token when it has one."""
        request = urllib.request.Request(self.url + path)
        if self.env.get("RAY_AUTH_MODE") == "token":
            request.add_header("Authorization", f"Bearer {self.env['RAY_AUTH_TOKEN']}")
        return request

    def _answers(self, path: str) -> bool:
        """True if the dashboard answers `path` with 200."""
        try:
            with urllib.request.urlopen(self._request(path), timeout=5) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def get(self, path: str, **query) -> dict:
        """GET a dashboard REST path (state API, jobs) and return its JSON."""
        query_string = "?" + urllib.parse.urlencode(query, doseq=True) if query else ""
        with urllib.request.urlopen(self._request(path + query_string), timeout=30) as response:
            return json.load(response)

    def actors(self, class_name: str, job_id: str) -> list[dict]:
        """Actors of `class_name` created by job `job_id` (hex), alive or dead, with their node ids."""
        reply = self.get("/api/v0/actors", detail="1", limit="10000", filter_keys=["class_name", "job_id"],
                         filter_predicates=["=", "="], filter_values=[class_name, job_id])
        return reply["data"]["result"]["result"]

    def job_id(self, submission_id: str) -> str:
        """The Ray job id (hex) of a submitted job."""
        return self.get(f"/api/jobs/{submission_id}")["job_id"]

    def alive_node_ids(self) -> set[str]:
        """Ids of the cluster's live nodes."""
        reply = self.get("/api/v0/nodes", limit="1000", filter_keys="state", filter_predicates="=",
                         filter_values="ALIVE")
        return {node["node_id"] for node in reply["data"]["result"]["result"]}

    def add_node(self, name: str, num_cpus: int) -> RayNode:
        """Join a second node on this machine (`ray start --address`), with ports and a temp dir of its own."""
        agent_http, agent_grpc, node_manager, object_manager, metrics, runtime_env_agent = free_ports(6)
        args = ["--address", f"127.0.0.1:{self.gcs_port}", "--node-ip-address", "127.0.0.1",
                "--num-cpus", str(num_cpus), "--node-manager-port", str(node_manager),
                "--object-manager-port", str(object_manager), "--dashboard-agent-listen-port", str(agent_http),
                "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
                "--runtime-env-agent-port", str(runtime_env_agent)]
        node = RayNode(name, args, self.env, node_manager)
        deadline = time.time() + 60
        while node.node_id not in self.alive_node_ids():
            if time.time() > deadline:
                tail = node.log()[-3000:]
                node.stop()
                raise RuntimeError(f"node {name} did not join the cluster:\n{tail}")
            time.sleep(0.5)
        return node


def _port_open(port: int) -> bool:
    """True if something accepts TCP on 127.0.0.1:`port`."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        return True
    return False


def started(start, what: str):
    """`start()`, once more if it fails: a port found free may be taken by another program before Ray binds it."""
    try:
        return start()
    except RuntimeError as exc:
        print(f"{what} did not start; once more with other ports. {exc}")
        return start()


@contextlib.contextmanager
def extra_node(head: Head, name: str, num_cpus: int):
    """A worker node for the duration of the block; afterwards none of its processes may be left."""
    node = started(lambda: head.add_node(name, num_cpus), f"node {name}")
    node_id = node.node_id
    try:
        yield node
    finally:
        assert node.stop() == set(), f"processes of node {name} survived SIGKILL"
        # Gone from the cluster too (at once after SIGTERM; a killed raylet is noticed by health checks).
        deadline = time.time() + 90
        while node_id in head.alive_node_ids():
            assert time.time() < deadline, f"node {name} still listed as alive 90 s after it was stopped"
            time.sleep(0.5)


@pytest.fixture(scope="module")
def head():
    """A head with 2 CPUs for this module; at the end exactly its processes are stopped, and none may be left."""
    node = started(lambda: Head(num_cpus=2, env=ray_env()), "the head")
    try:
        yield node
    finally:
        assert node.stop() == set(), "processes of the head survived SIGKILL"


# ---------------------------------------------------------------------------
# Submitting sweeps


def sweep_command(storage: str, name: str, *extra: str, script: str = "tune_search.py") -> list[str]:
    """The job's entrypoint: `python tune_search.py` (it joins the cluster through the job's $RAY_ADDRESS).

    script="tests/hooked_sweep.py" runs the same sweep with the test hooks (see round_log_env).
    """
    return ["python", script, "--storage-path", storage, "--name", name, *TINY, *extra]


def ray_job_submit(head: Head, entrypoint: list[str], runtime_env: str = "runtime_env.yaml",
                   submission_id: str | None = None) -> list[str]:
    """The documented submission command line (blocks; exits with the job's status)."""
    ids = ["--submission-id", submission_id] if submission_id else []
    return [RAY, "job", "submit", "--address", head.url, *ids, "--runtime-env", runtime_env,
            "--working-dir", ".", "--", *entrypoint]


def run(command: list[str], env: dict, timeout: float = JOB_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run a client command from the repository root; a command past `timeout` is killed and fails the test."""
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def check_results(experiment: str, trials: int, rounds: int) -> pd.DataFrame:
    """The sweep's report files: `trials` finished trials of `rounds` rounds each, every round once."""
    table = pd.read_csv(os.path.join(experiment, "trials.csv"))
    assert len(table) == trials and set(table["status"]) == {"TERMINATED"}, table
    assert (table["rounds"] == rounds).all(), table
    per_round = pd.read_csv(os.path.join(experiment, "rounds.csv"))
    assert len(per_round) == trials * rounds and not per_round.duplicated(["trial_id", "round"]).any()
    with open(os.path.join(experiment, "best.json")) as f:
        best = json.load(f)
    assert best["trial_id"] in set(table["trial_id"]) and best["rounds"] == rounds
    return table


def _output(result: subprocess.CompletedProcess) -> str:
    """The end of a command's output, for assertion messages."""
    return (result.stdout + result.stderr)[-4000:]


# ---------------------------------------------------------------------------
# Token authentication


def test_token_authentication(tmp_path):
    """A head started with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN: `ray job submit` without that token is refused.

    Ray's own messages name the problem and the remedy; a refused client submits nothing.
    HOME is a fresh folder for the head and the clients, so that no
    ~/.ray/auth_token of the developer is read, and none is written.
    """
    home = str(tmp_path)
    token = secrets.token_hex(32)
    node = started(lambda: Head(num_cpus=1, env=ray_env(HOME=home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)),
                   "the token head")

    def submit(submission_id: str, env: dict) -> subprocess.CompletedProcess:
        return run([RAY, "job", "submit", "--address", node.url, "--submission-id", submission_id, "--",
                    "python", "-c", "print('token accepted')"], env, timeout=120)

    try:
        missing = submit("token-missing", ray_env(HOME=home))  # RAY_AUTH_MODE=disabled: no token sent
        assert missing.returncode == 1, _output(missing)
        assert "Missing authentication token" in missing.stderr and "RAY_AUTH_TOKEN" in missing.stderr
        nowhere = submit("token-nowhere", ray_env(HOME=home, RAY_AUTH_MODE="token"))  # no token file, no variable
        assert nowhere.returncode == 1, _output(nowhere)
        assert "couldn't find an authentication token" in nowhere.stderr
        wrong = submit("token-wrong", ray_env(HOME=home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32)))
        assert wrong.returncode == 1 and "Invalid authentication token" in wrong.stderr, _output(wrong)
        accepted = submit("token-ok", ray_env(HOME=home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))
        assert accepted.returncode == 0 and "token accepted" in accepted.stdout, _output(accepted)
        assert "Job 'token-ok' succeeded" in accepted.stdout
        assert not os.path.exists(os.path.join(home, ".ray", "auth_token"))
        # The token in a file instead (~/.ray/auth_token by default; here RAY_AUTH_TOKEN_PATH).
        token_file = tmp_path / "auth_token"
        token_file.write_text(token)
        listed = run([RAY, "job", "list", "--address", node.url],
                     ray_env(HOME=home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file)), timeout=120)
        assert listed.returncode == 0 and "token-ok" in listed.stdout, _output(listed)
        assert not any(f"token-{name}" in listed.stdout for name in ("missing", "nowhere", "wrong")), listed.stdout
    finally:
        assert node.stop() == set(), "processes of the token head survived SIGKILL"


# ---------------------------------------------------------------------------
# One node: jobs


def test_ray_job_submit_runs_sweep(head, tmp_path):
    """`ray job submit --runtime-env runtime_env.yaml --working-dir . -- python tune_search.py ...` succeeds."""
    storage = str(tmp_path / "results")
    result = run(ray_job_submit(head, sweep_command(storage, "cli", *TWO_TRIALS)), ray_env())
    assert result.returncode == 0, _output(result)
    assert "succeeded" in result.stdout + result.stderr
    check_results(os.path.join(storage, "cli"), trials=2, rounds=2)


# ---------------------------------------------------------------------------
# Two nodes


# The head (2 CPUs) can hold only the trial's own bundle of 2 CPUs (--server-cpus 2); the client bundle
# (1 CPU) must then go to the 1-CPU second node: every client runs there, on data from the head's object store.
TWO_NODE_TRIAL = ["--server-cpus", "2", "--num-client-cpus", "1"]


def test_clients_run_on_second_node(head, tmp_path):
    """A sweep whose client bundles only fit a second node: it finishes, and every client worker ran there."""
    storage = str(tmp_path / "results")
    submission_id = f"fedsweep-two-nodes-{uuid.uuid4().hex[:8]}"
    with extra_node(head, "b", num_cpus=1) as node:
        entrypoint = sweep_command(storage, "two_nodes", *TWO_TRIALS, *TWO_NODE_TRIAL)
        result = run(ray_job_submit(head, entrypoint, submission_id=submission_id), ray_env())
        assert result.returncode == 0, _output(result)
        check_results(os.path.join(storage, "two_nodes"), trials=2, rounds=2)
        job_id = head.job_id(submission_id)
        workers = head.actors("ClientAppWorker", job_id)
        assert len(workers) >= 2, workers  # at least one per trial (K = 1)
        assert {w["node_id"] for w in workers} == {node.node_id}, (workers, node.node_id)
        trainables = head.actors("ImplicitFunc", job_id)  # Tune's actor for a function trainable: the server
        assert trainables and {t["node_id"] for t in trainables} == {head.node_id}, trainables


# ---------------------------------------------------------------------------
# A node lost mid-sweep


def _round_log(path: str) -> list[tuple[str, int]]:
    """(trial id, round) lines written by tests/hooked_sweep.py's round log."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(t, int(r)) for t, r in (line.strip().split(",") for line in f if line.strip())]


def round_log_env(tmp_path, log_path: str) -> str:
    """A copy of runtime_env.yaml that also gives the job's driver FEDSWEEP_TEST_ROUND_LOG; returns its path.

    With it, run the sweep as `python tests/hooked_sweep.py` (hooked_sweep_command).
    """
    with open(os.path.join(REPO, "runtime_env.yaml")) as f:
        runtime_env = yaml.safe_load(f)
    runtime_env.setdefault("env_vars", {})["FEDSWEEP_TEST_ROUND_LOG"] = log_path
    path = tmp_path / "runtime_env.yaml"
    path.write_text(yaml.safe_dump(runtime_env))
    return str(path)


def long_rounds(num_rounds: int) -> list[str]:
    """Trial settings for two nodes with ~0.5-1 s rounds (as in test_tune_search's kill test): a kill lands inside."""
    return [*TWO_NODE_TRIAL, "--set", "synthetic-size=3000", "--set", "fraction-train=0.5",
            "--set", f"num-server-rounds={num_rounds}"]


def kill_raylet_after_first_round(node: RayNode, submit: subprocess.Popen, log_path: str) -> None:
    """Once a trial has finished (and checkpointed) round 1 with its clients on `node`, SIGKILL that node's raylet."""
    deadline = time.time() + 180
    while not _round_log(log_path):
        assert submit.poll() is None, "the job ended before the node could be killed"
        assert time.time() < deadline, "no round finished within 180 s"
        time.sleep(0.1)
    os.kill(node.raylet_pid(), signal.SIGKILL)


def test_node_killed_without_retries_fails_clearly(head, tmp_path):
    """Node lost mid-trial with --max-failures 0: the job ends FAILED at once, the report lists the errored trial."""
    storage = str(tmp_path / "results")
    log_path = str(tmp_path / "rounds.log")
    # One trial only: a second one could never be placed after the loss, and would wait (see the next test).
    entrypoint = sweep_command(storage, "no_retry", "--grid", "local-epochs=1", *long_rounds(6), "--max-failures", "0",
                               script=HOOKED)
    command = ray_job_submit(head, entrypoint, runtime_env=round_log_env(tmp_path, log_path))
    out = open(tmp_path / "submit.log", "w+")
    submit = None
    try:
        with extra_node(head, "e", num_cpus=1) as lost:
            submit = subprocess.Popen(command, cwd=REPO, env=ray_env(), stdout=out, stderr=subprocess.STDOUT)
            kill_raylet_after_first_round(lost, submit, log_path)
            code = submit.wait(timeout=180)
        out.seek(0)
        output = out.read()
        assert code == 1, output[-4000:]  # `ray job submit` exits with the job's status: FAILED
        assert "1 trial(s) failed" in output, output[-4000:]
        table = pd.read_csv(os.path.join(storage, "no_retry", "trials.csv"))
        assert len(table) == 1 and table["status"].tolist() == ["ERROR"], table
        assert 1 <= table["rounds"].iloc[0] < 6, table  # its checkpointed rounds are kept for --resume
    finally:
        if submit is not None and submit.poll() is None:
            submit.kill()
            submit.wait()
        out.close()


def test_node_killed_mid_sweep_then_replaced(head, tmp_path):
    """SIGKILL the clients' node's raylet mid-trial, then a new node joins: every trial ends, every round once.

    Without a node that can hold the client bundle again, Tune keeps the retried trial
    pending ("Ignore this message if the cluster is autoscaling ...") for as long as
    the driver runs: README.md documents that case and its remedy.
    """
    num_rounds = 6
    storage = str(tmp_path / "results")
    log_path = str(tmp_path / "rounds.log")
    submission_id = f"fedsweep-node-loss-{uuid.uuid4().hex[:8]}"
    entrypoint = sweep_command(storage, "node_loss", *TWO_TRIALS, *long_rounds(num_rounds), "--max-failures", "3",
                               script=HOOKED)
    command = ray_job_submit(head, entrypoint, runtime_env=round_log_env(tmp_path, log_path),
                             submission_id=submission_id)
    out = open(tmp_path / "submit.log", "w+")
    submit = None
    try:
        with extra_node(head, "c", num_cpus=1) as lost:
            lost_id = lost.node_id
            submit = subprocess.Popen(command, cwd=REPO, env=ray_env(), stdout=out, stderr=subprocess.STDOUT)
            kill_raylet_after_first_round(lost, submit, log_path)
            before_kill = _round_log(log_path)
        # Node c's other processes are gone too and the GCS has declared it dead; now a new node joins.
        with extra_node(head, "d", num_cpus=1) as replacement:
            code = submit.wait(timeout=300)
            out.seek(0)
            output = out.read()
            assert code == 0, output[-4000:]
            assert "succeeded" in output and "errored" in output  # Tune reports the failed trial, then retries it
            check_results(os.path.join(storage, "node_loss"), trials=2, rounds=num_rounds)
            log = _round_log(log_path)
            for trial_id in {t for t, _ in log}:
                rounds = [r for t, r in log if t == trial_id]
                assert sorted(set(rounds)) == list(range(1, num_rounds + 1)), (trial_id, rounds)
            # The interrupted trial continued after its last checkpoint, not from round 1.
            interrupted = before_kill[-1][0]
            done = [r for t, r in before_kill if t == interrupted]
            redone = [r for t, r in log[len(before_kill):] if t == interrupted]
            assert 2 <= redone[0] <= done[-1] + 1, (done, redone)
            # Client work ran on the lost node, then (after the retry) on the replacement only.
            nodes = {w["node_id"] for w in head.actors("ClientAppWorker", head.job_id(submission_id))}
            assert nodes == {lost_id, replacement.node_id}, nodes
    finally:
        if submit is not None and submit.poll() is None:
            submit.kill()
            submit.wait()
        out.close()


def test_node_lost_under_a_run_alone_the_run_goes_on(head, tmp_path):
    """`python -m fl_core --address HEAD` with a client worker on a node whose raylet is SIGKILLed: it goes on.

    The lost worker's calls run again on the others (same inputs, same
    results); once Ray declares the node dead (some 16 s after the kill here),
    the pool retires that worker and says so; the run ends normally with every
    round. (Inside a Tune trial a lost node stops the trial instead, for Tune's
    retry: the tests above.)
    """
    num_rounds = 30  # about 1 s each: the run outlasts Ray's verdict on the node
    folder = tmp_path / "run"
    command = [sys.executable, "-m", "fl_core", "--address", f"127.0.0.1:{head.gcs_port}", "--dataset", "synthetic",
               "--synthetic-size", "3000", "--pool-size", "4", "--fraction-train", "0.75", "--fraction-evaluate", "0.75",
               "--min-train-nodes", "1", "--min-evaluate-nodes", "1", "--local-epochs", "4",
               "--num-server-rounds", str(num_rounds), "--max-parallel-clients", "3", "--checkpoint-dir", str(folder)]
    err = open(tmp_path / "stderr.log", "w+")
    run_proc = None
    try:
        with extra_node(head, "f", num_cpus=1) as lost:
            run_proc = subprocess.Popen(command, cwd=REPO, env=ray_env(), stdout=subprocess.PIPE, stderr=err,
                                        text=True)
            for line in run_proc.stdout:  # its round lines; the kill once round 1 is done (and checkpointed)
                if line.startswith("round   1/"):
                    break
            reply = head.get("/api/v0/actors", detail="1", limit="10000", filter_keys=["class_name", "state"],
                             filter_predicates=["=", "="], filter_values=["ClientAppWorker", "ALIVE"])
            workers = reply["data"]["result"]["result"]
            assert lost.node_id in {w["node_id"] for w in workers}, workers  # a worker to lose
            os.kill(lost.raylet_pid(), signal.SIGKILL)
            rest = run_proc.stdout.read()
            code = run_proc.wait(timeout=300)
        err.seek(0)
        output = err.read()
        assert code == 0, output[-4000:]
        assert "was lost with its node" in output and "the run goes on with 2 worker(s)" in output, output[-4000:]
        assert f"round  {num_rounds}/{num_rounds}" in rest and "done: " in rest, rest[-2000:]
        from fl_core import load_checkpoint

        assert load_checkpoint(str(folder)).round == num_rounds
    finally:
        if run_proc is not None and run_proc.poll() is None:
            run_proc.kill()
            run_proc.wait()
        err.close()
