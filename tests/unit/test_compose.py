"""docker-compose.yml, the Dockerfile and the Prometheus, Alertmanager and Grafana files they mount,
checked by reading them (no Docker engine needed).

The compose file is parsed with PyYAML (anchors and ``<<`` merge keys included) and checked
against the code it runs: environment variables must be real settings with valid values,
commands must be real CLI commands, and the wiring (dependencies, ports, Kafka listeners, health
checks, mounted files, scrape targets, the Alertmanager URL, the Grafana datasource) must be
consistent. ``promtool`` (Debian package ``prometheus``) validates the Prometheus configuration
and runs the alert rules' unit tests, and ``amtool`` (``prometheus-alertmanager``) validates the
Alertmanager configuration and its routing; without them those tests are skipped (they fail
under ``ATALAIA_REQUIRE_SERVICES=1``). If a ``docker compose`` CLI is installed, ``docker compose
config -q`` validates the file against the Compose specification as well; without one that test
is skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from atalaia.settings import ENV_PREFIX, Settings, load_settings
from composition.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

ATALAIA_SERVICES = ("topics", "migrate", "inference", "worker", "monitor", "scheduler")
LONG_RUNNING = ("inference", "worker", "monitor", "scheduler")
OBSERVABILITY = ("prometheus", "alertmanager", "grafana")
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, whichever syntax (mapping or list) it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """``{target: condition}``; the short (list) syntax means ``service_started``."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def interpolate(value: str) -> str:
    """Replace ``${VAR:-default}`` / ``${VAR-default}`` / ``${VAR}`` by the default (or empty).

    >>> interpolate("postgresql+psycopg://u:${PW:-secret}@h/db")
    'postgresql+psycopg://u:secret@h/db'
    """
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def cli_command(argv: list[str]) -> tuple[list[str], Any]:
    """Resolve ``argv`` (without the ``atalaia`` entrypoint) to (command path, click command).

    The remaining arguments are parsed by the command, so unknown options fail here too.
    """
    command: Any = typer.main.get_command(app)
    path: list[str] = []
    rest = list(argv)
    while hasattr(command, "commands"):  # a group: the next word picks the sub-command
        assert rest, f"`atalaia {' '.join(path)}` is a group; a sub-command is missing in {argv}"
        word = rest.pop(0)
        assert word in command.commands, f"`atalaia {' '.join([*path, word])}` is not a CLI command ({argv})"
        command = command.commands[word]
        path.append(word)
    command.make_context(" ".join(path), rest)  # raises on unknown options or bad values
    return path, command


def published_ports(service: dict[str, Any]) -> list[tuple[str | None, str, str]]:
    """(host ip, host port, container port) of every published port, short or long syntax."""
    out: list[tuple[str | None, str, str]] = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append((port.get("host_ip"), str(port.get("published", "")), str(port["target"])))
            continue
        spec = str(port).split("/", 1)[0]
        parts = spec.rsplit(":", 2)
        if len(parts) == 3:
            out.append((parts[0].strip("[]"), parts[1], parts[2]))
        elif len(parts) == 2:
            out.append((None, parts[0], parts[1]))
        else:
            out.append((None, "", parts[0]))
    return out


# -- every service -----------------------------------------------------------------------------
def test_expected_services_exist(services: dict[str, Any]) -> None:
    assert {"kafka", "postgres", *ATALAIA_SERVICES, *OBSERVABILITY} <= set(services)


def test_every_service_has_an_image_or_a_build(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert service.get("image") or service.get("build"), f"service {name} has neither image nor build"


def test_depends_on_targets_exist_with_valid_conditions(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for target, condition in depends_on(service).items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert target != name
            assert condition in CONDITIONS, f"{name} -> {target}: unknown condition {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in services[target], (
                    f"{name} waits for {target} to be healthy, but it has no healthcheck"
                )
            if condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", (
                    f"{target} is waited on to complete, so must not restart"
                )


def test_startup_order(services: dict[str, Any]) -> None:
    assert depends_on(services["topics"]) == {"kafka": "service_healthy"}
    assert depends_on(services["migrate"]) == {"postgres": "service_healthy"}
    for name in LONG_RUNNING:
        deps = depends_on(services[name])
        assert deps.get("topics") == "service_completed_successfully", name
    for name in ("inference", "worker", "monitor", "scheduler"):  # they read or write the database
        assert depends_on(services[name]).get("migrate") == "service_completed_successfully", name


