"""Private Kafka brokers and PostgreSQL servers for fault tests.

Fault tests stop, kill and restart the services they depend on. They never touch the shared
broker or database that other tests (and other developers on the machine) use: each helper here
runs its own instance, with its own data directory and ports, and removes it afterwards.

- :func:`private_kafka`: a single-node KRaft broker through :mod:`composition.kafka.broker` with
  ``ATALAIA_HOME`` in a temporary directory and free ports; ``stop()``/``start()`` for outages.
- :func:`private_postgres`: ``initdb`` into a temporary directory and ``pg_ctl`` on a free port
  (as the ``postgres`` user when run as root, since the server refuses to run as root), trust
  authentication on 127.0.0.1 only; ``stop()``/``start()`` for outages, ``database()`` for a fresh
  migrated database per test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from atalaia.settings import Settings
from composition.kafka import broker
from tests.conftest import MAIN_SETTINGS, free_port


@dataclass
class PrivateKafka:
    """A Kafka broker of one's own; ``settings`` point at it (home, bootstrap, controller port)."""

    settings: Settings

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 30 s)."""
        broker.stop(self.settings)

    def kill(self) -> None:
        """Kill the broker at once (SIGKILL of its process group): a crash, not a shutdown."""
        status = broker.status(self.settings)
        if status.pid is not None:
            os.killpg(status.pid, 9)
            deadline = time.monotonic() + 20
            while broker.status(self.settings).pid is not None and time.monotonic() < deadline:
                time.sleep(0.1)

    def start(self, timeout: float = 120) -> float:
        """Start (or restart) the broker; returns the seconds it took."""
        return broker.start(self.settings, timeout=timeout).startup_s


@contextmanager
def private_kafka() -> Iterator[PrivateKafka]:
    """A fresh single-node broker on free ports, stopped and removed when the block ends."""
    home = Path(tempfile.mkdtemp(prefix="atalaia-kafka-"))
    settings = Settings(
        home=home,
        cache_dir=MAIN_SETTINGS.cache_dir,  # the assembled jars are shared; the data is not
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        kafka_controller_port=free_port(),
    )
    kafka = PrivateKafka(settings)
    try:
        kafka.start()
        yield kafka
    finally:
        try:
            broker.stop(settings, timeout=10)
        finally:
            shutil.rmtree(home, ignore_errors=True)


def _pg_bin() -> Path | None:
    root = Path("/usr/lib/postgresql")
    versions = sorted((p for p in root.glob("*/bin/pg_ctl")), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


@dataclass
class PrivatePostgres:
    """A PostgreSQL server of one's own on 127.0.0.1:``port`` (trust authentication)."""

    bin_dir: Path
    data_dir: Path
    port: int
    as_user: list[str]

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.as_user, *args], capture_output=True, text=True, timeout=timeout, check=True, cwd="/"
        )

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        """SQLAlchemy URL of ``database``; any ``password`` is accepted (trust), and may be a secret to hunt for."""
        auth = f"atalaia:{password}" if password else "atalaia"
        return f"postgresql+psycopg://{auth}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.data_dir / "server.log"),
            "-o",
            f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100",
            "-w",
            "-t",
            "60",
            "start",
            timeout=90,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` ends every connection at once (``immediate``: a crash)."""
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop", timeout=90)

    def running(self) -> bool:
        result = subprocess.run(
            [*self.as_user, str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "status"],
            capture_output=True,
            cwd="/",
            check=False,
        )
        return result.returncode == 0

    def database(self, password: str | None = None) -> str:
        """A new empty database, migrated to head; returns its URL."""
        from atalaia.storage.db import upgrade

        name = f"atalaia_{uuid.uuid4().hex[:10]}"
        self._run(str(self.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "atalaia", "-d",
                  "postgres", "-qAtc", f"CREATE DATABASE {name}")  # fmt: skip
        url = self.url(name, password)
        upgrade(url)
        return url


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A fresh PostgreSQL server (``initdb`` + ``pg_ctl``), stopped and removed when the block ends.

    Raises ``FileNotFoundError`` when PostgreSQL's server binaries are not installed.
    """
    bin_dir = _pg_bin()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL server binaries not found under /usr/lib/postgresql")
    # Under /tmp directly: the postgres user must be able to reach it (pytest's tmp is private to root).
    data_dir = Path(tempfile.mkdtemp(prefix="atalaia-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(data_dir, "postgres", "postgres")
    data_dir.chmod(0o700)
    pg = PrivatePostgres(bin_dir, data_dir, free_port(), as_user)
    try:
        pg._run(str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "atalaia", "--auth=trust", "-E", "UTF8",
                "--no-sync", timeout=120)  # fmt: skip
        pg.start()
        yield pg
    finally:
        if pg.running():
            try:
                pg.stop("immediate")
            except subprocess.SubprocessError:
                pass
        shutil.rmtree(data_dir, ignore_errors=True)
