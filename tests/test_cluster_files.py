"""Offline checks of the cluster and job files: cluster.yaml, cluster-onprem.yaml,
runtime_env.yaml.

No cloud credentials, network or running Ray are needed; the whole module runs in
about a second.

What `ray up` does with a config file before it touches any cloud
(ray/autoscaler/_private/commands.py, `_bootstrap_config`, Ray 2.60.0):

1. `prepare_config(config)`: merges the provider's defaults.yaml (read from the
   installed Ray package), merges setup commands, checks the docker section and
   fills per-node-type min/max workers. For `type: local` it first rewrites the
   config into Ray's single on-prem node type. Offline, no boto3.
2. the provider's `fillout_available_node_types_resources` and, after
   validation, `bootstrap_config`. For AWS both import boto3 and call AWS (IAM,
   key pairs, subnets, security groups, instance types), so they cannot run
   offline; they are skipped here. That is also why cluster.yaml declares every
   node type's `resources` itself, and this module checks them against a table
   of instance types below. For `type: local` both are offline no-ops and run.
3. `validate_config(config)`: the JSON schema shipped with Ray plus the
   cross-field checks (head type present, min_workers <= max_workers, ...).

These are private Ray APIs; their signatures were read from the installed
ray 2.60.0 (`prepare_config(config: dict) -> dict`, `validate_config(config:
dict) -> None`). If a Ray upgrade moves them, this test must follow.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import yaml

from fl_core.settings import RAY_SYSTEM_CONFIG

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

REPO = Path(__file__).resolve().parents[1]
CLUSTER_FILES = ["cluster.yaml", "cluster-onprem.yaml"]
RAY_PIN_RE = re.compile(r"^ray(\[[^\]]*\])?==(?P<version>[0-9][^;,\s]*)$")
IMAGE_RE = re.compile(r"^rayproject/ray:(?P<version>\d+\.\d+\.\d+)-(?P<py>py\d+)-(?P<kind>cpu|gpu)$")
DASHBOARD_PORT = 8265

# vCPUs and GPUs of the EC2 instance types cluster.yaml may use (AWS instance
# type specifications). Ray starts each node with exactly the declared
# resources, so declaring more than the machine has oversubscribes it and
# declaring less wastes it. Add a row when cluster.yaml uses a new type.
INSTANCE_TYPES: Dict[str, Dict[str, int]] = {
    "m6i.xlarge": {"CPU": 4, "GPU": 0},
    "m6i.2xlarge": {"CPU": 8, "GPU": 0},
    "m6i.4xlarge": {"CPU": 16, "GPU": 0},
    "c6i.2xlarge": {"CPU": 8, "GPU": 0},
    "c6i.4xlarge": {"CPU": 16, "GPU": 0},
    "c6i.8xlarge": {"CPU": 32, "GPU": 0},
    "g5.xlarge": {"CPU": 4, "GPU": 1},
    "g5.2xlarge": {"CPU": 8, "GPU": 1},
    "g5.4xlarge": {"CPU": 16, "GPU": 1},
    "g5.12xlarge": {"CPU": 48, "GPU": 4},
    "g6.2xlarge": {"CPU": 8, "GPU": 1},
}


# --------------------------------------------------------------------------- helpers


def load_yaml(name: str) -> Dict[str, Any]:
    """Load a YAML file of the repository root as a dict."""
    with open(REPO / name) as handle:
        data = yaml.safe_load(handle)
    assert isinstance(data, dict), f"{name} does not hold a mapping"
    return data


def pyproject_dependencies() -> List[str]:
    """Return [project].dependencies of pyproject.toml, in order."""
    text = (REPO / "pyproject.toml").read_text()
    if tomllib is not None:
        return list(tomllib.loads(text)["project"]["dependencies"])
    # Python 3.10 fallback: the dependencies array, one quoted string a line.
    block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", text, re.S | re.M)
    assert block, "no dependencies array in pyproject.toml"
    return re.findall(r'^\s*"([^"]+)"', block.group(1), re.M)


def ray_pin(dependencies: List[str]) -> str:
    """Return X from the single `ray[...]==X` requirement in ``dependencies``."""
    versions = [m.group("version") for d in dependencies if (m := RAY_PIN_RE.match(d.strip()))]
    assert len(versions) == 1, f"expected exactly one exact Ray pin, got {dependencies}"
    return versions[0]


def prepared(name: str) -> Dict[str, Any]:
    """Return the config as `ray up` sees it after its offline steps."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(load_yaml(name))
    if config["provider"]["type"] == "local":
        # Offline for the local provider (see the module docstring).
        from ray.autoscaler._private.providers import _get_node_provider_cls

        provider_cls = _get_node_provider_cls(config["provider"])
        config = provider_cls.fillout_available_node_types_resources(config)
        validate_config(config)
        config = provider_cls.bootstrap_config(config)
    validate_config(config)
    return config