def test_published_ports_bind_loopback_only(services: dict[str, Any]) -> None:
    seen = []
    for name, service in services.items():
        for host_ip, host_port, _ in published_ports(service):
            assert host_ip == "127.0.0.1", f"{name} publishes port {host_port} on {host_ip or 'every interface'}"
            assert host_port, f"{name} publishes a random host port"
            seen.append(host_port)
    assert len(seen) == len(set(seen)), f"a host port is published twice: {seen}"


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for service in services.values():
        for volume in service.get("volumes") or []:
            source = volume.get("source") if isinstance(volume, dict) else str(volume).split(":", 1)[0]
            if source and not source.startswith((".", "/", "~")):
                used.add(source)
    assert used <= declared, f"undeclared named volumes: {used - declared}"
    assert {"kafka-data", "postgres-data", "atalaia-home"} <= declared


# -- the Atalaia services ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ATALAIA_SERVICES)
def test_atalaia_services_use_the_dockerfile(services: dict[str, Any], name: str) -> None:
    build = services[name].get("build")
    assert build, f"{name} must be built from the Dockerfile"
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (ROOT / context / dockerfile).resolve() == DOCKERFILE


@pytest.mark.parametrize("name", ATALAIA_SERVICES)
def test_atalaia_env_vars_are_real_settings_with_valid_values(services: dict[str, Any], name: str) -> None:
    env = env_of(services[name])
    overrides: dict[str, str] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        field = key.removeprefix(ENV_PREFIX).lower()
        assert field in Settings.model_fields, f"{name}: {key} is not a setting (no Settings.{field})"
        overrides[field] = interpolate(value)
    assert overrides, f"{name} sets no ATALAIA_* variable"
    load_settings(**overrides)  # ConfigError names the variable if a value is invalid


@pytest.mark.parametrize("name", ATALAIA_SERVICES)
def test_atalaia_services_reach_kafka_and_postgres_inside_the_network(services: dict[str, Any], name: str) -> None:
    env = env_of(services[name])
    assert env["ATALAIA_KAFKA_BOOTSTRAP"] == "kafka:9092"
    url = interpolate(env["ATALAIA_DATABASE_URL"])
    pg = env_of(services["postgres"])
    expected = (
        f"postgresql+psycopg://{pg['POSTGRES_USER']}:{interpolate(pg['POSTGRES_PASSWORD'])}"
        f"@postgres:5432/{pg['POSTGRES_DB']}"
    )
    assert url == expected


def test_atalaia_services_agree_on_the_partition_count(services: dict[str, Any]) -> None:
    counts = {name: env_of(services[name]).get("ATALAIA_TOPIC_PARTITIONS") for name in ATALAIA_SERVICES}
    assert len(set(counts.values())) == 1, counts


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("topics", ["kafka", "topics"]),
        ("migrate", ["db", "upgrade"]),
        ("inference", ["serve"]),
        ("worker", ["worker"]),
        ("monitor", ["monitor"]),
        ("scheduler", ["scheduler"]),
    ],
)
def test_commands_are_real_cli_commands(services: dict[str, Any], name: str, expected: list[str]) -> None:
    command = services[name].get("command")
    argv = command.split() if isinstance(command, str) else list(command)
    path, _ = cli_command(argv)
    assert path == expected
    assert "entrypoint" not in services[name], "the image's ENTRYPOINT is `atalaia`"


