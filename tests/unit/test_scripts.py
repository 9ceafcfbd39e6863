"""Set-up scripts, run for real with stand-ins for the system tools they drive (apt, pg, the CLI):
system packages come before the venv, the JRE is one the distribution offers, ``make test``
stops the PostgreSQL it started and no other, and a start prints no ERROR line."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _stub(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _run(script: Path, *args: str, path: Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    full = {"PATH": f"{path}:/usr/bin:/bin", "HOME": str(cwd), **(env or {})}
    done = subprocess.run(["bash", str(script), *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the script uses sudo when not root")
def test_system_deps_installs_python3_venv_and_the_jre_the_distribution_offers(tmp_path: Path) -> None:
    bin_dir, log = tmp_path / "bin", tmp_path / "apt.log"
    _stub(
        bin_dir / "apt-cache", "printf 'openjdk-11-jre-headless\\nopenjdk-17-jre-headless\\nopenjdk-21-jre-headless\\n'"
    )
    _stub(bin_dir / "apt-get", f'echo "$@" >> {log}')
    _stub(bin_dir / "java", "echo 'openjdk version \"11.0.2\"' >&2")  # too old
    _stub(bin_dir / "mvn", "exit 0")
    _stub(bin_dir / "python3", "exit 1")  # a Debian python3 without ensurepip (no python3-venv)
    _run(ROOT / "scripts" / "system-deps.sh", "demo", path=bin_dir, cwd=tmp_path)
    install = [line for line in log.read_text().splitlines() if "install" in line]
    assert install and "python3-venv" in install[0] and "openjdk-21-jre-headless" in install[0]
    # Only 17 on offer (Debian 12): that one.
    _stub(bin_dir / "apt-cache", "printf 'openjdk-17-jre-headless\\n'")
    log.unlink()
    _run(ROOT / "scripts" / "system-deps.sh", "base", path=bin_dir, cwd=tmp_path)
    assert "openjdk" not in log.read_text() and "python3-venv" in log.read_text()  # base: no JRE
    _run(ROOT / "scripts" / "system-deps.sh", "demo", path=bin_dir, cwd=tmp_path)
    assert "openjdk-17-jre-headless" in log.read_text()


def test_make_runs_system_packages_before_the_venv() -> None:
    plan = subprocess.run(
        # -B: the plan of a fresh clone (every target out of date), also where the venv is already set up.
        ["make", "-n", "-B", "demo", "test"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ},
    ).stdout.splitlines()
    setup_lines = [i for i, line in enumerate(plan) if "scripts/setup.sh" in line]
    assert setup_lines, plan
    first_deps = next(i for i, line in enumerate(plan) if "system-deps.sh" in line)
    assert first_deps < setup_lines[0]
    assert plan[first_deps].strip().endswith("demo")  # demo's packages, then the venv


@pytest.mark.parametrize("pg_running", [False, True])
def test_test_sh_stops_the_postgres_it_started_and_only_that(tmp_path: Path, pg_running: bool) -> None:
    repo, calls = tmp_path / "repo", tmp_path / "calls.log"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "test.sh", repo / "scripts" / "test.sh")
    record = f'echo "$(basename "$0") $*" >> {calls}'
    _stub(repo / "scripts" / "system-deps.sh", record)
    _stub(repo / "scripts" / "wordnet.sh", record)
    _stub(
        repo / "scripts" / "postgres.sh",
        record + f'\n[ "$1" = status ] && exit {int(not pg_running)}\n[ "$1" = url ] && echo pg://x\nexit 0',
    )
    _stub(repo / ".venv" / "bin" / "atalaia", record + '\n[ "$2" = status ] && exit 0\nexit 0')
    _stub(repo / ".venv" / "bin" / "python", record)
    _run(repo / "scripts" / "test.sh", "-q", path=tmp_path / "nothing", cwd=repo)
    pg_calls = [line for line in calls.read_text().splitlines() if line.startswith("postgres.sh")]
    assert "postgres.sh start" in pg_calls
    assert ("postgres.sh stop" in pg_calls) is (not pg_running), pg_calls
    assert "atalaia kafka stop" not in calls.read_text()  # the broker was already running


def test_probing_a_broker_that_is_not_up_logs_no_error(caplog: pytest.LogCaptureFixture) -> None:
    from kafka import KafkaAdminClient

    from atalaia.logs import configure_logging
    from tests.conftest import free_port

    configure_logging("INFO", json_lines=True)
    caplog.set_level(logging.WARNING)
    with pytest.raises(Exception):  # noqa: B017 - whatever kafka-python raises for "no broker"
        KafkaAdminClient(
            bootstrap_servers=f"127.0.0.1:{free_port()}", request_timeout_ms=2000, bootstrap_timeout_ms=3000
        )
    kafka_records = [r for r in caplog.records if r.name.startswith("kafka")]
    assert kafka_records, "expected kafka-python to say something about the refused connection"
    assert not [r for r in kafka_records if r.levelno >= logging.ERROR], [r.getMessage() for r in kafka_records]
