"""docker-compose.yml, checked without a Docker engine: the Compose Specification's JSON schema,
`docker-compose config` where that binary is installed, and the properties the stack relies on.
Variables are resolved from .env.example alone, as a fresh `cp .env.example .env` would."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"

WORKERS = ("worker", "worker-gpu")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN")
SECRET_VARIABLE = re.compile(r"PASSWORD|SECRET")  # the .env variables secrets-check vets (not names, keys' ids)
# $$ (a literal $), $NAME, ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}
REFERENCE = re.compile(r"\$(?:(?P<escaped>\$)|(?P<named>[A-Za-z_]\w*)|\{(?P<braced>[^}]*)\})")
BRACED = re.compile(r"(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>.*))?", re.DOTALL)
REQUIRED_REF = re.compile(r"\$\{[A-Za-z_]\w*(?::?\?[^}]*)?\}")  # a variable with no default


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def references(text: str):
    """(name, operator) for each variable reference in a string; operator None for ${NAME}."""
    for m in REFERENCE.finditer(text):
        if m["named"]:
            yield m["named"], None
        elif m["braced"] is not None:
            b = BRACED.fullmatch(m["braced"])
            assert b, f"bad variable reference ${{{m['braced']}}}"
            yield b["name"], b["op"]


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's substitution. A missing required variable becomes empty here: the test about
    .env.example reports it, rather than every test failing at import."""

    def substitute(m: re.Match) -> str:
        if m["escaped"]:
            return "$"
        if m["named"]:
            return env.get(m["named"], "")
        b = BRACED.fullmatch(m["braced"])
        value, op = env.get(b["name"]), b["op"]
        unset = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in ("-", ":-"):
            return b["arg"] if unset else value
        return value or ""

    return REFERENCE.sub(substitute, text)


def walk(node, fn):
    if isinstance(node, dict):
        return {k: walk(v, fn) for k, v in node.items()}
    if isinstance(node, list):
        return [walk(v, fn) for v in node]
    return fn(node) if isinstance(node, str) else node


def strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    elif isinstance(node, str):
        yield node


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


RAW = yaml.safe_load(COMPOSE.read_text())
ENV = read_env_file(ENV_EXAMPLE)
SERVICES = walk(RAW, lambda s: interpolate(s, ENV))["services"]
RAW_SERVICES = RAW["services"]
ONE_SHOTS = {
    name
    for s in SERVICES.values()
    if isinstance(s.get("depends_on"), dict)
    for name, dep in s["depends_on"].items()
    if isinstance(dep, dict) and dep.get("condition") == "service_completed_successfully"
}
LONG_RUNNING = sorted(set(SERVICES) - ONE_SHOTS)


def secret_variables(node) -> set[str]:
    """The secret .env variables that ``node`` (a raw service, or the whole file) refers to."""
    return {name for text in strings(node) for name, _ in references(text) if SECRET_VARIABLE.search(name)}


# Values that pass docker/check_secrets.sh: .env.example with each secret replaced.
GOOD_ENV = {k: (f"{k.lower().replace('_', '-')}-Xq7v2Lm9pR4t" if SECRET_VARIABLE.search(k) else v)
            for k, v in ENV.items()}


def test_compose_file_matches_the_compose_spec_schema():
    import jsonschema
    from check_jsonschema.builtin_schemas import get_builtin_schema

    schema = get_builtin_schema("vendor.compose-spec")
    validator = jsonschema.validators.validator_for(schema)
    errors = list(validator(schema, format_checker=validator.FORMAT_CHECKER).iter_errors(RAW))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose not on PATH (Debian: apt-get install docker-compose)",
)
def test_docker_compose_config_accepts_the_file(tmp_path: Path):
    """docker-compose 1.29 (Debian's) has its own schema and interpolation: a second opinion.
    Run with a clean environment so the caller's variables cannot fill the gaps."""

    def config(env_text: str, *args: str) -> subprocess.CompletedProcess:
        env_file = tmp_path / "compose.env"
        env_file.write_text(env_text)
        return subprocess.run(
            ["docker-compose", "-f", COMPOSE, "--env-file", env_file, *args, "config", "-q"],
            check=False, cwd=ROOT, env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
            capture_output=True, text=True, timeout=60,
        )

    for args in ((), ("--profile", "gpu")):
        done = config(ENV_EXAMPLE.read_text(), *args)
        assert done.returncode == 0, done.stderr
    missing = config("")  # no .env: the credentials are required, not defaulted
    assert missing.returncode != 0 and "in .env" in missing.stderr, missing.stderr
    good = "".join(f"{k}={v}\n" for k, v in GOOD_ENV.items())
    assert config(good).returncode == 0
    for name in sorted(secret_variables(RAW)):  # each secret alone missing: refused, by its name
        without = "".join(f"{k}={v}\n" for k, v in GOOD_ENV.items() if k != name)
        done = config(without)
        assert done.returncode != 0 and f"set {name} in .env" in done.stderr, (name, done.stderr)


