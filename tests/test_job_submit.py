"""Offline tests of job/submit.py: argument parsing, bad input, and the
submit / follow / exit-status logic against a fake client.

No Ray cluster is started here; the few tests that build a real
JobSubmissionClient point it at closed ports or at a plain HTTP server.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # plain `pytest` without the project installed
    sys.path.insert(0, str(REPO))

from job import submit as sub  # noqa: E402

CLOSED_ADDRESS = "http://127.0.0.1:1"


@pytest.fixture(autouse=True)
def _no_ray_address(monkeypatch):
    """Tests start without any address from the environment."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)


@pytest.fixture
def no_client(monkeypatch):
    """Fail the test if anything tries to contact a cluster."""

    def forbidden(address):
        raise AssertionError(f"tried to connect to {address}")

    monkeypatch.setattr(sub, "make_client", forbidden)


def closed_port_address() -> str:
    """An http:// address on a local port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def stderr_lines(capsys) -> list:
    """Non-empty lines written to stderr so far."""
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# --------------------------------------------------------------------------- parsing


def test_defaults():
    args = sub.parse_args([])
    assert args.address == "http://127.0.0.1:8265"
    assert args.runtime_env == "runtime_env.yaml"
    assert args.working_dir == "."
    assert args.no_wait is False
    assert args.submission_id is None
    assert args.stop is None
    assert args.entrypoint == ["python", "tune_search.py", "--address", "auto"]


def test_entrypoint_after_double_dash_is_kept_verbatim():
    args = sub.parse_args([
        "--no-wait", "--submission-id", "sweep-1", "--",
        "python", "tune_search.py", "--address", "auto", "--num-samples", "4", "--",
        "x y",
    ])
    assert args.no_wait is True
    assert args.submission_id == "sweep-1"
    # Options after "--" belong to the entrypoint, even ones submit.py also has.
    assert args.entrypoint == [
        "python", "tune_search.py", "--address", "auto", "--num-samples", "4", "--", "x y",
    ]
    assert args.address == "http://127.0.0.1:8265"


def test_address_from_environment_and_explicit_address_wins(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.5:8265")
    assert sub.parse_args([]).address == "http://10.0.0.5:8265"
    assert sub.parse_args(["--address", "http://h:1"]).address == "http://h:1"


def test_stop_parsing():
    args = sub.parse_args(["--stop", "raysubmit_abc", "--address", "http://h:8265"])
    assert args.stop == "raysubmit_abc"
    assert args.address == "http://h:8265"


def test_help_exits_zero(capsys):
    assert sub.main(["--help"]) == 0
    assert "--stop" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["--bogus"],
    ["python", "tune_search.py"],          # command without "--"
    ["--stop", "id", "--", "python", "x.py"],
    ["--stop", " "],
    ["--address", ""],
])
def test_bad_command_lines_exit_2_with_one_line(argv, capsys, no_client):
    assert sub.main(argv) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("error:"), lines


# --------------------------------------------------------------------------- bad input


def test_missing_runtime_env_file_exits_2(tmp_path, capsys, no_client):
    missing = tmp_path / "nope.yaml"
    assert sub.main(["--runtime-env", str(missing)]) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and "runtime env file not found" in lines[0]
    assert str(missing) in lines[0]


@pytest.mark.parametrize("content", ["- a\n- b\n", "key: [unclosed\n", "just a string\n"])
def test_malformed_runtime_env_exits_2(tmp_path, content, capsys, no_client):
    env = tmp_path / "env.yaml"
    env.write_text(content)
    assert sub.main(["--runtime-env", str(env)]) == 2
    assert len(stderr_lines(capsys)) == 1


def test_missing_working_dir_exits_2(tmp_path, capsys, no_client):
    env = tmp_path / "env.yaml"
    env.write_text("env_vars: {A: '1'}\n")
    code = sub.main(["--runtime-env", str(env), "--working-dir", str(tmp_path / "nodir")])
    assert code == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and "working directory not found" in lines[0]


def test_load_runtime_env_overrides_working_dir(tmp_path):
    env = sub.load_runtime_env(str(REPO / "runtime_env.yaml"), str(tmp_path))
    assert env["working_dir"] == str(tmp_path.resolve())
    assert "data/" in env["excludes"]
    remote = sub.load_runtime_env(str(REPO / "runtime_env.yaml"), "s3://bucket/code.zip")
    assert remote["working_dir"] == "s3://bucket/code.zip"


def test_empty_runtime_env_file_is_allowed(tmp_path):
    env = tmp_path / "env.yaml"
    env.write_text("# nothing\n")
    assert sub.load_runtime_env(str(env), str(tmp_path)) == {
        "working_dir": str(tmp_path.resolve())
    }


@pytest.mark.parametrize("extra", [[], ["--stop", "raysubmit_x"]])
def test_unreachable_address_exits_2_fast(extra, capsys):
    start = time.monotonic()
    code = sub.main(["--address", CLOSED_ADDRESS, "--runtime-env",
                     str(REPO / "runtime_env.yaml"), "--working-dir", str(REPO)] + extra)
    assert code == 2
    assert time.monotonic() - start < 5
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and "cannot reach" in lines[0] and CLOSED_ADDRESS in lines[0]


def test_unreachable_address_from_environment(monkeypatch, capsys):
    address = closed_port_address()
    monkeypatch.setenv("RAY_ADDRESS", address)
    assert sub.main(["--stop", "raysubmit_x"]) == 2
    assert address in stderr_lines(capsys)[0]


@pytest.mark.parametrize("address,expected", [
    ("http://127.0.0.1:8265", ("127.0.0.1", 8265)),
    ("https://ray.example.org/", ("ray.example.org", 443)),
    ("http://head", ("head", 80)),
    ("ray://10.0.0.1:10001", ("10.0.0.1", 10001)),
    ("10.0.0.1:6379", ("10.0.0.1", 6379)),
    ("auto", None),
    ("http://[::1]:8265", ("::1", 8265)),
])
def test_probe_target(address, expected):
    assert sub._host_port(address) == expected


class _NotRay(http.server.BaseHTTPRequestHandler):
    """Answers every request with 404, like a web server that is not Ray."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def not_ray_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotRay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_open_port_that_is_not_ray_exits_2(not_ray_server, monkeypatch, capsys):
    # RAY_ADDRESS must not override the explicit --address inside Ray's client.
    monkeypatch.setenv("RAY_ADDRESS", closed_port_address())
    start = time.monotonic()
    assert sub.main(["--stop", "raysubmit_x", "--address", not_ray_server]) == 2
    assert time.monotonic() - start < 30
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and "cannot use the Ray Jobs API" in lines[0], lines
    assert not_ray_server in lines[0]
    assert os.environ["RAY_ADDRESS"] != not_ray_server  # environment restored