def _seconds(duration: str) -> float:
    """A compose duration (``1m30s``, ``45s``, ``500ms``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(duration))
    assert parts, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_stop_grace_covers_the_services_close_time(services: dict[str, Any]) -> None:
    # inference's producer.close(timeout=30) plus the Kafka client's close (5 s) and the server's
    # own shutdown: Docker's default 10 s would SIGKILL it while it still delivers or spools events.
    from inference import server

    close_s = float(re.search(r"producer\.close\(timeout=(\d+)\)", Path(server.__file__).read_text()).group(1))  # type: ignore[union-attr]
    for name in LONG_RUNNING:
        grace = _seconds(services[name].get("stop_grace_period", "10s"))
        assert grace >= close_s + 10, f"{name}: stop_grace_period {grace:.0f} s < close() {close_s:.0f} s + 10 s"
    for name in ("kafka", "postgres"):
        assert _seconds(services[name].get("stop_grace_period", "10s")) >= 30, name


def test_one_shots_do_not_restart(services: dict[str, Any]) -> None:
    for name in ("topics", "migrate"):
        assert services[name].get("restart", "no") == "no"
    for name in (*LONG_RUNNING, "kafka", "postgres"):
        assert services[name].get("restart") in ("unless-stopped", "always", "on-failure"), name


def test_inference_listens_on_all_container_interfaces_published_on_loopback(services: dict[str, Any]) -> None:
    inference = services["inference"]
    env = env_of(inference)
    assert env["ATALAIA_INFERENCE_HOST"] == "0.0.0.0"
    port = env.get("ATALAIA_INFERENCE_PORT", str(Settings.model_fields["inference_port"].default))
    assert ("127.0.0.1", "8000", port) in published_ports(inference)
    test = " ".join(inference["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/healthz" in test


def test_worker_healthcheck_uses_the_worker_web_port(services: dict[str, Any]) -> None:
    port = env_of(services["worker"]).get(
        "ATALAIA_WORKER_WEB_PORT", str(Settings.model_fields["worker_web_port"].default)
    )
    assert port in " ".join(services["worker"]["healthcheck"]["test"])


def test_monitor_rules_file_is_shipped_by_the_image(services: dict[str, Any]) -> None:
    rules = env_of(services["monitor"]).get("ATALAIA_RULES_FILE")
    if rules is None:
        return  # the packaged default rules are used
    assert re.search(rf"^COPY\s+\S+\s+{re.escape(rules)}\s*$", DOCKERFILE.read_text(), re.MULTILINE), rules


def test_atalaia_home_volume_is_the_image_home(services: dict[str, Any]) -> None:
    home = dockerfile_env()["ATALAIA_HOME"]
    for name in LONG_RUNNING:
        assert f"atalaia-home:{home}" in services[name].get("volumes", []), name


# -- kafka and postgres --------------------------------------------------------------------------
def test_kafka_is_kraft_single_node_without_auto_create(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    assert str(kafka["image"]).startswith("apache/kafka:4.")
    env = env_of(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_NODE_ID"] == "1"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_DEFAULT_REPLICATION_FACTOR",
    ):
        assert env[key] == "1", key
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])


def _listeners(value: str) -> dict[str, tuple[str, str]]:
    out = {}
    for item in value.split(","):
        name, _, address = item.partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, port)
    return out


def test_kafka_listeners_split_network_and_host(services: dict[str, Any]) -> None:
    env = env_of(services["kafka"])
    listeners = _listeners(env["KAFKA_LISTENERS"])
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols), "every listener needs a security protocol"
    assert set(advertised) <= set(listeners) - {"CONTROLLER"}
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners
    # Inside the network: what the Atalaia services are told to use.
    assert advertised["PLAINTEXT"] == ("kafka", listeners["PLAINTEXT"][1]) == ("kafka", "9092")
    assert listeners["CONTROLLER"][1] == "9093"
    # From the host: the published port is the advertised one, on loopback.
    host_host, host_port = advertised["PLAINTEXT_HOST"]
    assert host_host == "127.0.0.1"
    assert ("127.0.0.1", host_port, listeners["PLAINTEXT_HOST"][1]) in published_ports(services["kafka"])
    assert env["KAFKA_LOG_DIRS"] in {str(v).split(":", 1)[1] for v in services["kafka"]["volumes"]}


def test_postgres_has_healthcheck_and_volume(services: dict[str, Any]) -> None:
    pg = services["postgres"]
    assert str(pg["image"]).startswith("postgres:16")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert any(str(v).startswith("postgres-data:") for v in pg["volumes"])


# -- Dockerfile and .dockerignore ----------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile_instructions():
        if word == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", rest))
    return env


def test_dockerfile_base_user_entrypoint_and_models() -> None:
    instructions = dockerfile_instructions()
    words = [w for w, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [rest for w, rest in instructions if w == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert ("ENTRYPOINT", '["atalaia"]') in instructions
    runs = [rest for w, rest in instructions if w == "RUN"]
    assert any("pip install ." in r for r in runs)
    prepare = next(i for i, (w, rest) in enumerate(instructions) if w == "RUN" and "atalaia models prepare" in rest)
    assert words.index("USER") < prepare, "models are prepared as the runtime user, into its ATALAIA_HOME"
    assert dockerfile_env()["ATALAIA_HOME"] == "/var/lib/atalaia"


def test_dockerfile_env_vars_are_real_settings() -> None:
    for key in dockerfile_env():
        if key.startswith(ENV_PREFIX):
            assert key.removeprefix(ENV_PREFIX).lower() in Settings.model_fields, key


def test_dockerfile_copies_exist_and_are_not_ignored() -> None:
    ignored = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    for word, rest in dockerfile_instructions():
        if word != "COPY" or rest.startswith("--from"):
            continue
        sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
        for source in sources:
            if source == "README.md" and not (ROOT / source).exists():
                continue  # written alongside; `docker build` needs it (pyproject's readme)
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert source not in ignored and source.split("/")[0] not in ignored, (
                f"COPY {source} is excluded by .dockerignore"
            )


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".venv", ".atalaia", ".git"} <= ignored
    assert any("__pycache__" in line for line in ignored)


# -- health checks, images, mounts ---------------------------------------------------------------
def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of every bind mount (a source that is a path), short or long syntax."""
    out = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                out.append((str(volume["source"]), str(volume["target"]), bool(volume.get("read_only"))))
            continue
        parts = str(volume).split(":")
        if parts[0].startswith((".", "/", "~")):
            out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def mounted_source(service: dict[str, Any], container_path: str) -> Path:
    """The repository file or folder a service sees at ``container_path`` (through a bind mount)."""
    for source, target, _ in bind_mounts(service):
        target = target.rstrip("/")
        if container_path == target or container_path.startswith(target + "/"):
            return (ROOT / source / container_path[len(target) :].lstrip("/")).resolve()
    raise AssertionError(f"{container_path} is not bind-mounted")


