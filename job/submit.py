"""Submit a fedsweep sweep (or any command) to a Ray cluster as a Ray Job.

Usage::

    python job/submit.py [--address URL] [--runtime-env runtime_env.yaml]
                         [--working-dir .] [--no-wait] [--submission-id ID]
                         [-- python tune_search.py --address auto ARGS...]
    python job/submit.py --stop ID [--address URL]

Everything after ``--`` is the job's entrypoint (default:
``python tune_search.py --address auto``). Inside a job, tune_search.py joins
the cluster named by the job's ``RAY_ADDRESS`` even without ``--address``; the
default passes ``--address auto`` to say so explicitly.
The runtime environment is read from the YAML file and its ``working_dir`` is
replaced by ``--working-dir``; a local working directory is uploaded by the
client. The submission id is printed on its own line on stdout; then, unless
``--no-wait``, the job's log is followed on stdout until the job ends.

Exit status: 0 job SUCCEEDED (or submitted / stop requested, with ``--no-wait`` /
``--stop``); 1 job FAILED or STOPPED; 2 bad input or the cluster could not be
used (one line on stderr); 130 interrupted with Ctrl-C while following the log,
in which case the job keeps running and the command to stop it is printed.

``--address`` defaults to ``$RAY_ADDRESS`` or http://127.0.0.1:8265 (the
dashboard, e.g. through ``ray dashboard cluster.yaml``). An explicit
``--address`` wins over ``$RAY_ADDRESS`` and ``$RAY_API_SERVER_ADDRESS``. For
clusters with token authentication set ``RAY_AUTH_MODE=token``; the token is
read from ``~/.ray/auth_token``.

Works as ``python job/submit.py``, ``python -m job.submit`` and, once the
project is installed, ``fedsweep-submit``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
DEFAULT_RUNTIME_ENV = "runtime_env.yaml"
# --address auto: join the cluster the job runs on (explicit; $RAY_ADDRESS would do the same).
DEFAULT_ENTRYPOINT = ("python", "tune_search.py", "--address", "auto")

# A TCP connect to the address must succeed within this many seconds before the
# Ray client is created: the client's own HTTP requests carry no timeout, so an
# address that drops packets would otherwise hang it indefinitely.
CONNECT_TIMEOUT_S = 5.0
# Seconds between status polls once the log stream has ended.
STATUS_POLL_S = 1.0

EXIT_SUCCEEDED = 0
EXIT_JOB_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

# Environment variables through which Ray's client would override the address.
_ADDRESS_ENV_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


class UsageError(Exception):
    """Bad input or an unusable cluster: reported as one line, exit status 2."""


class _OneLineArgumentParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are a single line on stderr (exit status 2)."""

    def error(self, message: str):
        """Report a command-line error in one line and exit with status 2."""
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see --help)\n")


