"""Functions the scheduler runs. APScheduler's job store pickles a reference to each function
("retrain.jobs:name") and its keyword arguments, so they take plain values and read settings
from the environment when they run — in this process or after a restart.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

from atalaia.events import utcnow
from atalaia.settings import load_settings
from atalaia.storage.repository import as_utc

log = logging.getLogger(__name__)

RETRAIN_JOB = "retrain-now"
PERIODIC_JOB = "retrain-periodic"
CANARY_PREFIX = "canary:"
CANARY_SWEEP_JOB = "canary-sweep"
EVIDENTLY_JOB = "evidently-report"
BIAS_JOB = "bias-evaluation"

#: Retrain runs this process started and that are still running.
_children: set[subprocess.Popen[bytes]] = set()


def stop_children(timeout: float = 10.0) -> None:
    """Stop running retrain runs when the scheduler stops (the next run recovers their lock)."""
    for proc in list(_children):
        proc.terminate()
    for proc in list(_children):
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


def retrain_in_subprocess(trigger: str, force: bool = False) -> int:
    """Run ``atalaia retrain --now`` in a child process and return its exit code.

    A child keeps training's memory out of the long-lived scheduler, and a crash there (even
    SIGKILL) leaves the scheduler running; the next run recovers the lock and the run record.
    """
    cmd = [sys.executable, "-m", "composition.cli.main", "retrain", "--now", "--trigger", trigger]
    if force:
        cmd.append("--force")
    log.info("starting a retrain run", extra={"trigger": trigger})
    proc = subprocess.Popen(cmd, env=os.environ.copy())
    _children.add(proc)
    try:
        code = proc.wait()
    finally:
        _children.discard(proc)
    log.info("retrain run ended", extra={"trigger": trigger, "exit_code": code})
    if code == 0:
        schedule_canary_for_latest_deploy()
    return code


def evidently_report() -> int:
    """The cron job of ``ATALAIA_EVIDENTLY_CRON``: ``atalaia report evidently`` in a child process
    (Evidently and pandas stay out of the scheduler's memory); returns its exit code."""
    cmd = [sys.executable, "-m", "composition.cli.main", "report", "evidently"]
    code = subprocess.run(cmd, env=os.environ.copy(), check=False, stdout=subprocess.DEVNULL).returncode
    log.info("evidently report job ended", extra={"exit_code": code})
    return code


def bias_evaluation() -> int:
    """The cron job of ``ATALAIA_BIAS_CRON``: ``atalaia bias --publish`` on the serving version in a
    child process (the model stays out of the scheduler's memory); returns its exit code."""
    cmd = [sys.executable, "-m", "composition.cli.main", "bias", "--publish"]
    code = subprocess.run(cmd, env=os.environ.copy(), check=False, stdout=subprocess.DEVNULL).returncode
    log.info("bias evaluation job ended", extra={"exit_code": code})
    return code


def periodic_retrain() -> int:
    """The cron job: retrain when there is enough new data (the run checks cooldown and data)."""
    return retrain_in_subprocess("schedule")


def alert_retrain(trigger: str) -> int:
    """The job an alert with ``action: retrain`` schedules."""
    return retrain_in_subprocess(trigger)


def schedule_canary_for_latest_deploy() -> None:
    """After a deployed run, add a canary job for the new version (idempotent by job id)."""
    from atalaia.storage.db import get_engine
    from retrain.runs import last_run
    from retrain.scheduler import get_running_scheduler

    settings = load_settings()
    run = last_run(get_engine(settings.database_url), ("deployed",))
    scheduler = get_running_scheduler()
    if run is None or not run["candidate_version"] or scheduler is None:
        return
    # Past both limits the canary has nothing left to decide (a traffic split runs up to
    # canary_max_s, a deploy at once canary_window_s); within them the first check settles it.
    if utcnow() - as_utc(run["finished_at"]) > timedelta(seconds=max(settings.canary_window_s, settings.canary_max_s)):
        return
    _add_canary_job(scheduler, run["candidate_version"], settings.canary_interval_s)


def _add_canary_job(scheduler: Any, version: str, interval_s: float) -> None:
    scheduler.add_job(
        "retrain.jobs:canary_check",
        "interval",
        seconds=interval_s,
        id=CANARY_PREFIX + version,
        replace_existing=True,
        kwargs={"version": version},
        coalesce=True,
        max_instances=1,
    )


def resume_canaries() -> list[str]:
    """Add a canary job for every running traffic split that has none; the versions added.

    A split started by a run outside the scheduler (``atalaia retrain --now`` from a shell) gets
    no job from :func:`schedule_canary_for_latest_deploy`, and without checks it would never end:
    the scheduler runs this at start and every ``ATALAIA_CANARY_INTERVAL_S``.
    """
    from atalaia.storage.db import get_engine
    from retrain.canary import canary_state
    from retrain.registry import list_versions
    from retrain.scheduler import get_running_scheduler

    settings = load_settings()
    scheduler = get_running_scheduler()
    if scheduler is None:
        return []
    added = []
    for row in list_versions(get_engine(settings.database_url)):
        version = str(row["version"])
        if canary_state(row) is not None and scheduler.get_job(CANARY_PREFIX + version) is None:
            _add_canary_job(scheduler, version, settings.canary_interval_s)
            added.append(version)
    if added:
        log.info("canary checks resumed", extra={"versions": added})
    return added


def canary_check(version: str) -> str:
    """One canary look; the job removes itself once the verdict is final."""
    from retrain.canary import settle_canary
    from retrain.scheduler import get_running_scheduler

    verdict = settle_canary(load_settings(), version)
    if verdict.decision != "wait":
        scheduler = get_running_scheduler()
        if scheduler is not None:
            try:
                scheduler.remove_job(CANARY_PREFIX + version)
            except Exception:  # noqa: BLE001 - already removed
                pass
    return verdict.decision
