"""docker-compose.yml, the Dockerfiles and .dockerignore keep the properties docs/docker.md promises.

No Docker engine is needed: the compose file is read as YAML, with `${VAR:-default}` resolved the way
Compose resolves it when VAR is unset, and the Dockerfiles as text.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}")
_PASSWORD_SUBSTITUTION = re.compile(r"\$\{POSTGRES_PASSWORD:-(?P<default>[^}]*)\}")


def _with_defaults(value: str) -> str:
    """``value`` as Compose sees it with no variable set: each ``${VAR:-default}`` is its default."""
    return _VARIABLE.sub(lambda m: "$" if m[0] == "$$" else m["default"] or "", value)


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE.read_text()


@pytest.fixture(scope="module")
def services(compose_text: str) -> dict:
    return yaml.safe_load(compose_text)["services"]


@pytest.fixture(scope="module")
def named_volumes(compose_text: str) -> set[str]:
    return set(yaml.safe_load(compose_text).get("volumes") or {})


def _command(service: dict) -> list[str]:
    command = service["command"]
    return [_with_defaults(part) for part in (command.split() if isinstance(command, str) else command)]


def _option(service: dict, flag: str) -> str | None:
    """The value of ``--flag=value`` or ``--flag value`` in the service's command."""
    command = _command(service)
    for i, part in enumerate(command):
        if part.startswith(flag + "="):
            return part.split("=", 1)[1]
        if part == flag and i + 1 < len(command):
            return command[i + 1]
    return None


def _environment(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: _with_defaults(str(value)) for key, value in environment.items()}


def _volume_mounts(service: dict) -> dict[str, str]:
    """target path -> source, for the short ``source:target[:mode]`` syntax."""
    return {entry.split(":")[1]: entry.split(":")[0] for entry in service.get("volumes", [])}


def _waits_until_healthy(service: dict, dependency: str) -> bool:
    depends_on = service.get("depends_on") or {}
    return (
        isinstance(depends_on, dict) and depends_on.get(dependency, {}).get("condition") == "service_healthy"
    )


def test_compose_defines_postgres_mlflow_and_worker(services: dict) -> None:
    assert {"postgres", "mlflow", "worker"} <= set(services)


def test_postgres_is_healthchecked_with_pg_isready_over_tcp(services: dict) -> None:
    test = " ".join(services["postgres"]["healthcheck"]["test"])
    assert "pg_isready" in test
    # the entrypoint's init-time server listens on the socket only: TCP waits for the init script
    assert "-h 127.0.0.1" in test or "-h localhost" in test


def test_postgres_keeps_its_data_in_a_named_volume(services: dict, named_volumes: set[str]) -> None:
    source = _volume_mounts(services["postgres"]).get("/var/lib/postgresql/data")
    assert source in named_volumes


def test_postgres_init_script_creates_the_optuna_and_mlflow_databases(services: dict) -> None:
    mounts = _volume_mounts(services["postgres"])
    scripts = [
        source for target, source in mounts.items() if target.startswith("/docker-entrypoint-initdb.d")
    ]
    assert len(scripts) == 1
    sql = (ROOT / scripts[0]).read_text().lower()
    assert re.search(r"create database optuna\b", sql)
    assert re.search(r"create database mlflow\b", sql)


def test_mlflow_backend_store_is_the_mlflow_database_on_postgres(services: dict) -> None:
    mlflow = services["mlflow"]
    uri = _option(mlflow, "--backend-store-uri") or _environment(mlflow).get("MLFLOW_BACKEND_STORE_URI")
    assert uri, "no --backend-store-uri nor MLFLOW_BACKEND_STORE_URI"
    url = make_url(uri)
    assert url.get_backend_name() == "postgresql"
    assert (url.host, url.port, url.database) == ("postgres", 5432, "mlflow")


def test_mlflow_image_installs_the_driver_of_its_backend_store_uri(services: dict) -> None:
    build = services["mlflow"]["build"]
    dockerfile = (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).read_text()
    driver = make_url(_environment(services["mlflow"])["MLFLOW_BACKEND_STORE_URI"]).get_driver_name()
    assert re.search(rf"pip install .*\b{driver}(-binary)?\b", dockerfile)


def test_mlflow_serves_artifacts_from_a_named_volume(services: dict, named_volumes: set[str]) -> None:
    mlflow = services["mlflow"]
    assert "--serve-artifacts" in _command(mlflow)
    destination = _option(mlflow, "--artifacts-destination")
    assert destination and destination.startswith("/")
    assert _volume_mounts(mlflow).get(destination) in named_volumes


def test_published_ports_bind_to_localhost_only(services: dict) -> None:
    published = [_with_defaults(port) for service in services.values() for port in service.get("ports", [])]
    assert published, "mlflow's UI must be published"
    for port in published:
        assert port.startswith("127.0.0.1:"), f"{port} listens beyond this machine"
    assert "127.0.0.1:5000:5000" in [_with_defaults(port) for port in services["mlflow"]["ports"]]