def default_address() -> str:
    """Return the address used when ``--address`` is not given.

    ``$RAY_ADDRESS`` when set and not empty, else the local dashboard.
    """
    return os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def split_entrypoint(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Split ``argv`` at the first ``--`` into (options, entrypoint words).

    Without ``--`` the entrypoint is empty (the default entrypoint applies).
    """
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser for the options before ``--``."""
    parser = _OneLineArgumentParser(
        prog="python job/submit.py",
        description=(
            "Submit a command (default: python tune_search.py --address auto) to a Ray cluster "
            "as a Ray Job and follow its log, or stop a submitted job."
        ),
        epilog=(
            "Put the job's command after '--', e.g. "
            "python job/submit.py -- python tune_search.py --address auto --help. "
            "Exit status: 0 succeeded, 1 failed/stopped, 2 bad input or "
            "cluster unreachable, 130 interrupted (the job keeps running)."
        ),
    )
    parser.add_argument(
        "--address",
        default=None,
        help=(
            "Ray dashboard / Jobs API address "
            f"(default: $RAY_ADDRESS or {DEFAULT_ADDRESS})"
        ),
    )
    parser.add_argument(
        "--runtime-env",
        default=DEFAULT_RUNTIME_ENV,
        metavar="FILE",
        help=f"runtime environment YAML file (default: {DEFAULT_RUNTIME_ENV})",
    )
    parser.add_argument(
        "--working-dir",
        default=".",
        metavar="DIR",
        help="directory uploaded as the job's working_dir, overriding the "
        "YAML's (default: .)",
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="print the submission id and return without following the log",
    )
    parser.add_argument(
        "--submission-id",
        default=None,
        metavar="ID",
        help="submission id to use (default: one chosen by Ray)",
    )
    parser.add_argument(
        "--stop",
        default=None,
        metavar="ID",
        help="request that the job with this submission id stop, then exit",
    )
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command line into a namespace with an ``entrypoint`` list.

    Raises ``SystemExit`` (status 2) on unknown options, as argparse does, and
    ``UsageError`` for combinations that make no sense.
    """
    options, entrypoint = split_entrypoint(argv)
    args = build_parser().parse_args(options)
    if args.stop is not None:
        if entrypoint:
            raise UsageError("--stop takes no command after '--'")
        if not args.stop.strip():
            raise UsageError("--stop needs a submission id")
    args.entrypoint = entrypoint or list(DEFAULT_ENTRYPOINT)
    if args.address is None:
        args.address = default_address()
    if not args.address.strip():
        raise UsageError("--address is empty")
    return args


def _is_remote_uri(path: str) -> bool:
    """Return True for a URI (s3://, gs://, https://...) rather than a local path."""
    return "://" in path


def load_runtime_env(path: str, working_dir: str) -> Dict[str, Any]:
    """Load the runtime-env YAML at ``path`` and set its ``working_dir``.

    A local ``working_dir`` must be an existing directory; it is made absolute
    so that the upload does not depend on later changes of directory.
    Raises ``UsageError`` for a missing or malformed file.
    """
    import yaml  # a dependency of the project and of ray[default]

    env_path = Path(path)
    if not env_path.is_file():
        raise UsageError(f"runtime env file not found: {path}")
    try:
        with env_path.open() as handle:
            runtime_env = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read runtime env file {path}: {_one_line(exc)}")
    if runtime_env is None:
        runtime_env = {}
    if not isinstance(runtime_env, dict):
        raise UsageError(f"runtime env file {path} must hold a YAML mapping")

    if _is_remote_uri(working_dir):
        runtime_env["working_dir"] = working_dir
    else:
        local = Path(working_dir).expanduser()
        if not local.is_dir():
            raise UsageError(f"working directory not found: {working_dir}")
        runtime_env["working_dir"] = str(local.resolve())
    return runtime_env


def _host_port(address: str) -> Optional[Tuple[str, int]]:
    """Return (host, port) to probe for ``address``, or None if it has none.

    Handles http(s)://host[:port][/...], ray://host:port and bare host:port.
    "auto" and other forms are left to Ray.
    """
    if "://" not in address:
        if address.count(":") != 1:
            return None
        address = "tcp://" + address
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    if port is None:
        port = {"http": 80, "https": 443}.get(parts.scheme)
    if port is None:
        return None
    return parts.hostname, port


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast with ``UsageError`` if nothing accepts TCP at ``address``."""
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else _one_line(exc)
        raise UsageError(
            f"cannot reach the Ray dashboard at {address} ({reason}); "
            "is the cluster up (ray start --head / ray dashboard cluster.yaml)?"
        )


@contextlib.contextmanager
def _address_env_cleared() -> Iterator[None]:
    """Hide Ray's address environment variables for the duration of the block.

    Ray's client lets ``$RAY_ADDRESS`` override the address it is given; the
    address chosen here (explicit, or already taken from ``$RAY_ADDRESS``) must win.
    """
    saved = {name: os.environ.pop(name) for name in _ADDRESS_ENV_VARS if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def make_client(address: str):
    """Return a connected ``JobSubmissionClient`` for ``address``.

    Raises ``UsageError`` if the address is unreachable or is not a Ray
    Jobs API (wrong port, incompatible Ray, authentication failure).
    """
    check_reachable(address)
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:  # ray[default] missing
        raise UsageError(f"cannot import Ray's job client: {_one_line(exc)}")
    try:
        with _address_env_cleared():
            return JobSubmissionClient(address)
    except Exception as exc:  # noqa: BLE001 - any failure here is the cluster's
        hint = ""
        if "uthenticat" in f"{type(exc).__name__} {exc}":
            hint = " (token auth: set RAY_AUTH_MODE=token and put the cluster's token in ~/.ray/auth_token)"
        raise UsageError(f"cannot use the Ray Jobs API at {address}: {_one_line(exc)}{hint}")


def submit(client, entrypoint: Sequence[str], runtime_env: Dict[str, Any],
           submission_id: Optional[str]) -> str:
    """Submit ``entrypoint`` (a list of words) and return the submission id."""
    command = shlex.join(list(entrypoint))
    try:
        return client.submit_job(
            entrypoint=command,
            runtime_env=runtime_env,
            submission_id=submission_id,
        )
    except Exception as exc:  # noqa: BLE001 - reported as one line
        raise UsageError(f"job submission failed: {_one_line(exc)}")


async def _print_log_stream(client, job_id: str) -> None:
    """Print every chunk of the job's log as it arrives, until the stream ends."""
    async for chunk in client.tail_job_logs(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def follow_logs(client, job_id: str) -> None:
    """Follow the job's log on stdout until the job ends.

    A broken log stream is reported on stderr and otherwise ignored: the final
    status is polled afterwards either way. ``KeyboardInterrupt`` propagates.
    """
    try:
        asyncio.run(_print_log_stream(client, job_id))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - the status poll decides the outcome
        print(
            f"warning: log stream for {job_id} ended early: {_one_line(exc)}; "
            "waiting for the job's status",
            file=sys.stderr,
        )


def _status_name(status: Any) -> str:
    """Return a job status (``JobStatus`` or plain string) as its upper-case name."""
    return str(getattr(status, "value", status)).upper()


def wait_for_final_status(client, job_id: str, poll_s: Optional[float] = None) -> str:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED and return that name.

    ``poll_s`` defaults to ``STATUS_POLL_S``. Raises ``UsageError`` if the
    cluster can no longer be asked.
    """
    if poll_s is None:
        poll_s = STATUS_POLL_S
    while True:
        try:
            name = _status_name(client.get_job_status(job_id))
        except Exception as exc:  # noqa: BLE001 - reported as one line
            raise UsageError(f"cannot get the status of job {job_id}: {_one_line(exc)}")
        if name in TERMINAL_STATUSES:
            return name
        time.sleep(poll_s)


def exit_code_for(status_name: str) -> int:
    """Map a terminal job status name to this command's exit status."""
    return EXIT_SUCCEEDED if status_name == "SUCCEEDED" else EXIT_JOB_FAILED


def stop_command(job_id: str, address: str) -> str:
    """Return the command line that stops ``job_id`` (with --address if needed)."""
    words = ["python", "job/submit.py", "--stop", job_id]
    if address != DEFAULT_ADDRESS:
        words += ["--address", address]
    return shlex.join(words)


def run_stop(args: argparse.Namespace) -> int:
    """Handle ``--stop ID``: ask the cluster to stop the job and report."""
    client = make_client(args.address)
    try:
        was_running = client.stop_job(args.stop)
    except Exception as exc:  # noqa: BLE001 - e.g. unknown submission id
        raise UsageError(f"cannot stop job {args.stop}: {_one_line(exc)}")
    if was_running:
        print(f"stop requested for job {args.stop}")
    else:
        print(f"job {args.stop} was not running")
    return EXIT_SUCCEEDED


def run_submit(args: argparse.Namespace) -> int:
    """Handle a submission: submit, print the id, follow, return the exit status."""
    runtime_env = load_runtime_env(args.runtime_env, args.working_dir)
    client = make_client(args.address)
    job_id = submit(client, args.entrypoint, runtime_env, args.submission_id)
    print(job_id, flush=True)
    if args.no_wait:
        print(
            f"submitted; follow with: ray job logs --follow --address {args.address} {job_id}",
            file=sys.stderr,
        )
        return EXIT_SUCCEEDED
    try:
        follow_logs(client, job_id)
        status = wait_for_final_status(client, job_id)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; job {job_id} is still running. "
            f"Stop it with: {stop_command(job_id, args.address)}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(f"job {job_id} {status}", file=sys.stderr)
    return exit_code_for(status)


def _one_line(exc: BaseException) -> str:
    """Return the first non-empty line of an exception's message (or its type)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status instead of exiting."""
    if argv is None:
        argv = sys.argv[1:]
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or bad options (2)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        if args.stop is not None:
            return run_stop(args)
        return run_submit(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        what = "" if args.stop is not None else " before a submission id was received"
        print(f"\ninterrupted{what}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
