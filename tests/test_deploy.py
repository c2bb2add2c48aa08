"""The cluster recipes in deploy/: the Kubernetes manifests validate offline against the API's
schemas (kubernetes-validate, strict: no unknown field), their commands parse with sweeper's own
CLI and point at each other's Services, secrets come from a Secret and never stand in a manifest,
every worker asks for one GPU; the Slurm array script passes `bash -n` and its command parses."""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url

from sweeper.cli import build_parser
from sweeper.proxy_client import parse_proxy_url

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
SBATCH = ROOT / "deploy" / "slurm" / "sweeper-workers.sbatch"
KUBERNETES = "1.30.0"  # the oldest Kubernetes release still maintained upstream when written
# user:password@ in a URL, or a password-like key given a literal value
_URL_PASSWORD = re.compile(r"://[^/@\s:]+:[^/@\s]+@")


def _documents() -> list[tuple[str, dict]]:
    return [
        (path.name, doc)
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", [])


def _by_kind_and_name() -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in _documents()}


def _sweeper_args(command: list[str]) -> list[str] | None:
    """The arguments after ``python -m sweeper``, or None for another program."""
    if command[:3] == ["python", "-m", "sweeper"]:
        return command[3:]
    return None


@pytest.mark.parametrize(("name", "doc"), _documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_each_manifest_is_valid_against_the_kubernetes_schemas(name, doc):
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_schema_check_catches_a_misspelled_field():
    job = copy.deepcopy(_by_kind_and_name()[("Job", "sweeper-workers")])
    job["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES, strict=True)


def test_the_recipe_has_the_proxy_mlflow_and_an_indexed_job_of_gpu_workers():
    docs = _by_kind_and_name()
    for key in [
        ("Deployment", "sweeper-storage-proxy"),
        ("Service", "sweeper-storage-proxy"),
        ("Deployment", "mlflow"),
        ("Service", "mlflow"),
        ("Job", "sweeper-workers"),
    ]:
        assert key in docs, key
    job = docs[("Job", "sweeper-workers")]
    assert job["spec"]["completionMode"] == "Indexed"
    (worker,) = _containers(job)
    resources = worker["resources"]
    assert str(resources["limits"]["nvidia.com/gpu"]) == "1"  # one GPU per worker pod
    assert str(resources["requests"]["nvidia.com/gpu"]) == "1"
    assert {"cpu", "memory"} <= set(resources["requests"])


def _service_address(service: dict) -> tuple[str, int]:
    return service["metadata"]["name"], service["spec"]["ports"][0]["port"]


def test_every_sweeper_command_parses_and_the_workers_reach_the_proxy_and_mlflow_services():
    docs = _by_kind_and_name()
    parser = build_parser()
    parsed = {}
    for (_kind, name), doc in docs.items():
        for container in _containers(doc):
            args = _sweeper_args(container["command"])
            if args is not None:
                parsed[name] = parser.parse_args(args)  # exits (SystemExit) on an unknown flag
    proxy, workers = parsed["sweeper-storage-proxy"], parsed["sweeper-workers"]
    assert proxy.command == "storage-proxy" and workers.command == "worker"
    assert workers.workers == 1  # the pod's one GPU
    assert make_url(proxy.storage).get_backend_name() == "postgresql"
    assert proxy.host == "0.0.0.0"
    proxy_service = docs[("Service", "sweeper-storage-proxy")]
    assert parse_proxy_url(workers.storage) == _service_address(proxy_service)
    assert proxy.port == _service_address(proxy_service)[1]
    mlflow = _service_address(docs[("Service", "mlflow")])
    assert workers.tracking_uri == f"http://{mlflow[0]}:{mlflow[1]}"
    mlflow_args = _containers(docs[("Deployment", "mlflow")])[0]["command"]
    assert f"--port={mlflow[1]}" in mlflow_args


def test_passwords_come_from_a_secret_and_no_manifest_holds_one():
    assert not [name for name, doc in _documents() if doc["kind"] == "Secret"]
    for path in K8S.glob("*.yaml"):
        assert not _URL_PASSWORD.search(path.read_text()), f"{path.name} has a URL with a password"
    needing_db = 0
    for name, doc in _documents():
        for container in _containers(doc):
            env = {e["name"]: e for e in container.get("env", [])}
            for key, entry in env.items():
                if re.search(r"PASSWORD|SECRET|TOKEN", key):
                    assert "value" not in entry, f"{name}: {key} is written in the manifest"
                    assert entry["valueFrom"]["secretKeyRef"]["name"] == "sweeper-db"
            needing_db += "PGPASSWORD" in env
    assert needing_db == 2  # the proxy and MLflow; the workers hold no DB password


def _sbatch_command() -> list[str]:
    """The script's worker command line, its shell variables given example values."""
    example = {
        "SPEC": "studies/vader-minilm.toml",
        "SWEEPER_STORAGE": "grpc://proxy-host:13000",
        "MLFLOW_TRACKING_URI": "http://mlflow-host:5000",
    }
    (line,) = [line for line in SBATCH.read_text().splitlines() if line.startswith("srun ")]
    expanded = re.sub(r"\$\{?(\w+)\}?", lambda m: example[m[1]], line)
    return shlex.split(expanded)


def test_the_slurm_script_is_valid_bash_and_asks_one_gpu_per_array_task():
    bash = shutil.which("bash")
    assert bash
    done = subprocess.run([bash, "-n", str(SBATCH)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = SBATCH.read_text()
    assert re.search(r"^#SBATCH --array=\d+-\d+$", text, re.M)
    assert re.search(r"^#SBATCH --gres=gpu:1$", text, re.M)


def test_the_slurm_script_starts_one_worker_that_sweeper_s_cli_parses():
    command = _sbatch_command()
    assert command[:4] == ["srun", "python", "-m", "sweeper"]
    args = build_parser().parse_args(command[4:])
    assert args.command == "worker" and args.workers == 1
    assert args.storage == "grpc://proxy-host:13000"
    assert args.tracking_uri == "http://mlflow-host:5000"