@pytest.mark.parametrize("launch", [["job/submit.py"], ["-m", "job.submit"]])
def test_runs_as_script_and_as_module(launch, tmp_path):
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, *launch, "--runtime-env", str(tmp_path / "missing.yaml")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "runtime env file not found" in result.stderr
    assert time.monotonic() - start < 30
    help_run = subprocess.run(
        [sys.executable, *launch, "--help"], cwd=REPO, capture_output=True, text=True,
        timeout=60,
    )
    assert help_run.returncode == 0 and "--submission-id" in help_run.stdout


# --------------------------------------------------------------------------- flows


class FakeClient:
    """Stands in for JobSubmissionClient: records calls, plays back a script."""

    def __init__(self, statuses=("SUCCEEDED",), log=("line 1\n", "line 2\n"),
                 tail_error=None, submit_error=None, stop_result=True, stop_error=None):
        self.statuses = list(statuses)
        self.log = list(log)
        self.tail_error = tail_error
        self.submit_error = submit_error
        self.stop_result = stop_result
        self.stop_error = stop_error
        self.submitted = []
        self.stopped = []
        self.tailed = []

    def submit_job(self, *, entrypoint, runtime_env=None, submission_id=None, **_):
        if self.submit_error:
            raise self.submit_error
        self.submitted.append((entrypoint, runtime_env, submission_id))
        return submission_id or "raysubmit_fake123"

    async def tail_job_logs(self, job_id):
        self.tailed.append(job_id)
        for chunk in self.log:
            yield chunk
        if self.tail_error:
            raise self.tail_error

    def get_job_status(self, job_id):
        if len(self.statuses) > 1:
            return self.statuses.pop(0)
        return self.statuses[0]

    def stop_job(self, job_id):
        if self.stop_error:
            raise self.stop_error
        self.stopped.append(job_id)
        return self.stop_result


@pytest.fixture
def fake(monkeypatch):
    """Install a FakeClient factory; returns a setter for the client to use."""
    holder = {"client": FakeClient(), "addresses": []}

    def make_client(address):
        holder["addresses"].append(address)
        return holder["client"]

    monkeypatch.setattr(sub, "make_client", make_client)
    monkeypatch.setattr(sub, "STATUS_POLL_S", 0.0)
    return holder