def flag(service: dict[str, Any], name: str) -> str | None:
    """The value of ``--name=value`` in a service's command."""
    for arg in service.get("command") or []:
        if str(arg).startswith(f"--{name}="):
            return str(arg).split("=", 1)[1]
    return None


def listening_ports(services: dict[str, Any], name: str) -> set[str]:
    """Container ports a service listens on, from its settings or flags (the images' defaults otherwise)."""
    service = services[name]
    env = env_of(service)
    if name == "inference":
        return {env.get("ATALAIA_INFERENCE_PORT", str(Settings.model_fields["inference_port"].default))}
    if name == "monitor":
        return {env.get("ATALAIA_MONITOR_PORT", str(Settings.model_fields["monitor_port"].default))}
    if name in ("prometheus", "alertmanager"):
        default = {"prometheus": ":9090", "alertmanager": ":9093"}[name]
        return {(flag(service, "web.listen-address") or default).rpartition(":")[2]}
    if name == "grafana":
        return {env.get("GF_SERVER_HTTP_PORT", "3000")}
    if name == "postgres":
        return {"5432"}
    if name == "kafka":
        return {port for _, port in _listeners(env["KAFKA_LISTENERS"]).values()}
    return set()


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    long_running = [n for n, s in services.items() if s.get("restart", "no") != "no"]
    assert set(long_running) >= {"kafka", "postgres", *LONG_RUNNING, *OBSERVABILITY}
    for name in long_running:
        check = services[name].get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert {"interval", "timeout", "retries"} <= set(check), name


def test_http_healthchecks_probe_a_port_the_service_listens_on(services: dict[str, Any]) -> None:
    for name, service in services.items():
        test = " ".join(str(x) for x in (service.get("healthcheck") or {}).get("test", []))
        for port in re.findall(r"https?://(?:127\.0\.0\.1|localhost):(\d+)/", test):
            assert port in listening_ports(services, name), f"{name}'s health check probes port {port}"


def test_third_party_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if service.get("build"):
            continue
        image = str(service["image"])
        assert re.search(r":[\w.-]+$", image) and not image.endswith(":latest"), f"{name}: pin {image}"