def test_secrets_check_vets_every_secret_before_any_service_that_uses_it():
    """Every secret the file refers to is in secrets-check's list, and every service that refers
    to one waits for secrets-check to succeed; a `cp .env.example .env` stack refuses to start,
    good values start (the script itself: tests/test_compose_secrets.py)."""
    check = RAW_SERVICES["secrets-check"]
    script = [v["source"] if isinstance(v, dict) else v.split(":")[0] for v in check["volumes"]]
    assert "./docker/check_secrets.sh" in script and "./.env.example" in script, script
    assert check["entrypoint"][-2:] == ["-e", "/checks/env.example"]
    checked = set(check["command"])
    assert checked == secret_variables(RAW), checked ^ secret_variables(RAW)
    assert set(environment(check)) == checked and not check.get("restart")
    users = sorted(n for n, service in RAW_SERVICES.items() if n != "secrets-check" and secret_variables(service))
    assert {"postgres", "seaweedfs", "mlflow", "mlflow-users", "worker", "prefect-server"} <= set(users)
    for name in users:
        dep = (SERVICES[name].get("depends_on") or {}).get("secrets-check") or {}
        assert dep.get("condition") == "service_completed_successfully", f"{name} does not wait for secrets-check"

    def run(env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run(["/bin/sh", ROOT / "docker/check_secrets.sh", "-e", ENV_EXAMPLE, *check["command"]],
                              env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=30)

    assert run(ENV).returncode == 1  # .env.example as it is
    done = run(GOOD_ENV)
    assert done.returncode == 0, done.stderr


def test_one_shots_are_the_checks_and_setups_and_never_restart():
    assert ONE_SHOTS == {"secrets-check", "postgres-init", "create-bucket", "mlflow-users"}
    for name in ONE_SHOTS:
        assert SERVICES[name].get("restart", "no") == "no", name


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_service_has_a_healthcheck(name: str):
    check = SERVICES[name].get("healthcheck") or {}
    assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
    assert check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: test must start CMD or CMD-SHELL"


def test_every_dependency_waits_on_a_condition():
    for name, service in SERVICES.items():
        deps = service.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on as a list waits for nothing"
        for dep, spec in deps.items():
            assert dep in SERVICES, f"{name} depends on unknown service {dep}"
            condition = (spec or {}).get("condition")
            if dep in ONE_SHOTS:
                assert condition == "service_completed_successfully", f"{name} -> {dep}"
            else:
                assert condition == "service_healthy", f"{name} -> {dep}: {condition}"
                assert SERVICES[dep].get("healthcheck"), f"{name} waits on {dep}, which has none"


def test_published_ports_bind_to_loopback_by_default():
    published = 0
    for name, service in SERVICES.items():
        assert service.get("network_mode") != "host", f"{name}: host networking publishes all"
        for port in service.get("ports", []):
            if isinstance(port, dict):
                host_ip = port.get("host_ip")
            else:
                parts = str(port).rsplit(":", 2)
                host_ip = parts[0] if len(parts) == 3 else None
            assert host_ip == "127.0.0.1", f"{name}: port {port!r} is not bound to 127.0.0.1"
            published += 1
    assert published >= 2  # the MLflow and Prefect UIs


def test_no_literal_secrets_in_the_compose_file():
    for name, service in RAW_SERVICES.items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert REQUIRED_REF.fullmatch(value), (
                    f"{name}: {key} must be a variable without a default, not {value!r}"
                )
    for text in strings(RAW):
        for user, password in re.findall(r"://([^/@\s]+):([^/@\s]+)@", text):
            for part in (user, password):
                assert REQUIRED_REF.fullmatch(part) or part.startswith("$$"), (
                    f"credentials written into {text!r}"
                )


def test_env_example_defines_every_required_variable_and_mentions_the_rest():
    text = ENV_EXAMPLE.read_text()
    refs = {(name, op) for s in strings(RAW) for name, op in references(s)}
    required = {name for name, op in refs if op in (None, "?", ":?")}
    optional = {name for name, op in refs} - required
    assert required <= ENV.keys(), f"missing from .env.example: {sorted(required - ENV.keys())}"
    assert not [n for n in optional if n not in text], "optional variables .env.example omits"
    for key, value in ENV.items():  # placeholders only
        if re.search(r"PASSWORD|SECRET", key):
            assert "change-me" in value, f".env.example: {key} looks like a real secret"


def _pinned(image: str) -> bool:
    m = re.fullmatch(r"(?:[^/\s]+/)*[^/:@\s]+:(?P<tag>[\w][\w.-]*)", image)
    return bool(m) and m["tag"] != "latest" and re.search(r"\d+\.\d+", m["tag"]) is not None


def test_every_image_is_pinned_to_an_exact_tag():
    for name, service in SERVICES.items():
        assert ("image" in service) != ("build" in service), f"{name}: image or build, not both"
        if "image" in service:
            assert _pinned(service["image"]), f"{name}: {service['image']!r} is not pinned"
    # Built services: every base image in the Dockerfile (ARG defaults substituted).
    args, stages = {}, set()
    for line in DOCKERFILE.read_text().splitlines():
        if m := re.match(r"ARG\s+(\w+)=(\S+)", line):
            args.setdefault(m[1], m[2])
        if m := re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE):
            base = re.sub(r"\$\{(\w+)\}", lambda a: args.get(a[1], ""), m[1])
            assert base in stages or _pinned(base), f"Dockerfile: FROM {m[1]} is not pinned"
            stages.add(m[2])
    for name, service in SERVICES.items():
        if "build" in service:
            assert service["build"].get("target") in stages, f"{name}: no such Dockerfile stage"


