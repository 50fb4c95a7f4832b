"""Real Ray nodes for the cluster tests: processes found through /proc, free ports, `ray start` heads and nodes,
`ray job submit` command lines and the sweep results they leave (tests/test_ray_cluster.py, test_ray_up.py,
test_logical_gpus.py).

Only processes started here are ever signalled (never `ray stop`, which stops
every Ray on the machine). Each `ray start` runs in a session of its own
(`start_new_session`); Ray's daemons keep that session id after `ray start`
exits, and everything else of that node (workers, job drivers, which Ray puts
in sessions of their own) descends from one of them. That set is found in
/proc and nothing else: process titles like `ray::IDLE` overwrite the
command line and environment that /proc shows, so neither can be relied on.
"""

from __future__ import annotations

import contextlib
import json
import os
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

import pandas as pd

from tests.support.sweeps import TINY

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
# The `ray` of this interpreter's environment: the head then runs jobs with this environment's `python`.
RAY = os.path.join(BIN, "ray")

TWO_TRIALS = ["--grid", "local-epochs=1,2"]
HOOKED_JOB = "tests/hooked_sweep.py"  # tune_search.py with the round log (see round_log_env), as a job entrypoint
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
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
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
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
        PATH=BIN + os.pathsep + env.get("PATH", ""),
    )
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
        command = [
            RAY,
            "start",
            *args,
            "--temp-dir",
            self.temp_dir,
            "--disable-usage-stats",
            "--object-store-memory",
            str(200 * 1024 * 1024),
            "--min-worker-port",
            "0",
            "--max-worker-port",
            "0",
        ]
        with open(self.log_path, "w") as log:
            proc = subprocess.Popen(
                command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
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
        pids = [
            pid
            for pid in self.processes()
            if os.path.basename((cmdline(pid) or [""])[0]) == "raylet" and flag in cmdline(pid)
        ]
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
        (
            self.gcs_port,
            self.dashboard_port,
            agent_http,
            agent_grpc,
            client_server,
            node_manager,
            object_manager,
            metrics,
            runtime_env_agent,
        ) = free_ports(9)
        self.env = env
        args = [
            "--head",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(self.gcs_port),
            "--include-dashboard",
            "true",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(self.dashboard_port),
            "--dashboard-agent-listen-port",
            str(agent_http),
            "--dashboard-agent-grpc-port",
            str(agent_grpc),
            "--ray-client-server-port",
            str(client_server),
            "--node-manager-port",
            str(node_manager),
            "--object-manager-port",
            str(object_manager),
            "--metrics-export-port",
            str(metrics),
            "--runtime-env-agent-port",
            str(runtime_env_agent),
            "--num-cpus",
            str(num_cpus),
            "--num-gpus",
            str(num_gpus),
        ]
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
        reply = self.get(
            "/api/v0/actors",
            detail="1",
            limit="10000",
            filter_keys=["class_name", "job_id"],
            filter_predicates=["=", "="],
            filter_values=[class_name, job_id],
        )
        return reply["data"]["result"]["result"]

    def job_id(self, submission_id: str) -> str:
        """The Ray job id (hex) of a submitted job."""
        return self.get(f"/api/jobs/{submission_id}")["job_id"]

    def alive_node_ids(self) -> set[str]:
        """Ids of the cluster's live nodes."""
        reply = self.get(
            "/api/v0/nodes", limit="1000", filter_keys="state", filter_predicates="=", filter_values="ALIVE"
        )
        return {node["node_id"] for node in reply["data"]["result"]["result"]}

    def add_node(self, name: str, num_cpus: int) -> RayNode:
        """Join a second node on this machine (`ray start --address`), with ports and a temp dir of its own."""
        agent_http, agent_grpc, node_manager, object_manager, metrics, runtime_env_agent = free_ports(6)
        args = [
            "--address",
            f"127.0.0.1:{self.gcs_port}",
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            str(num_cpus),
            "--node-manager-port",
            str(node_manager),
            "--object-manager-port",
            str(object_manager),
            "--dashboard-agent-listen-port",
            str(agent_http),
            "--dashboard-agent-grpc-port",
            str(agent_grpc),
            "--metrics-export-port",
            str(metrics),
            "--runtime-env-agent-port",
            str(runtime_env_agent),
        ]
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


# ---------------------------------------------------------------------------
# Submitting sweeps


def sweep_command(storage: str, name: str, *extra: str, script: str = "tune_search.py") -> list[str]:
    """The job's entrypoint: `python tune_search.py` (it joins the cluster through the job's $RAY_ADDRESS).

    script="tests/hooked_sweep.py" runs the same sweep with the test hooks (see round_log_env).
    """
    return ["python", script, "--storage-path", storage, "--name", name, *TINY, *extra]


def ray_job_submit(
    head: Head, entrypoint: list[str], runtime_env: str = "runtime_env.yaml", submission_id: str | None = None
) -> list[str]:
    """The documented submission command line (blocks; exits with the job's status)."""
    ids = ["--submission-id", submission_id] if submission_id else []
    return [
        RAY,
        "job",
        "submit",
        "--address",
        head.url,
        *ids,
        "--runtime-env",
        runtime_env,
        "--working-dir",
        ".",
        "--",
        *entrypoint,
    ]


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
