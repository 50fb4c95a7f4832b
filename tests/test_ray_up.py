"""`ray up` and `ray down` for real: cluster-onprem.yaml without Docker, its head on this machine.

Ray's "local" node provider needs nothing but SSH, so the test gives it an SSH
server of its own and lets the real cluster launcher do everything else:

1. an `sshd` of the test's own on 127.0.0.1 and a free port, with a host key,
   a client key, a config, a pid file and a log in a temp dir (the test
   installs nothing: without sshd, ssh or rsync it skips; `.ci/run` installs
   Debian's openssh-server, openssh-client and rsync first);
2. a variant of cluster-onprem.yaml (no_docker_variant): the `docker` section
   deleted, head_ip 127.0.0.1, no workers, the test's key and ports; its
   commands run in this checkout's virtualenv;
3. `ray up -y` with it, then the documented `ray job submit --runtime-env
   runtime_env.yaml --working-dir . -- python tune_search.py ...` to the
   head's dashboard, and the sweep's result files checked;
4. `ray down -y`, after which nothing of the cluster may be left running.

How the launcher is kept to the test's own files and processes (Ray 2.60.0,
ray/autoscaler/_private/):

* SSH port: Ray's SSH runner (command_runner.py, SSHCommandRunner) always
  connects to port 22; its only hook is `auth.ssh_proxy_command`, which
  becomes ssh's ProxyCommand (also for rsync's `--rsh`). The variant's runs a
  relay to the test's port (RELAY). The head's own copy of the config
  (~/ray_bootstrap_config.yaml) drops it (commands.py,
  _set_up_config_for_head_node), so a head could not reach workers behind
  it: the cluster has no workers.
* The head's home: whatever Ray puts in `~` on the head --
  ~/ray_bootstrap_config.yaml, ~/ray_bootstrap_key.pem (commands.py), the
  synced ~/fedsweep (file_mounts), anything a job writes to $HOME -- lands
  in a throwaway home: the sshd sets HOME for its sessions (`SetEnv`), and
  every remote command runs as `bash --login -c -i 'source ~/.bashrc; ...'`
  (command_runner.py, _with_interactive).
* The launcher's files: the config cache (`ray-config-<hash>`, commands.py
  _bootstrap_config, which `ray down` writes too) and the uploaded bootstrap
  config go to tempfile.gettempdir(), the cluster state file
  (`cluster-<name>.state/.lock`, local/config.py) to $TMPDIR/ray: TMPDIR
  points into the test's dir, for the launcher and (separately, as on a real
  head) for the head. What Ray writes at a fixed place, the test removes:
  ssh's ControlMaster sockets in /tmp/ray_ssh_<user hash>/<cluster hash>
  (command_runner.py; the cluster name is unique per run), and an empty
  ~/.ssh in the user's real home should ssh create one.
* `ray stop`: head_start_ray_commands begin with it, and `ray down` runs it
  on the head itself (commands.py, teardown_cluster -> exec_cluster; with no
  Docker container, nothing else is stopped there). It stops every Ray on the
  machine: the pytest session's own, other tests' heads. In the test's SSH
  sessions `ray` is a shim (~/bin/ray, put on the PATH by ~/.bashrc) whose
  `ray stop` stops only this head (stop_head) and logs that it ran; anything
  else goes to the virtualenv's `ray`.
* Processes: the head's daemons keep the session of the SSH shell that ran
  `ray start`, and everything else of the head descends from one of them
  (tests/test_ray_cluster.py explains this /proc-based tracking). The head is
  found by the temp dir on its raylet's and GCS's command lines. `ray up` and
  `ray down` run in sessions of their own, whose leftovers (ssh
  ControlMaster processes, which persist 10 s) the test ends.

The machine's login records (wtmp, lastlog), which sshd writes for every
terminal login (Ray's `ssh -tt`), are left alone too: the sshd runs in a mount
namespace where they are files of the test's (LoopbackSshd._own_login_records).

Takes about 80 s on 2 cores: `ray up` 25-30 s, the job 35-45 s, `ray down` 10 s
Deselect with `-m "not cluster and not slow"` (a `-m` replaces the default `not slow`).
"""

from __future__ import annotations