def run_main(argv):
    """main() with the repository's runtime env and working dir."""
    return sub.main(["--runtime-env", str(REPO / "runtime_env.yaml"),
                     "--working-dir", str(REPO)] + argv)


@pytest.mark.parametrize("status,code", [("SUCCEEDED", 0), ("FAILED", 1), ("STOPPED", 1)])
def test_follow_then_exit_status(fake, capsys, status, code):
    fake["client"] = FakeClient(statuses=["RUNNING", "RUNNING", status])
    assert run_main(["--", "python", "tune_search.py", "--address", "auto", "--name", "a b"]) == code
    out = capsys.readouterr().out.splitlines()
    assert out == ["raysubmit_fake123", "line 1", "line 2"]
    entrypoint, runtime_env, submission_id = fake["client"].submitted[0]
    assert entrypoint == "python tune_search.py --address auto --name 'a b'"
    assert runtime_env["working_dir"] == str(REPO)
    assert runtime_env["env_vars"] == {"PYTHONUNBUFFERED": "1"}
    assert submission_id is None


def test_real_job_status_enum_is_understood(fake):
    from ray.job_submission import JobStatus

    fake["client"] = FakeClient(statuses=[JobStatus.PENDING, JobStatus.FAILED])
    assert run_main([]) == 1
    fake["client"] = FakeClient(statuses=[JobStatus.SUCCEEDED])
    assert run_main([]) == 0


def test_default_entrypoint_and_submission_id(fake):
    assert run_main(["--submission-id", "sweep-7"]) == 0
    assert fake["client"].submitted[0][0] == "python tune_search.py --address auto"
    assert fake["client"].submitted[0][2] == "sweep-7"


def test_no_wait_does_not_follow(fake, capsys):
    fake["client"] = FakeClient(statuses=["RUNNING"])
    assert run_main(["--no-wait"]) == 0
    assert capsys.readouterr().out == "raysubmit_fake123\n"
    assert fake["client"].tailed == []


def test_ctrl_c_while_following_keeps_the_job(fake, capsys):
    fake["client"] = FakeClient(tail_error=KeyboardInterrupt())
    assert run_main(["--address", "http://10.1.2.3:8265"]) == 130
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "raysubmit_fake123"
    assert ("python job/submit.py --stop raysubmit_fake123 --address http://10.1.2.3:8265"
            in captured.err)
    assert fake["client"].stopped == []


def test_ctrl_c_hint_omits_default_address(fake, capsys):
    fake["client"] = FakeClient(tail_error=KeyboardInterrupt())
    assert run_main([]) == 130
    err = capsys.readouterr().err
    assert "python job/submit.py --stop raysubmit_fake123\n" in err


def test_broken_log_stream_falls_back_to_status(fake, capsys):
    fake["client"] = FakeClient(tail_error=RuntimeError("WebSocket closed"),
                                statuses=["RUNNING", "SUCCEEDED"])
    assert run_main([]) == 0
    assert "log stream" in capsys.readouterr().err


def test_submission_error_exits_2(fake, capsys):
    fake["client"] = FakeClient(submit_error=RuntimeError(
        "Request failed with status code 400: submission id already used.\nmore"))
    assert run_main(["--submission-id", "dup"]) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and "job submission failed" in lines[0]


def test_status_error_exits_2(fake, capsys):
    class Gone(FakeClient):
        def get_job_status(self, job_id):
            raise ConnectionError("Failed to connect to Ray")

    fake["client"] = Gone()
    assert run_main([]) == 2
    assert "cannot get the status" in capsys.readouterr().err


@pytest.mark.parametrize("running,message", [(True, "stop requested"), (False, "was not running")])
def test_stop(fake, capsys, running, message):
    fake["client"] = FakeClient(stop_result=running)
    assert sub.main(["--stop", "raysubmit_x", "--address", "http://h:8265"]) == 0
    assert fake["client"].stopped == ["raysubmit_x"]
    assert fake["addresses"] == ["http://h:8265"]
    assert message in capsys.readouterr().out


def test_stop_unknown_job_exits_2(fake, capsys):
    fake["client"] = FakeClient(stop_error=RuntimeError("Job raysubmit_x does not exist"))
    assert sub.main(["--stop", "raysubmit_x"]) == 2
    assert "cannot stop job raysubmit_x" in capsys.readouterr().err