def test_worker_clients_match_the_servers():
    """A Prefect or MLflow client newer than its server calls endpoints the server lacks."""
    dockerfile = DOCKERFILE.read_text()
    prefect = re.search(r"^ARG PREFECT_VERSION=(\S+)", dockerfile, re.MULTILINE)[1]
    assert SERVICES["prefect-server"]["image"] == f"prefecthq/prefect:{prefect}-python3.11"
    # One MLFLOW_VERSION for the server's base image and the worker's pip install.
    assert re.search(r"^FROM ghcr\.io/mlflow/mlflow:v\$\{MLFLOW_VERSION\} AS mlflow-server$",
                     dockerfile, re.MULTILINE)
    assert '"mlflow==${MLFLOW_VERSION}"' in dockerfile
    assert SERVICES["mlflow"]["build"]["target"] == "mlflow-server"


def test_workers_reach_the_servers_by_service_name_without_storage_credentials():
    mlflow_args = SERVICES["mlflow"]["command"]
    allowed = next(a.split("=", 1)[1] for a in mlflow_args if a.startswith("--allowed-hosts="))
    allowed = [h.strip() for h in allowed.split(",")]
    for host in ("mlflow:5000", "localhost:5000", "127.0.0.1:5000"):  # MLflow matches like this
        assert any(fnmatch.fnmatch(host, p) if "*" in p else host == p for p in allowed), host
    assert {"--serve-artifacts", "--workers=1"} <= set(mlflow_args)
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3: name the driver each image has.
    store = environment(SERVICES["mlflow"])["MLFLOW_BACKEND_STORE_URI"]
    assert store.startswith("postgresql+psycopg://") and "psycopg[binary]" in DOCKERFILE.read_text()
    prefect_db = environment(SERVICES["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect_db.startswith("postgresql+asyncpg://")
    destination = next(a for a in mlflow_args if a.startswith("--artifacts-destination=s3://"))
    created = re.findall(r"--bucket (\S+)", " ".join(SERVICES["create-bucket"]["command"]))
    assert created and set(created) == {destination.rsplit("/", 1)[1]}, created
    for name in WORKERS:
        env = environment(SERVICES[name])
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        # no storage credentials; the MLflow login (basic-auth) only, from .env
        assert not [k for k in env if k.startswith("AWS_")
                    or (SECRET_NAME.search(k) and k != "MLFLOW_TRACKING_PASSWORD")], name
        assert REQUIRED_REF.fullmatch(environment(RAW_SERVICES[name])["MLFLOW_TRACKING_PASSWORD"]), name


@pytest.mark.parametrize("name", WORKERS)
def test_workers_log_in_to_mlflow_as_their_own_user_not_the_admin(name: str):
    raw = environment(RAW_SERVICES[name])
    assert raw["MLFLOW_TRACKING_USERNAME"].startswith("${MLFLOW_WORKER_USER:?")
    assert raw["MLFLOW_TRACKING_PASSWORD"].startswith("${MLFLOW_WORKER_PASSWORD:?")
    assert not [n for n, _ in (r for t in strings(RAW_SERVICES[name]) for r in references(t)) if "ADMIN" in n]
    assert ENV["MLFLOW_WORKER_USER"] != ENV["MLFLOW_ADMIN_USER"]
    # the user exists, with its grants, before a worker starts: the one-shot that makes it
    deps = SERVICES[name]["depends_on"]
    assert deps["mlflow-users"]["condition"] == "service_completed_successfully"
    users = SERVICES["mlflow-users"]
    assert users["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert users["command"] == ["python", "/checks/mlflow_users.py"]
    assert any(v.startswith("./docker/mlflow_users.py:/checks/mlflow_users.py") for v in users["volumes"])
    assert {"MLFLOW_ADMIN_USER", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_WORKER_USER", "MLFLOW_WORKER_PASSWORD"} <= set(
        environment(users))
    assert environment(users)["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def _networks(service: dict) -> set[str]:
    nets = service.get("networks", ["default"])
    return set(nets) if isinstance(nets, list) else set(nets)


def test_object_store_answers_only_s3_with_credentials_and_only_to_its_users():
    """SeaweedFS's master, volume server and filer serve objects without credentials: they bind
    to the container's loopback, the S3 gateway alone to every address, with an identity file and
    no anonymous identity; nothing is published; only MLflow and the bucket one-shot share its
    network, which has no route out."""
    weed = SERVICES["seaweedfs"]
    assert not weed.get("ports") and weed.get("network_mode") is None
    script = weed["command"][0]
    args = script[script.index("server "):].split()
    for arg in ("-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3.ip.bind=0.0.0.0", "-s3", "-s3.config=/tmp/s3.json"):
        assert arg in args, arg
    identities = re.search(r"printf '(\{.*\})'", script, re.DOTALL)[1]
    config = json.loads(identities.replace("%s", "x"))
    assert [i["name"] for i in config["identities"]] == ["sentiflow"]  # no "anonymous"
    assert config["identities"][0]["credentials"] == [{"accessKey": "x", "secretKey": "x"}]
    on_storage = {n for n, s in SERVICES.items() if "storage" in _networks(s)}
    assert on_storage == {"seaweedfs", "create-bucket", "mlflow"}, on_storage
    assert _networks(weed) == {"storage"} and RAW["networks"]["storage"].get("internal") is True
    for name in (*WORKERS, "prefect-server", "postgres"):
        assert "storage" not in _networks(SERVICES[name]), name
    assert environment(SERVICES["mlflow"])["MLFLOW_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"


def test_mlflow_server_requires_a_login_from_env():
    mlflow_args = SERVICES["mlflow"]["command"]
    assert "--app-name=basic-auth" in mlflow_args
    env = environment(RAW_SERVICES["mlflow"])
    for key in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert REQUIRED_REF.fullmatch(env[key]), key
    dockerfile = DOCKERFILE.read_text()
    assert '"mlflow[auth]==${MLFLOW_VERSION}"' in dockerfile and "MLFLOW_AUTH_CONFIG_PATH" in dockerfile
    assert "default_permission = NO_PERMISSIONS" in dockerfile


def test_gpu_worker_is_an_opt_in_profile_with_an_nvidia_device():
    gpu, cpu = SERVICES["worker-gpu"], SERVICES["worker"]
    assert gpu.get("profiles") == ["gpu"]
    assert "profiles" not in cpu and "deploy" not in cpu  # the CPU worker starts by default
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia"
        and "gpu" in d.get("capabilities", [])
        and (d.get("count") == "all" or int(d.get("count", 0)) >= 1)
        for d in devices
    ), devices
    assert "--pool" in gpu["command"] and gpu["command"] != cpu["command"]


def _pool(command: list[str]) -> str:
    return command[command.index("--pool") + 1]


def test_each_worker_serves_the_pool_of_its_deploy_file():
    """The CPU worker takes prefect.yaml's deployments, the GPU worker prefect-gpu.yaml's; the
    image holds both files, since the docs deploy them with ``docker compose exec worker``."""
    for name, deploy_file in (("worker", "prefect.yaml"), ("worker-gpu", "prefect-gpu.yaml")):
        pools = {d["work_pool"]["name"] for d in yaml.safe_load((ROOT / deploy_file).read_text())["deployments"]}
        assert pools == {_pool(SERVICES[name]["command"])}, (name, pools)
    copied = re.search(r"^COPY (.*) \./$", DOCKERFILE.read_text(), re.MULTILINE)
    assert copied and {"prefect.yaml", "prefect-gpu.yaml"} <= set(copied.group(1).split()), copied


@pytest.mark.parametrize("name", WORKERS)
def test_worker_runs_send_heartbeats(name: str):
    """A flow run whose process dies is marked Crashed only when its runs send heartbeats."""
    assert int(environment(SERVICES[name])["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]) >= 30  # Prefect's minimum


@pytest.mark.parametrize("name", WORKERS)
def test_worker_stops_on_sigint_with_time_to_finish(name: str):
    worker = SERVICES[name]
    assert worker.get("stop_signal") == "SIGINT"
    assert seconds(worker.get("stop_grace_period", "10s")) > 10