def test_bind_mounted_files_exist_in_the_repository_and_are_read_only(services: dict[str, Any]) -> None:
    mounts = 0
    for name, service in services.items():
        for source, target, read_only in bind_mounts(service):
            path = (ROOT / source).resolve()
            assert path.is_relative_to(ROOT), f"{name} mounts {source}, outside the repository"
            assert path.exists(), f"{name} mounts {source}, which does not exist"
            assert read_only, f"{name} mounts {source} at {target} writable; add :ro"
            mounts += 1
    assert mounts >= 6


def test_stateful_services_keep_their_data_in_named_volumes(services: dict[str, Any]) -> None:
    for name, path in (
        ("prometheus", flag(services["prometheus"], "storage.tsdb.path")),
        ("alertmanager", flag(services["alertmanager"], "storage.path")),
        ("grafana", "/var/lib/grafana"),
    ):
        assert path, name
        assert any(str(v).split(":")[1:2] == [path] for v in services[name]["volumes"]), f"{name}: {path}"


def test_dockerfile_ships_the_data_set() -> None:
    # The inference service indexes data/regulations for RAG at start and retraining reads data/qa:
    # the image must carry them where the installed package looks (next to the package).
    instructions = dockerfile_instructions()
    assert ("COPY", "data /opt/atalaia/data") in instructions
    assert any(w == "RUN" and "ln -s /opt/atalaia/data" in rest and "cd /" in rest for w, rest in instructions)


# -- the monitor, the scheduler and Alertmanager ---------------------------------------------------
def test_monitor_serves_its_web_app_published_on_loopback(services: dict[str, Any]) -> None:
    monitor = services["monitor"]
    env = env_of(monitor)
    assert env["ATALAIA_MONITOR_HOST"] == "0.0.0.0"
    (port,) = listening_ports(services, "monitor")
    assert ("127.0.0.1", port, port) in published_ports(monitor)
    assert f"127.0.0.1:{port}/healthz" in " ".join(monitor["healthcheck"]["test"])


def test_monitor_posts_alerts_to_the_compose_alertmanager(services: dict[str, Any]) -> None:
    url = env_of(services["monitor"])["ATALAIA_ALERTMANAGER_URL"]
    match = re.fullmatch(r"http://([\w-]+):(\d+)/?", url)
    assert match, url
    host, port = match.groups()
    assert host == "alertmanager" and port in listening_ports(services, "alertmanager")
    assert "alertmanager" in depends_on(services["monitor"])