def docker_images(config: Dict[str, Any]) -> Dict[str, str]:
    """Map each node type of a prepared config to the image its container runs.

    Mirrors the launcher: the head uses docker.head_image (else docker.image);
    a worker type's own `docker` section overrides the global one key by key,
    then worker_image (else image) applies.
    """
    docker = config.get("docker") or {}
    images = {}
    for name, node_type in config["available_node_types"].items():
        merged = dict(docker)
        if name == config["head_node_type"]:
            images[name] = merged.get("head_image", merged.get("image"))
        else:
            merged.update(node_type.get("docker") or {})
            images[name] = merged.get("worker_image", merged.get("image"))
    return images


def all_image_strings(config: Dict[str, Any]) -> List[str]:
    """Every image name written anywhere in a config's docker sections."""
    found = []
    sections = [config.get("docker") or {}]
    sections += [t.get("docker") or {} for t in config.get("available_node_types", {}).values()]
    for section in sections:
        for key in ("image", "head_image", "worker_image"):
            if key in section:
                found.append(section[key])
    return found


def walk_dicts(node: Any) -> Iterator[Dict[str, Any]]:
    """Yield every dict nested anywhere in ``node``."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk_dicts(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk_dicts(value)


def public_rules_for_port(config: Dict[str, Any], port: int) -> List[Dict[str, Any]]:
    """Security-group rules (EC2 IpPermissions) anywhere in ``config`` that let
    the whole internet (0.0.0.0/0 or ::/0) reach TCP ``port``."""
    bad = []
    for rule in walk_dicts(config):
        if not any(k in rule for k in ("IpRanges", "Ipv6Ranges")):
            continue
        protocol = str(rule.get("IpProtocol", "-1"))
        if protocol not in ("-1", "tcp", "6", "all"):
            continue
        low, high = rule.get("FromPort", -1), rule.get("ToPort", -1)
        covers = protocol in ("-1", "all") or low in (-1, None) or low <= port <= high
        cidrs = [r.get("CidrIp") for r in rule.get("IpRanges", []) or []]
        cidrs += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", []) or []]
        if covers and any(c in ("0.0.0.0/0", "::/0") for c in cidrs):
            bad.append(rule)
    return bad


def commented_block(text: str, key: str) -> str | None:
    """Return the YAML of a commented-out top-level ``key:`` block, uncommented.

    The block is the `# key:` line and the following comment lines indented
    deeper than it (e.g. `#   packages:`).
    """
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"^#\s?{re.escape(key)}:\s*$", line):
            block = [line.lstrip("#").lstrip()]
            for follow in lines[i + 1 :]:
                if not re.match(r"^#\s{2,}\S", follow):
                    break
                block.append(follow[2:] if follow.startswith("# ") else follow[1:])
            return "\n".join(block)
    return None


# --------------------------------------------------------------------------- versions


def test_pyproject_pins_the_installed_ray():
    import ray

    assert ray_pin(pyproject_dependencies()) == ray.__version__


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_docker_images_match_the_ray_pin(name):
    pin = ray_pin(pyproject_dependencies())
    images = all_image_strings(load_yaml(name))
    assert images, f"{name} names no docker image"
    for image in images:
        match = IMAGE_RE.match(image)
        assert match, f"{name}: unexpected image name {image!r}"
        assert match.group("version") == pin, f"{name}: {image} is not Ray {pin}"


def test_all_images_use_one_python():
    pythons = {
        IMAGE_RE.match(image).group("py") for name in CLUSTER_FILES for image in all_image_strings(load_yaml(name))
    }
    assert len(pythons) == 1, f"images mix Python versions: {pythons}"


def test_runtime_env_pip_list_is_pyproject_dependencies():
    """The pip list in runtime_env.yaml (active or the commented alternative)
    must be exactly pyproject's dependencies, Ray pin included."""
    text = (REPO / "runtime_env.yaml").read_text()
    env = yaml.safe_load(text)
    if "pip" in env:
        pip = env["pip"]
    else:
        block = commented_block(text, "pip")
        assert block, "runtime_env.yaml has neither a pip field nor the commented alternative"
        pip = yaml.safe_load(block)["pip"]
    packages = pip["packages"] if isinstance(pip, dict) else pip
    assert packages == pyproject_dependencies()
    assert ray_pin(packages) == ray_pin(pyproject_dependencies())
    if isinstance(pip, dict):
        assert pip.get("pip_check") is False

    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(pip=pip)  # Ray accepts the block's shape


