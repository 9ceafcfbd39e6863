"""Shared fixtures. Integration tests need the services that `make test` starts:

- Kafka at ``ATALAIA_KAFKA_BOOTSTRAP`` (default 127.0.0.1:9092), started by ``atalaia kafka start``;
- PostgreSQL at ``ATALAIA_TEST_DATABASE_URL`` (``scripts/postgres.sh start`` prints it);
- the prepared models under ``ATALAIA_HOME/models`` (``atalaia models prepare``).

Without them those tests are skipped, unless ``ATALAIA_REQUIRE_SERVICES=1`` (set by
``scripts/test.sh`` and so by CI), where a missing service fails the test instead: CI never
passes by skipping.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from atalaia.settings import Settings

REQUIRE = os.environ.get("ATALAIA_REQUIRE_SERVICES") == "1"
MAIN_SETTINGS = Settings()


def _missing(what: str) -> None:
    if REQUIRE:
        pytest.fail(f"{what} is required (ATALAIA_REQUIRE_SERVICES=1) but not available")
    pytest.skip(f"{what} not available; run `make test`")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(hostport: str) -> bool:
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap address of the running Kafka broker."""
    bootstrap = MAIN_SETTINGS.kafka_bootstrap
    if not _port_open(bootstrap.split(",")[0]):
        _missing(f"Kafka at {bootstrap}")
    return bootstrap


@pytest.fixture(scope="session")
def pg_url() -> str:
    """URL of the test PostgreSQL database."""
    url = os.environ.get("ATALAIA_TEST_DATABASE_URL", "")
    if not url:
        _missing("PostgreSQL (ATALAIA_TEST_DATABASE_URL)")
    from sqlalchemy import create_engine, text

    try:
        with create_engine(url).connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001
        _missing(f"PostgreSQL at {url} ({exc})")
    return url


@pytest.fixture
def fresh_pg(pg_url: str) -> Iterator[str]:
    """The test PostgreSQL database, emptied and migrated to head."""
    from sqlalchemy import create_engine, text

    from atalaia.storage.db import upgrade
    from atalaia.storage.tables import metadata

    engine = create_engine(pg_url)
    metadata.drop_all(engine)
    # Tables others create in the project database (Alembic's version, APScheduler's job store)
    # must go too, or the next test sees a schema that is not the migrated one.
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS alembic_version, apscheduler_jobs"))
    engine.dispose()
    upgrade(pg_url)
    yield pg_url


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's headless-capable Chromium (``scripts/system-deps.sh test`` installs it)."""
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        _missing("Chromium (apt-get install chromium)")
    return str(path)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Folder of the prepared models."""
    assert MAIN_SETTINGS.models_dir is not None
    if not (MAIN_SETTINGS.generator_path / "atalaia-model.json").exists():
        _missing(f"the prepared generator under {MAIN_SETTINGS.models_dir} (atalaia models prepare)")
    return MAIN_SETTINGS.models_dir


@pytest.fixture(scope="session")
def ort_int4_dir(models_dir: Path) -> Path:
    """The prepared base model's ONNX Runtime GenAI int4 export (made once, about half a minute,
    and cached next to the model, as `atalaia models prepare` caches it)."""
    from atalaia.models.ortgenai import ort_dir_for, prepare_ort

    out = ort_dir_for(models_dir, MAIN_SETTINGS.generator_model, "int4")
    return prepare_ort(MAIN_SETTINGS.generator_path, out, precision="int4")


@pytest.fixture
def isolated_settings(tmp_path: Path, kafka_bootstrap: str) -> Settings:
    """Settings on the real broker with a topic namespace, group ids and ports of their own."""
    tag = uuid.uuid4().hex[:8]
    return Settings(
        home=tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        topic_namespace=f"test-{tag}",
        topic_partitions=2,
        worker_id=f"test-worker-{tag}",
        monitor_group=f"test-monitor-{tag}",
        models_dir=MAIN_SETTINGS.models_dir,
        inference_port=free_port(),
        worker_web_port=free_port(),
        monitor_port=free_port(),
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATALAIA_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        # Map- and list-valued settings are JSON in the environment (str() of a dict is not JSON).
        if isinstance(value, SecretStr):  # model_dump keeps secrets masked; the child needs the value
            value = value.get_secret_value()
        env[f"ATALAIA_{name.upper()}"] = json.dumps(value) if isinstance(value, dict | list) else str(value)
    env["ATALAIA_LOG_JSON"] = "true"
    return env
