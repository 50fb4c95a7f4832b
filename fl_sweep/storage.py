"""Where a sweep lives: local or remote storage, and the marker file that says it is ours."""

from __future__ import annotations

import json
import os
import time

from fl_core.settings import ConfigError, check_can_create
from fl_sweep.spec import SweepSpec

DEFAULT_STORAGE = "./ray_results"
DEFAULT_NAME = "fedsweep"
# The marker file: a sweep's settings, and proof that a folder holds a sweep of this tool.
MARKER_FILE = "fedsweep_sweep.json"
MARKER_FORMAT = "fedsweep-tune-sweep"
MARKER_VERSION = 2

# ---------------------------------------------------------------------------
# Storage and the marker file


def is_uri(path: str) -> bool:
    """Whether `path` names remote storage (s3://, gs://, ...) rather than a local or NFS path."""
    return "://" in path and not path.startswith("file://")


def experiment_location(storage_path: str | None, name: str | None) -> str:
    """The experiment directory (absolute local path or URI) for --storage-path and --name."""
    name = name or DEFAULT_NAME
    if not name.strip() or "/" in name or name in (".", ".."):
        raise ConfigError(f"--name must be a plain folder name, got {name!r}")
    storage = storage_path or DEFAULT_STORAGE
    if storage.startswith("file://"):
        storage = storage[len("file://") :]
    if is_uri(storage):
        return storage.rstrip("/") + "/" + name
    storage = os.path.expanduser(storage)
    if not os.path.isabs(storage) and in_job_working_copy(os.getcwd()):
        raise ConfigError(
            f"--storage-path {storage!r} is relative, but this Ray Job runs in Ray's temporary copy of its "
            f"working directory ({os.getcwd()}), deleted with the Ray session: give an absolute path or a URI, "
            "e.g. --storage-path ~/ray_results or s3://BUCKET/fedsweep"
        )
    return os.path.join(os.path.abspath(storage), name)


def in_job_working_copy(cwd: str) -> bool:
    """Whether `cwd` lies in Ray's per-session copy of a runtime_env working_dir (what a Ray Job runs in)."""
    marker = os.path.join("runtime_resources", "working_dir_files")  # Ray's runtime_env layout
    return f"{os.sep}{marker}{os.sep}" in os.path.join(cwd, "")


def filesystem(path: str):
    """(pyarrow filesystem, path within it) for a URI or local path."""
    import pyarrow.fs

    if not is_uri(path):
        return pyarrow.fs.LocalFileSystem(), path
    try:
        return pyarrow.fs.FileSystem.from_uri(path)
    except Exception as exc:  # missing credentials, unknown scheme, no network: one message for all
        raise ConfigError(f"cannot open storage {path}: {type(exc).__name__}: {exc}") from None


def exists(path: str) -> bool:
    """Whether a local path or URI exists."""
    if not is_uri(path):
        return os.path.exists(path)
    import pyarrow.fs

    fs, inner = filesystem(path)
    try:
        return fs.get_file_info(inner).type != pyarrow.fs.FileType.NotFound
    except Exception as exc:
        raise ConfigError(f"cannot reach storage {path}: {type(exc).__name__}: {exc}") from None


def check_writable(experiment: str) -> None:
    """ConfigError unless the experiment folder can be created (local paths; remote ones are checked by Ray)."""
    if not is_uri(experiment):
        check_can_create(experiment, "--storage-path")


def read_marker(experiment: str) -> dict:
    """The marker document of a sweep made by this tool; ConfigError if `experiment` is not one."""
    path = experiment.rstrip("/") + "/" + MARKER_FILE
    if not exists(path):
        raise ConfigError(
            f"{experiment} holds no sweep made by fedsweep-tune (no {MARKER_FILE}); check --storage-path and --name"
        )
    fs, inner = filesystem(path)
    try:
        with fs.open_input_stream(inner) as f:
            marker = json.loads(f.readall().decode())
        if marker.get("format") != MARKER_FORMAT:
            raise ValueError("wrong format")
        SweepSpec.from_dict(marker["spec"])
    except Exception as exc:
        raise ConfigError(f"{path} is not a valid fedsweep-tune marker ({exc})") from None
    if marker.get("version") != MARKER_VERSION:
        raise ConfigError(f"{path} has marker version {marker.get('version')}; this tool reads {MARKER_VERSION}")
    return marker


def write_marker(experiment: str, spec: SweepSpec) -> None:
    """Write the marker (sweep settings) into the experiment folder, creating it."""
    marker = {
        "format": MARKER_FORMAT,
        "version": MARKER_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "spec": spec.to_dict(),
    }
    fs, inner = filesystem(experiment)
    fs.create_dir(inner, recursive=True)
    with fs.open_output_stream(inner.rstrip("/") + "/" + MARKER_FILE) as f:
        f.write(json.dumps(marker, indent=1).encode())