# --------------------------------------------------------------------------- ray up


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_ray_up_offline_validation_passes(name):
    config = prepared(name)
    assert config["head_node_type"] in config["available_node_types"]
    assert config["docker"]["container_name"]


def test_aws_provider_and_region():
    config = load_yaml("cluster.yaml")
    assert config["provider"]["type"] == "aws"
    assert re.fullmatch(r"[a-z]{2}-[a-z]+-\d", config["provider"]["region"])


def test_aws_workers_autoscale_from_zero():
    config = prepared("cluster.yaml")
    workers = {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}
    assert len(workers) >= 2
    for name, node_type in workers.items():
        assert node_type["min_workers"] == 0, name
        assert node_type["max_workers"] >= 1, name
    raw = load_yaml("cluster.yaml")["available_node_types"]
    for name in workers:
        assert raw[name].get("min_workers") == 0, f"{name}: say min_workers: 0 explicitly"


def test_aws_declared_resources_match_instance_types():
    config = prepared("cluster.yaml")
    head = config["head_node_type"]
    for name, node_type in config["available_node_types"].items():
        instance = node_type["node_config"]["InstanceType"]
        assert instance in INSTANCE_TYPES, f"add {instance} to INSTANCE_TYPES"
        spec = INSTANCE_TYPES[instance]
        declared = node_type["resources"]
        assert declared.get("GPU", 0) == spec["GPU"], name
        if name == head:
            # The head may advertise fewer CPUs than it has (0 keeps trials off it).
            assert 0 <= declared.get("CPU", 0) <= spec["CPU"], name
        else:
            assert declared.get("CPU") == spec["CPU"], name


