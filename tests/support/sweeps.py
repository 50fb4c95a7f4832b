"""tune_search.py in a subprocess for the sweep tests: the tiny sweep's flags, and `Run`, which gives each sweep its
own Ray temp dir, session and environment tag, and reaps exactly its processes afterwards."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "tune_search.py")
HOOKED = os.path.join(REPO, "tests", "hooked_sweep.py")  # the same, with round log and failure hooks
TINY = [
    "--set",
    "dataset=synthetic",
    "--set",
    "synthetic-size=600",
    "--set",
    "pool_size=4",
    "--set",
    "min-train-nodes=1",
    "--set",
    "min-evaluate-nodes=1",
    "--set",
    "eval-batch-size=200",
    "--set",
    "num-server-rounds=2",
]


def run_pids(tag: str, session: int) -> list[int]:
    """Processes of one run: in its session, or carrying FEDSWEEP_TEST_RUN_TAG=tag in their environment."""
    needle = f"FEDSWEEP_TEST_RUN_TAG={tag}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.getsid(int(entry)) == session:
                pids.append(int(entry))
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


def reap(tag: str, session: int, grace_s: float = 30) -> list[int]:
    """Wait for the run's processes to exit; SIGKILL any left after `grace_s`. Returns those that had to be killed."""
    deadline = time.time() + grace_s
    while time.time() < deadline and run_pids(tag, session):
        time.sleep(0.5)
    leftovers = run_pids(tag, session)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return leftovers


class Run:
    """One tune_search subprocess: own Ray temp dir, own tag; with hooks, tests/hooked_sweep.py instead."""

    def __init__(self, args: list[str], hooks: dict | None = None) -> None:
        """Prepare the command and its environment (hooks: hooked_sweep's variables); nothing starts yet."""
        self.tag = uuid.uuid4().hex
        # Short path: Ray's socket names must fit in 107 bytes.
        self.ray_tmp = tempfile.mkdtemp(prefix="fsw", dir="/tmp")
        self.env = {**os.environ, **(hooks or {}), "FEDSWEEP_TEST_RUN_TAG": self.tag}
        self.cmd = [sys.executable, HOOKED if hooks else SCRIPT, *args, "--ray-temp-dir", self.ray_tmp]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Run":
        """Start in a new session (its own process group)."""
        self.out = open(os.path.join(self.ray_tmp, "out.log"), "w+")
        self.proc = subprocess.Popen(
            self.cmd, cwd=REPO, env=self.env, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def wait(self, timeout: float = 300) -> tuple[int, str]:
        """(exit status, output) once it ends."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self.out.seek(0)
        return code, self.out.read()

    def kill(self) -> None:
        """SIGKILL the driver's whole process group."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def to_end(self, timeout: float = 300) -> tuple[int, str, list[int]]:
        """Start, wait for the end, clean up: (exit status, output, processes that had to be killed)."""
        self.start()
        try:
            code, output = self.wait(timeout=timeout)
        finally:
            leftovers = self.cleanup()
        return code, output, leftovers

    def cleanup(self) -> list[int]:
        """Reap this run's processes and remove its temp dir; returns processes that had to be killed."""
        leftovers = reap(self.tag, self.proc.pid)  # start_new_session: the driver leads the run's session
        self.out.close()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
        return leftovers