import contextlib
import getpass
import glob
import hashlib
import json
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import pytest
import yaml

from tests.support.cluster import (
    BIN,
    RAY,
    REPO,
    TWO_TRIALS,
    _all_processes,
    _output,
    _stat,
    check_results,
    cmdline,
    free_ports,
    ray_env,
    session_processes,
    sweep_command,
    terminate,
)

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds Ray's processes through /proc"),
    pytest.mark.skipif(not os.path.exists(RAY), reason=f"no `ray` command next to {sys.executable}"),
]

# Commands the test needs, with the Debian packages that provide them.
TOOLS = {"sshd": "openssh-server", "ssh": "openssh-client", "ssh-keygen": "openssh-client", "rsync": "rsync"}
SBIN = ["/usr/local/sbin", "/usr/sbin", "/sbin"]  # sshd's home, not always on a user's PATH
PRIVSEP_DIR = "/run/sshd"  # Debian's sshd (as root) refuses to start without it
UP_TIMEOUT_S = 180  # `ray up`: SSH, rsync, setup check, `ray start` (about 25 s here)
JOB_TIMEOUT_S = 240  # the tiny sweep as a job (about 40 s here)
DOWN_TIMEOUT_S = 120  # `ray down` (about 10 s here)
DASHBOARD_TIMEOUT_S = 120  # after `ray up`, until the head's job API answers (at once or a few seconds here)

# ssh's ProxyCommand: joins ssh's stdin/stdout to 127.0.0.1:PORT (Ray's SSH runner always dials port 22).
RELAY = '''\
"""ProxyCommand of tests/test_ray_up.py: ssh's stdin/stdout <-> 127.0.0.1:PORT."""
import os, socket, sys, threading

os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # never hold the caller's stderr open
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))


def upstream():
    while data := os.read(0, 65536):
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


threading.Thread(target=upstream, daemon=True).start()
while data := sock.recv(65536):
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
'''

# The variant's setup command. The real one (`pip install -e ~/fedsweep`, CPU torch first) needs the
# network and would re-point this checkout's editable install at the test's copy: the head here is this
# machine, whose virtualenv already has the project, so the test checks that environment instead.
SETUP_CHECK = 'import ray, fl_core, fl_sweep, tune_search; print("ray", ray.__version__, "with", fl_core.__file__)'


# ---------------------------------------------------------------------------
# Tools: sshd, ssh, ssh-keygen, rsync


def which(command: str) -> str | None:
    """The absolute path of `command` on the PATH or in the sbin folders."""
    return shutil.which(command, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN]))


@pytest.fixture(scope="session")
def ssh_tools() -> dict[str, str]:
    """Absolute paths of sshd, ssh, ssh-keygen and rsync; the test skips, in one line, when any is missing.

    The test installs nothing: `.ci/run` installs Debian's packages (and makes
    sshd's privilege separation folder) before the suite runs.
    """
    missing = {command: package for command, package in TOOLS.items() if which(command) is None}
    if missing:
        pytest.skip(
            f"needs {', '.join(missing)} (Debian: {' '.join(sorted(set(missing.values())))}); .ci/run installs them"
        )
    if os.geteuid() == 0 and not os.path.isdir(PRIVSEP_DIR):
        pytest.skip(f"sshd as root needs its folder {PRIVSEP_DIR}; .ci/run makes it (mkdir -m 755 {PRIVSEP_DIR})")
    return {command: which(command) for command in TOOLS}


# ---------------------------------------------------------------------------
# The SSH server