def test_aws_gpu_worker_declares_gpus_and_runs_the_gpu_image():
    config = prepared("cluster.yaml")
    images = docker_images(config)
    gpu_types = [name for name, t in config["available_node_types"].items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "no node type declares GPU resources"
    for name in gpu_types:
        assert images[name].endswith("-gpu"), f"{name} runs {images[name]}"
        run_options = config["available_node_types"][name].get("docker", {}).get("worker_run_options", []) + config[
            "docker"
        ].get("run_options", [])
        assert any("--gpus" in opt or "nvidia" in opt for opt in run_options), name
    for name, t in config["available_node_types"].items():
        if name not in gpu_types:
            assert images[name].endswith("-cpu"), f"{name} runs {images[name]}"


def test_aws_instances_can_write_to_s3():
    """Tune writes results from every node to s3://: workers need an instance
    profile too (Ray only gives one to the head by default)."""
    config = load_yaml("cluster.yaml")
    for name, node_type in config["available_node_types"].items():
        if name != config["head_node_type"]:
            assert "IamInstanceProfile" in node_type["node_config"], name


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_dashboard_is_not_public(name):
    raw = load_yaml(name)
    config = prepared(name)
    assert public_rules_for_port(raw, DASHBOARD_PORT) == []
    assert public_rules_for_port(config, DASHBOARD_PORT) == []
    head_start = " ".join(config["head_start_ray_commands"])
    # Ray's AWS defaults would bind the dashboard to 0.0.0.0.
    assert re.search(r"--dashboard-host[= ]127\.0\.0\.1\b", head_start), head_start
    assert "0.0.0.0" not in head_start


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_head_starts_with_fedsweeps_ray_system_config(name):
    """A cluster's head carries the system config a local fedsweep run starts Ray with (it reaches every node)."""
    head_start = " ".join(load_yaml(name)["head_start_ray_commands"])
    found = re.search(r"--system-config='([^']*)'", head_start)
    assert found, head_start
    assert json.loads(found.group(1)) == RAY_SYSTEM_CONFIG


def test_public_rule_detector_detects():
    """The check above is not vacuous: it flags the rules it is meant to."""
    open_all = {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    open_range = {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 9000, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    open_v6 = {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
    private = {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}
    ssh = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    config = {"provider": {"security_group": {"IpPermissions": [open_all, open_range, open_v6, private, ssh]}}}
    assert public_rules_for_port(config, DASHBOARD_PORT) == [open_all, open_range, open_v6]


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_nodes_install_the_synced_project(name):
    config = load_yaml(name)
    assert config["file_mounts"].get("~/fedsweep") == "."
    commands = config["setup_commands"]
    assert any(re.search(r"pip install .*-e ~/fedsweep\b", c) for c in commands), commands
    excludes = " ".join(config.get("rsync_exclude", []))
    for path in ("data/", ".venv/", ".git"):
        assert path in excludes, f"{name}: rsync_exclude misses {path}"


def test_both_cluster_files_share_setup_commands():
    assert load_yaml("cluster.yaml")["setup_commands"] == load_yaml("cluster-onprem.yaml")["setup_commands"]


def test_onprem_uses_local_provider_and_shared_storage():
    config = load_yaml("cluster-onprem.yaml")
    provider = config["provider"]
    assert provider["type"] == "local"
    assert provider["head_ip"] and provider["worker_ips"]
    assert config["auth"]["ssh_user"]
    # The NFS results directory must be visible inside the containers.
    assert any(opt.startswith("-v /mnt/") for opt in config["docker"]["run_options"])


# --------------------------------------------------------------------------- runtime env


REQUIRED_EXCLUDES = [
    "data/",
    "results/",
    "runs/",
    "ray_results/",
    ".venv/",
    "venv/",
    ".git",
    ".whl/",
    "__pycache__/",
    "*.egg-info",
    ".pytest_cache/",
]


def test_runtime_env_fields():
    env = load_yaml("runtime_env.yaml")
    assert env["working_dir"] == "."
    for pattern in REQUIRED_EXCLUDES:
        assert pattern in env["excludes"], f"excludes misses {pattern}"
    assert env["env_vars"] == {"PYTHONUNBUFFERED": "1"}
    assert set(env) <= {"working_dir", "excludes", "env_vars", "pip", "py_modules", "config"}

    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**env)  # Ray's own validation of the fields


def test_runtime_env_excludes_work_when_packaging(tmp_path):
    """Package a fake checkout exactly as the job client does (without
    .gitignore's help) and check what goes into the upload."""
    from ray._private.runtime_env.packaging import create_package

    checkout = tmp_path / "checkout"
    keep = [
        "tune_search.py",
        "fl_core/__init__.py",
        "fl_sweep/tuner.py",
        "apps/cifar10/pyproject.toml",
        "apps/cifar10/cifar10_app/data.py",
        "examples/quickstart-pytorch/pytorchexample/task.py",
    ]
    drop = [
        "data/cifar-10-batches-py/data_batch_1",
        ".venv/lib/torch.so",
        ".git/HEAD",
        "results/x.csv",
        "runs/a/b.json",
        "ray_results/exp/trial/ckpt.pt",
        ".whl/ray.whl",
        "fl_core/__pycache__/x.cpython-311.pyc",
        "fedsweep.egg-info/PKG-INFO",
        ".pytest_cache/v/cache",
        "venv/bin/python",
    ]
    for rel in keep + drop:
        path = checkout / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")

    package = tmp_path / "package.zip"
    create_package(
        str(checkout),
        package,
        include_gitignore=False,
        excludes=load_yaml("runtime_env.yaml")["excludes"],
    )
    with zipfile.ZipFile(package) as archive:
        names = {n.rstrip("/") for n in archive.namelist()}
    for rel in keep:
        assert rel in names, f"{rel} missing from the job package"
    for rel in drop:
        assert rel not in names, f"{rel} would be uploaded"