def test_scheduler_healthcheck_is_valid_python_on_its_group(services: dict[str, Any]) -> None:
    test = services["scheduler"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    compile(test[3], "scheduler-healthcheck", "exec")
    assert "scheduler_group" in test[3] and "bootstrap_servers" in test[3]


@pytest.mark.integration
def test_scheduler_healthcheck_against_kafka(
    services: dict[str, Any], kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The health check fails while no scheduler is in the group and passes once one is."""
    import os
    import sys
    import uuid

    from kafka import KafkaConsumer

    group = f"test-scheduler-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "ATALAIA_KAFKA_BOOTSTRAP": kafka_bootstrap, "ATALAIA_SCHEDULER_GROUP": group}
    env["ATALAIA_HOME"] = str(tmp_path)
    script = services["scheduler"]["healthcheck"]["test"][3]

    def check() -> int:
        return subprocess.run([sys.executable, "-c", script], env=env, timeout=60, check=False).returncode

    assert check() == 1
    consumer = KafkaConsumer(
        "atalaia.alerts", bootstrap_servers=[kafka_bootstrap], group_id=group, session_timeout_ms=10_000
    )
    try:
        for _ in range(20):
            consumer.poll(timeout_ms=500)
            if consumer.assignment():
                break
        assert check() == 0
    finally:
        consumer.close()


def alertmanager_config(services: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    path = mounted_source(services["alertmanager"], flag(services["alertmanager"], "config.file") or "")
    return path, yaml.safe_load(path.read_text(encoding="utf-8"))


def _routes(route: dict[str, Any]) -> list[dict[str, Any]]:
    return [route, *(r for child in route.get("routes") or [] for r in _routes(child))]


def test_alertmanager_config_routes_to_declared_receivers(services: dict[str, Any]) -> None:
    _, config = alertmanager_config(services)
    receivers = {r["name"] for r in config["receivers"]}
    root = config["route"]
    assert root["receiver"] in receivers
    assert "alertname" in root["group_by"] and "model_version" in root["group_by"]
    for route in _routes(root):
        assert route.get("receiver", root["receiver"]) in receivers, route
        for matcher in route.get("matchers") or []:
            assert re.fullmatch(r'\w+\s*(=|!=|=~|!~)\s*"[^"]*"', matcher), matcher
    for rule in config.get("inhibit_rules") or []:
        assert rule["source_matchers"] and rule["target_matchers"] and rule["equal"]


def test_alertmanager_routes_name_real_monitor_rules(services: dict[str, Any]) -> None:
    """A route matching rule names (``alertname =~ "a|b"``) names rules of the default rule file."""
    _, config = alertmanager_config(services)
    rules = {r["name"] for r in yaml.safe_load((ROOT / "monitors/default_rules.yaml").read_text())["rules"]}
    named = []
    for route in _routes(config["route"]):
        for matcher in route.get("matchers") or []:
            match = re.fullmatch(r'alertname\s*=~?\s*"([^"]*)"', matcher)
            if match:
                named += match.group(1).split("|")
    assert named
    assert set(named) <= rules, set(named) - rules


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        from tests.conftest import _missing

        _missing(f"{name} (apt-get install {'prometheus' if name == 'promtool' else 'prometheus-alertmanager'})")
    return str(path)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)


def test_amtool_checks_the_config_and_its_routing(services: dict[str, Any]) -> None:
    amtool = _tool("amtool")
    path, _ = alertmanager_config(services)
    proc = _run([amtool, "check-config", str(path)])
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr
    for labels, receiver in (
        (["alertname=toxicity_share_high", "severity=critical"], "oncall"),
        (["alertname=AtalaiaEventsLost", "severity=critical"], "oncall"),
        (["alertname=embedding_drift", "severity=warning", "model_version=m@1"], "model-owners"),
        (["alertname=latency_p95_high", "severity=warning"], "default"),
    ):
        proc = _run([amtool, "config", "routes", "test", f"--config.file={path}", *labels])
        assert proc.stdout.strip() == receiver, (labels, proc.stdout, proc.stderr)


# -- Prometheus ----------------------------------------------------------------------------------
def prometheus_config(services: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    path = mounted_source(services["prometheus"], flag(services["prometheus"], "config.file") or "")
    return path, yaml.safe_load(path.read_text(encoding="utf-8"))


def _targets(static_configs: list[dict[str, Any]]) -> list[str]:
    return [str(t) for sc in static_configs for t in sc.get("targets") or []]


def test_prometheus_scrapes_real_services_and_ports(services: dict[str, Any]) -> None:
    _, config = prometheus_config(services)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "atalaia-inference" in jobs
    for job in jobs.values():
        for target in _targets(job["static_configs"]):
            host, _, port = target.rpartition(":")
            name = "prometheus" if host in ("localhost", "127.0.0.1") else host
            assert name in services, f"job {job['job_name']}: {host} is not a compose service"
            assert port in listening_ports(services, name), f"job {job['job_name']}: {name} does not listen on {port}"
    inference = jobs["atalaia-inference"]
    assert _targets(inference["static_configs"]) == [f"inference:{p}" for p in listening_ports(services, "inference")]
    path = inference.get("metrics_path", "/metrics")
    # The route is in the inference service's health router (inference/routes/health.py).
    assert f'@router.get("{path}")' in (ROOT / "inference" / "routes" / "health.py").read_text(encoding="utf-8")


def test_prometheus_alerts_go_to_the_compose_alertmanager(services: dict[str, Any]) -> None:
    _, config = prometheus_config(services)
    targets = [t for am in config["alerting"]["alertmanagers"] for t in _targets(am["static_configs"])]
    assert targets == [f"alertmanager:{p}" for p in listening_ports(services, "alertmanager")]


def test_prometheus_rule_files_are_mounted_and_use_exported_metrics(services: dict[str, Any]) -> None:
    path, config = prometheus_config(services)
    files = [f for pattern in config["rule_files"] for f in sorted(path.parent.glob(pattern))]
    assert files, config["rule_files"]
    telemetry = (ROOT / "inference" / "telemetry.py").read_text(encoding="utf-8")
    exported = set(re.findall(r'"(atalaia_\w+)"', telemetry))
    for file in files:
        mounted_source(services["prometheus"], f"/etc/prometheus/{file.relative_to(path.parent)}")
        for group in yaml.safe_load(file.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
                for metric in re.findall(r"\batalaia_\w+", rule["expr"]):
                    base = re.sub(r"_(total|bucket|sum|count|created)$", "", metric)
                    assert base in exported, f"{rule['alert']}: {metric} is not exported by the inference service"


def test_promtool_checks_the_config_and_tests_the_rules(services: dict[str, Any]) -> None:
    promtool = _tool("promtool")
    path, _ = prometheus_config(services)
    proc = _run([promtool, "check", "config", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"SUCCESS: [1-9]\d* rule files? found", proc.stdout + proc.stderr), proc.stdout
    tests = sorted((ROOT / "prometheus" / "tests").glob("*.yml"))
    assert tests
    proc = _run([promtool, "test", "rules", *map(str, tests)])
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


# -- Grafana -------------------------------------------------------------------------------------
def test_grafana_mounts_the_provisioning_and_the_dashboards(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    for kind in ("datasources", "dashboards"):
        assert mounted_source(grafana, f"/etc/grafana/provisioning/{kind}") == ROOT / "grafana" / "provisioning" / kind
    provider = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/atalaia.yaml").read_text())["providers"][0]
    dashboards = mounted_source(grafana, provider["options"]["path"])
    assert (dashboards / "atalaia.json").is_file()
    home = env_of(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounted_source(grafana, home).is_file()
    assert depends_on(grafana).get("migrate") == "service_completed_successfully"  # the tables it queries


def test_grafana_datasource_is_the_compose_postgres(services: dict[str, Any]) -> None:
    grafana, pg = env_of(services["grafana"]), env_of(services["postgres"])
    (datasource,) = yaml.safe_load((ROOT / "grafana/provisioning/datasources/atalaia.yaml").read_text())["datasources"]
    host, _, port = datasource["url"].rpartition(":")
    assert host == "postgres" and port in listening_ports(services, "postgres")
    assert datasource["user"] == pg["POSTGRES_USER"]
    assert datasource["jsonData"]["database"] == pg["POSTGRES_DB"]
    variable = re.fullmatch(r"\$\{?(\w+)\}?", datasource["secureJsonData"]["password"])
    assert variable, "the password comes from Grafana's environment"
    assert interpolate(grafana[variable.group(1)]) == interpolate(pg["POSTGRES_PASSWORD"])


# -- docs/operations.md --------------------------------------------------------------------------
OPERATIONS = ROOT / "docs" / "operations.md"


def test_operations_doc_covers_the_stack(services: dict[str, Any]) -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    for name in services:
        assert f"`{name}`" in text, f"docs/operations.md does not name the service {name}"
    groups = ("ATALAIA_WORKER_ID", "ATALAIA_MONITOR_GROUP", "ATALAIA_SCHEDULER_GROUP")
    for setting in ("ATALAIA_TOPIC_PARTITIONS", *groups):
        assert setting.removeprefix(ENV_PREFIX).lower() in Settings.model_fields
        assert f"`{setting}`" in text, setting
    for target in re.findall(r"\]\(([^)\s#]+)", text):
        if not re.match(r"[a-z]+:", target):
            assert (OPERATIONS.parent / target).exists(), f"broken link {target}"


# -- the real Compose validator, when a docker compose CLI is installed ----------------------------
def _compose_cli() -> list[str] | None:
    """A Compose v2 CLI (``docker compose`` or a v2 ``docker-compose``), or None.

    Compose v1 (``docker-compose`` 1.x, Python) predates the Compose Specification's top-level
    ``name`` and would reject a valid file, so it is not used.
    """
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cli in candidates:
        try:
            proc = subprocess.run([*cli, "version", "--short"], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode == 0 and proc.stdout.strip().lstrip("v").startswith("2"):
            return cli
    return None


def test_docker_compose_config_validates() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Docker Compose v2 CLI installed")
    proc = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    if proc.returncode != 0 and re.search(r"daemon|engine|Cannot connect", proc.stderr, re.IGNORECASE):
        pytest.skip(f"docker compose needs an engine here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