def test_mlflow_allowed_hosts_admit_the_browser_and_the_workers_only(services: dict) -> None:
    from mlflow.server.security_utils import is_allowed_host_header

    allowed = _option(services["mlflow"], "--allowed-hosts")
    assert allowed, "--allowed-hosts is not passed"
    hosts = [host.strip() for host in allowed.split(",")]
    for host in ("127.0.0.1:5000", "localhost:5000", "mlflow:5000"):  # browser, browser, workers
        assert is_allowed_host_header(hosts, host), host
    assert not is_allowed_host_header(hosts, "attacker.example:5000")


def test_mlflow_waits_for_postgres_to_be_healthy(services: dict) -> None:
    assert _waits_until_healthy(services["mlflow"], "postgres")


def test_mlflow_is_healthchecked_on_its_health_endpoint(services: dict) -> None:
    assert "/health" in " ".join(services["mlflow"]["healthcheck"]["test"])


def test_worker_builds_from_the_repository_dockerfile(services: dict) -> None:
    build = services["worker"]["build"]
    build = {"context": build} if isinstance(build, str) else build
    assert (ROOT / build["context"]).resolve() == ROOT  # `COPY . .` copies the repository
    assert (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).resolve() == ROOT / "Dockerfile"


def test_worker_reserves_nvidia_gpus_by_device_ids(services: dict) -> None:
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    gpus = [
        device
        for device in devices
        if device.get("driver") == "nvidia" and "gpu" in device.get("capabilities", [])
    ]
    assert len(gpus) == 1
    assert "count" not in gpus[0], "count and device_ids exclude each other"
    device_ids = [_with_defaults(str(device_id)) for device_id in gpus[0]["device_ids"]]
    assert device_ids == ["0"]
    assert "WORKER_GPUS" in str(gpus[0]["device_ids"]), "the GPUs are not configurable"


def test_worker_storage_is_the_optuna_database_on_postgres(services: dict) -> None:
    url = make_url(_environment(services["worker"])["SWEEPER_STORAGE"])
    assert url.drivername == "postgresql+psycopg"  # the driver sweeper depends on
    assert (url.host, url.port, url.database) == ("postgres", 5432, "optuna")


def test_worker_tracks_to_the_mlflow_service(services: dict) -> None:
    assert _environment(services["worker"])["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_worker_waits_for_postgres_and_mlflow_to_be_healthy(services: dict) -> None:
    assert _waits_until_healthy(services["worker"], "postgres")
    assert _waits_until_healthy(services["worker"], "mlflow")


def test_worker_runs_sweeper_worker_on_the_default_spec(services: dict) -> None:
    command = _command(services["worker"])
    assert command[:4] == ["python", "-m", "sweeper", "worker"]
    assert (ROOT / command[4]).is_file()
    assert "SWEEPER_SPEC" in str(services["worker"]["command"])


def test_password_default_appears_only_inside_its_substitution(compose_text: str) -> None:
    defaults = _PASSWORD_SUBSTITUTION.findall(compose_text)
    assert defaults and set(defaults) == {defaults[0]}, "one default, in ${POSTGRES_PASSWORD:-...}"
    password = defaults[0]
    outside = _PASSWORD_SUBSTITUTION.sub("", compose_text)
    others = [ROOT / "Dockerfile", *(ROOT / "docker").iterdir()]
    for name, text in [("docker-compose.yml", outside), *((p.name, p.read_text()) for p in others)]:
        assert password not in text, f"the default password is written out in {name}"


def test_every_database_url_takes_its_password_from_the_environment(services: dict) -> None:
    raw = yaml.safe_dump(services)
    credentials = re.findall(r"://[^:/@\s]+:([^@\s]+)@", raw)
    assert credentials, "no database URL found"
    assert all(_PASSWORD_SUBSTITUTION.fullmatch(secret) for secret in credentials), credentials
    assert _PASSWORD_SUBSTITUTION.fullmatch(services["postgres"]["environment"]["POSTGRES_PASSWORD"])


def test_dockerfile_starts_from_a_pytorch_cuda_runtime_image() -> None:
    base = re.search(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert base and re.fullmatch(r"pytorch/pytorch:[\w.-]*-cuda[\w.-]*-runtime", base[1]), base


def test_dockerfile_copies_the_repository_and_pip_installs_it() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    copy = lines.index("COPY . .")
    assert any(re.match(r"RUN pip install (\S+ )*\.( |$)", line) for line in lines[copy:])


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_image() -> None:
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", "*.db", "mlruns", "reports", ".git", "__pycache__", ".env"} <= ignored