class LoopbackSshd:
    """An sshd on 127.0.0.1:<free port>, all of its files in `base`; logins as this user with a test key only.

    Its sessions get HOME=`home` (a throwaway folder) and PYTHONDONTWRITEBYTECODE=1
    (the head's Python then writes no bytecode into this checkout or its
    virtualenv). Its login records go to files of its own (_own_login_records).
    """

    def __init__(self, tools: dict[str, str], base: str) -> None:
        self.dir = os.path.join(base, "ssh")
        self.home = os.path.join(base, "home")
        os.makedirs(self.dir, mode=0o700)
        os.makedirs(self.home, mode=0o700)
        self.user = getpass.getuser()
        self.client_key = os.path.join(self.dir, "client_key")
        host_key = os.path.join(self.dir, "host_key")
        for key in (host_key, self.client_key):
            subprocess.run(
                [tools["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-C", "fedsweep-test-ray-up", "-f", key],
                check=True,
                capture_output=True,
            )
        authorized_keys = os.path.join(self.dir, "authorized_keys")
        shutil.copyfile(self.client_key + ".pub", authorized_keys)
        self.relay = os.path.join(self.dir, "relay.py")
        with open(self.relay, "w") as f:
            f.write(RELAY)
        self.log_path = os.path.join(self.dir, "sshd.log")
        for _ in range(2):  # a port found free may be taken before sshd binds it
            self.port = free_ports(1)[0]
            config = os.path.join(self.dir, "sshd_config")
            with open(config, "w") as f:
                f.write(
                    "\n".join(
                        [
                            f"ListenAddress 127.0.0.1:{self.port}",
                            f"HostKey {host_key}",
                            f"PidFile {os.path.join(self.dir, 'sshd.pid')}",
                            f"AuthorizedKeysFile {authorized_keys}",
                            f"AllowUsers {self.user}",
                            "PermitRootLogin prohibit-password",
                            "PubkeyAuthentication yes",
                            "PasswordAuthentication no",
                            "KbdInteractiveAuthentication no",
                            "UsePAM no",
                            "StrictModes no",  # the key files live under /tmp
                            "PermitUserEnvironment no",
                            "AllowTcpForwarding no",
                            "AllowAgentForwarding no",
                            "X11Forwarding no",
                            "PrintMotd no",
                            "PrintLastLog no",
                            "LogLevel VERBOSE",
                            f"SetEnv HOME={self.home} PYTHONDONTWRITEBYTECODE=1",
                            "",
                        ]
                    )
                )
            self.since = _stat(os.getpid())[3]
            command = self._own_login_records([tools["sshd"], "-D", "-f", config, "-E", self.log_path])
            with open(self.log_path, "a") as log:
                self.proc = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            deadline = time.time() + 20
            while self.proc.poll() is None and not _port_open(self.port) and time.time() < deadline:
                time.sleep(0.1)
            if self.proc.poll() is None and _port_open(self.port):
                return
            self.stop()
        with open(self.log_path, errors="replace") as f:
            log_tail = f.read()[-2000:]
        message = f"the test's sshd did not come up on 127.0.0.1:{self.port}:\n{log_tail}"
        if os.geteuid() != 0:
            pytest.skip(message + f"\n(not root: sshd may need {PRIVSEP_DIR} or root)")
        raise RuntimeError(message)

    def _own_login_records(self, command: list[str]) -> list[str]:
        """`command` in a mount namespace of its own where the login records are files of the test's.

        Ray's `ssh -tt` asks for a terminal, and sshd records every terminal
        login in /var/log/wtmp, /var/log/lastlog and /run/utmp (failed ones in
        /var/log/btmp).
        There, these are bind mounts of empty files in the test's dir, so the
        machine's records stay untouched. Needs root and `unshare`; without
        them (or if the probe fails) sshd runs as it is and records the logins.
        """
        unshare = which("unshare")
        records = sorted(
            {
                os.path.realpath(path)
                for path in ("/var/log/wtmp", "/var/log/btmp", "/var/log/lastlog", "/run/utmp", "/var/run/utmp")
                if os.path.isfile(path)
            }
        )
        if os.geteuid() != 0 or unshare is None or not records:
            return command
        mounts = []
        for path in records:
            copy = os.path.join(self.dir, os.path.basename(path))
            open(copy, "w").close()
            mounts.append(f"mount --bind {shlex.quote(copy)} {shlex.quote(path)}")
        wrapped = [
            unshare,
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            " && ".join(mounts) + ' && exec "$@"',
            "sh",
        ]
        probe = subprocess.run([*wrapped, "true"], capture_output=True, text=True)
        return [*wrapped, *command] if probe.returncode == 0 else command

    def processes(self) -> set[int]:
        """The sshd and its connections' processes (each connection has a session of its own, under it)."""
        return session_processes(self.proc.pid, self.since)

    def stop(self) -> set[int]:
        """End the sshd and its connections; returns processes still alive after SIGKILL."""
        left = terminate(self.processes())
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        return left


def job_api_ready(dashboard: str, timeout_s: float) -> bool:
    """Whether the dashboard at `dashboard` lists jobs (HTTP 200 from /api/jobs/) within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: never through a proxy
    while True:
        with contextlib.suppress(OSError):  # refused, reset, or an HTTP error while it starts
            with direct.open(f"{dashboard}/api/jobs/", timeout=5) as response:
                if response.status == 200:
                    return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def _port_open(port: int) -> bool:
    """True if something accepts TCP on 127.0.0.1:`port`."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        return True
    return False


@pytest.fixture(scope="module")
def base_dir():
    """The test's temp dir (short: Ray's socket paths under it must stay within 107 bytes)."""
    path = tempfile.mkdtemp(prefix="fsu", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def sshd(ssh_tools, base_dir):
    """The module's SSH server; afterwards none of its processes may be left."""
    server = LoopbackSshd(ssh_tools, base_dir)
    try:
        yield server
    finally:
        left = server.stop()
        assert left == set(), f"processes of the test's sshd survived SIGKILL: {left}"


# ---------------------------------------------------------------------------
# The head, found through /proc


def environ(pid: int) -> dict[str, str]:
    """The environment a process started with ({} if gone).

    Not for processes that set a title (`ray::...`), which overwrites it (tests/test_ray_cluster.py).
    """
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:
        return {}
    return dict(e.decode(errors="replace").split("=", 1) for e in entries if b"=" in e)


def head_sessions(ray_temp: str) -> set[int]:
    """Session ids of the head whose temp dir is `ray_temp`: those of its raylet and GCS.

    These two are C++ programs: their command lines (which name the temp dir)
    are never overwritten by a process title.
    """
    marker = ray_temp.rstrip("/") + "/"
    return {
        info[2]
        for pid, info in _all_processes().items()
        if os.path.basename((cmdline(pid) or [""])[0]) in ("raylet", "gcs_server")
        and any(marker in arg for arg in cmdline(pid)[1:])
    }


def head_processes(sessions: set[int], since_ticks: int = 0) -> set[int]:
    """Every live process of those sessions started at or after `since_ticks`, and their descendants."""
    found: set[int] = set()
    for session in sessions:
        found |= session_processes(session, since_ticks)
    return found


def stop_head(ray_temp: str, sessions: set[int] = frozenset(), since_ticks: int = 0) -> set[int]:
    """`ray stop` for this one head: end its processes; returns those alive after SIGKILL.

    `sessions` (seen earlier, started at or after `since_ticks`) are added to
    those found now. In the order of RayNode.stop (tests/test_ray_cluster.py):
    the raylet first, then all but the GCS, then the rest.
    """
    found_now = head_sessions(ray_temp)

    def processes() -> set[int]:
        return head_processes(found_now) | head_processes(set(sessions) - found_now, since_ticks)

    seen = processes()

    def named(binary: str) -> set[int]:
        return {pid for pid in seen if os.path.basename((cmdline(pid) or [""])[0]) == binary}

    terminate(named("raylet"))
    seen |= processes()
    terminate(seen - named("gcs_server"))
    return terminate(seen | processes())


# ---------------------------------------------------------------------------
# The cluster file and the launcher


def write_head_home(sshd: LoopbackSshd, ray_temp: str) -> str:
    """Fill the SSH sessions' home: ~/.bashrc puts ~/bin first on the PATH, ~/bin/ray is the shim.

    The shim's `ray stop` stops only this head (this file run as a script; see
    __main__) and appends a line to ~/ray-stop.log; every other `ray` command
    runs this virtualenv's ray. Returns the log's path.
    """
    bin_dir = os.path.join(sshd.home, "bin")
    os.makedirs(bin_dir)
    stop_log = os.path.join(sshd.home, "ray-stop.log")
    shim = os.path.join(bin_dir, "ray")
    q = shlex.quote
    with open(shim, "w") as f:
        f.write(
            "#!/bin/sh\n"
            "# tests/test_ray_up.py: `ray stop` would stop every Ray on this machine; this one stops this head.\n"
            'if [ "$1" = stop ]; then\n'
            f"    echo stop >> {q(stop_log)}\n"
            # PYTHONPATH: this file imports tests.support, from the repository root.
            f"    exec env PYTHONPATH={q(REPO)} {q(sys.executable)} {q(os.path.abspath(__file__))} stop {q(ray_temp)}\n"
            "fi\n"
            f'exec {q(RAY)} "$@"\n'
        )
    os.chmod(shim, 0o755)
    with open(os.path.join(sshd.home, ".bashrc"), "w") as f:
        f.write(
            "# tests/test_ray_up.py: Ray runs every remote command as "
            "`bash --login -c -i 'source ~/.bashrc; ...'`\n"
            f'export PATH={q(bin_dir)}:"$PATH"\n'
        )
    return stop_log


def no_docker_variant(sshd: LoopbackSshd, name: str, ray_temp: str, head_tmp: str, ports: list[int]) -> dict:
    """cluster-onprem.yaml as a user would run it without Docker, with this machine as its only node.

    Changed: no `docker` section; head_ip 127.0.0.1, no worker_ips; the test's
    SSH user, key and port (ssh_proxy_command); the setup command (see
    SETUP_CHECK); the `ray start` command runs in this virtualenv (`source
    .venv/bin/activate`), with the test's ports, temp dir and 2 CPUs. Kept:
    file_mounts (the checkout to ~/fedsweep), rsync excludes, and `ray stop`
    before `ray start` (the shim's, see write_head_home).
    """
    with open(os.path.join(REPO, "cluster-onprem.yaml")) as f:
        config = yaml.safe_load(f)
    assert "docker" in config and config["file_mounts"] == {"~/fedsweep": "."}, "cluster-onprem.yaml changed shape"
    del config["docker"]
    config["cluster_name"] = name
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["auth"] = {
        "ssh_user": sshd.user,
        "ssh_private_key": sshd.client_key,
        "ssh_proxy_command": f"{shlex.quote(sys.executable)} -I {shlex.quote(sshd.relay)} {sshd.port}",
    }
    activate = os.path.join(BIN, "activate")
    env = f"source {shlex.quote(activate)}" if os.path.exists(activate) else f'export PATH={shlex.quote(BIN)}:"$PATH"'
    env += " && cd ~"  # the SSH session starts in the user's real home; core files etc. go to the test's
    config["setup_commands"] = [f"{env} && python -c {shlex.quote(SETUP_CHECK)}"]
    (
        gcs,
        dashboard,
        agent_http,
        agent_grpc,
        client_server,
        node_manager,
        object_manager,
        metrics,
        runtime_env_agent,
    ) = ports
    flags = [
        "--node-ip-address=127.0.0.1",
        f"--dashboard-port={dashboard}",
        "--include-dashboard=true",
        f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--ray-client-server-port={client_server}",
        f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env_agent}",
        "--min-worker-port=0",
        "--max-worker-port=0",
        f"--temp-dir={ray_temp}",
        "--num-cpus=2",
        f"--object-store-memory={200 * 1024 * 1024}",
        "--disable-usage-stats",
    ]
    starts = []
    for command in config["head_start_ray_commands"]:
        if command == "ray stop":
            starts.append(command)
            continue
        assert "ray start --head" in command and "--port=6379" in command, f"unexpected start command: {command}"
        command = command.replace("--port=6379", f"--port={gcs}")
        starts.append(
            f"{env} && export RAY_AUTH_MODE=disabled TMPDIR={shlex.quote(head_tmp)} && "
            f"{{ {command} {' '.join(flags)}; }}"
        )
    assert starts[0] == "ray stop" and len(starts) == 2, config["head_start_ray_commands"]
    config["head_start_ray_commands"] = starts
    return config


def ssh_control_dir(cluster_name: str) -> str:
    """Where Ray's SSH runner keeps ssh's ControlMaster sockets for a cluster (command_runner.py)."""
    user_hash = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
    return f"/tmp/ray_ssh_{user_hash}/{hashlib.sha256(cluster_name.encode()).hexdigest()[:10]}"


class Launcher:
    """Runs `ray up`/`ray down` from the repository root, each in a session of its own.

    Their output goes to a file: an ssh ControlMaster outlives them by 10 s
    (ControlPersist) and must hold no pipe of the test's.
    """

    def __init__(self, env: dict, log_dir: str, control_dir: str) -> None:
        self.env, self.log_dir, self.control_dir = env, log_dir, control_dir
        self.sessions: list[tuple[int, int]] = []

    def run(self, name: str, command: list[str], timeout: float) -> tuple[int, str]:
        """(exit status, output) of `command`; past `timeout` it is killed and the test fails."""
        log_path = os.path.join(self.log_dir, f"{name}.log")
        since = _stat(os.getpid())[3]
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                command,
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.sessions.append((proc.pid, since))
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            terminate(session_processes(proc.pid, since))
            proc.wait()
            code = "timeout"
        with open(log_path, errors="replace") as f:
            output = f.read()
        assert code != "timeout", f"`{shlex.join(command)}` ran past {timeout} s:\n{output[-4000:]}"
        return code, output

    def stop(self) -> set[int]:
        """End what the commands left (ssh ControlMaster processes); returns those alive after SIGKILL."""
        left = {pid for session, since in self.sessions for pid in session_processes(session, since)}
        left |= {pid for pid in _all_processes() if any(self.control_dir in arg for arg in cmdline(pid))}
        return terminate(left)


# ---------------------------------------------------------------------------
# The test


def test_ray_up_sweep_ray_down(sshd, base_dir):
    """`ray up` a no-Docker cluster-onprem.yaml on 127.0.0.1, run a sweep as a job, `ray down`: nothing is left."""
    name = f"fedsweep-up-{uuid.uuid4().hex[:8]}"  # Ray keys its ssh sockets and state files by this name
    ray_temp = os.path.join(base_dir, "ray")
    head_tmp = os.path.join(base_dir, "head-tmp")
    launcher_tmp = os.path.join(base_dir, "launcher-tmp")
    storage = os.path.join(base_dir, "results")
    for path in (head_tmp, launcher_tmp):
        os.makedirs(path)
    ports = free_ports(9)
    config_path = os.path.join(base_dir, "cluster-onprem-nodocker.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(no_docker_variant(sshd, name, ray_temp, head_tmp, ports), f, sort_keys=False)
    stop_log = write_head_home(sshd, ray_temp)
    dashboard = f"http://127.0.0.1:{ports[1]}"

    # Ray's own places, to check that the test leaves them as they were.
    control_dir = ssh_control_dir(name)
    control_parent_existed = os.path.isdir(os.path.dirname(control_dir))
    real_home = pwd.getpwuid(os.getuid()).pw_dir  # ssh's ~ (not $HOME)
    user_ssh_dir = os.path.join(real_home, ".ssh")  # ssh may make it when missing
    user_ssh_dir_existed = os.path.isdir(user_ssh_dir)
    home_files = {
        path: os.path.lexists(path)
        for path in (
            os.path.join(real_home, leaf) for leaf in ("ray_bootstrap_config.yaml", "ray_bootstrap_key.pem", "fedsweep")
        )
    }
    config_caches = set(glob.glob(os.path.join(tempfile.gettempdir(), "ray-config-*")))
    from ray._common.utils import get_default_ray_temp_dir  # where the state files go without TMPDIR

    state_files = os.path.join(get_default_ray_temp_dir(), f"cluster-{name}.*")

    launcher = Launcher(ray_env(TMPDIR=launcher_tmp), base_dir, control_dir)
    since = _stat(os.getpid())[3]  # no process of the head is older than the test process
    sessions: set[int] = set()
    timings = {}
    try:
        start = time.monotonic()
        code, output = launcher.run(
            "up", [RAY, "up", "-y", "--no-config-cache", "--disable-usage-stats", config_path], UP_TIMEOUT_S
        )
        timings["ray up"] = time.monotonic() - start
        assert code == 0, output[-4000:]
        sessions = head_sessions(ray_temp)
        assert sessions, f"`ray up` succeeded but no raylet or GCS uses {ray_temp}:\n{output[-3000:]}"
        # `ray up` returns once `ray start` did; the dashboard and its job agent come up in their own time (seconds
        # more on a loaded machine), so the submission waits until the job API answers instead of assuming it does.
        start = time.monotonic()
        assert job_api_ready(dashboard, DASHBOARD_TIMEOUT_S), f"no job API on {dashboard} {DASHBOARD_TIMEOUT_S} s later"
        timings["job API up"] = time.monotonic() - start

        # What Ray put in the head's ~: the synced checkout (rsync excludes applied) and its bootstrap files.
        home = sshd.home
        assert os.path.isfile(os.path.join(home, "fedsweep", "tune_search.py"))
        for excluded in (".git", ".venv", "fedsweep.egg-info"):
            assert not os.path.exists(os.path.join(home, "fedsweep", excluded)), excluded
        with open(os.path.join(home, "ray_bootstrap_config.yaml")) as f:
            bootstrap = json.load(f)
        assert bootstrap["cluster_name"] == name and bootstrap["auth"]["ssh_private_key"] == "~/ray_bootstrap_key.pem"
        assert "ssh_proxy_command" not in bootstrap["auth"]
        assert os.path.isfile(os.path.join(home, "ray_bootstrap_key.pem"))
        # The head's autoscaler reads that config: `--autoscaling-config=~/...`, `~` being the SSH session's HOME.
        autoscalers = [
            pid
            for pid in head_processes(sessions, since)
            if "--autoscaling-config=~/ray_bootstrap_config.yaml" in cmdline(pid)
        ]
        assert len(autoscalers) == 1 and environ(autoscalers[0]).get("HOME") == home, autoscalers
        with open(stop_log) as f:
            assert f.read().split() == ["stop"], "head_start_ray_commands' `ray stop` did not run once"

        # The documented submission, to the head's own dashboard.
        start = time.monotonic()
        submit = [
            RAY,
            "job",
            "submit",
            "--address",
            dashboard,
            "--runtime-env",
            "runtime_env.yaml",
            "--working-dir",
            ".",
            "--",
            *sweep_command(storage, "ray_up", *TWO_TRIALS),
        ]
        job = subprocess.run(submit, cwd=REPO, env=ray_env(), capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
        assert job.returncode == 0, _output(job)
        assert "succeeded" in job.stdout + job.stderr
        check_results(os.path.join(storage, "ray_up"), trials=2, rounds=2)
        timings["job"] = time.monotonic() - start

        start = time.monotonic()
        code, output = launcher.run("down", [RAY, "down", "-y", config_path], DOWN_TIMEOUT_S)
        timings["ray down"] = time.monotonic() - start
        assert code == 0, output[-4000:]
        with open(stop_log) as f:
            assert f.read().split() == ["stop", "stop"], f"`ray down` ran no `ray stop` on the head:\n{output[-3000:]}"
        assert head_processes(sessions, since) == set(), "`ray down` left processes of the head running"
        assert not _port_open(ports[1]) and not _port_open(ports[0]), "the head's ports still answer"
        with open(os.path.join(launcher_tmp, "ray", f"cluster-{name}.state")) as f:
            state = json.load(f)
        assert state["127.0.0.1"]["state"] == "terminated", state
    finally:
        left = stop_head(ray_temp, sessions, since) | launcher.stop()
        shutil.rmtree(control_dir, ignore_errors=True)
        if not control_parent_existed:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(control_dir))
        if not user_ssh_dir_existed:
            with contextlib.suppress(OSError):
                os.rmdir(user_ssh_dir)  # only if still empty
        print(", ".join(f"{step} {seconds:.1f} s" for step, seconds in timings.items()))
    assert left == set(), f"processes survived SIGKILL: {left}"
    # Nothing at Ray's default places: state files, config caches, the head's files in the real home.
    assert not glob.glob(state_files), glob.glob(state_files)
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "ray-config-*"))) == config_caches
    assert {path: os.path.lexists(path) for path in home_files} == home_files
    assert not os.path.exists(control_dir)


if __name__ == "__main__":
    # The shim's `ray stop` (write_head_home): python tests/test_ray_up.py stop RAY_TEMP_DIR
    if len(sys.argv) != 3 or sys.argv[1] != "stop":
        sys.exit(f"usage: {sys.argv[0]} stop RAY_TEMP_DIR")
    still_alive = stop_head(sys.argv[2])
    print(
        f"stopped the Ray head of {sys.argv[2]}"
        + (f"; alive after SIGKILL: {sorted(still_alive)}" if still_alive else "")
    )
    sys.exit(1 if still_alive else 0)
