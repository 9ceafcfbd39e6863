"""The retraining scheduler: APScheduler 3 with its job store in the project database.

Jobs — the periodic check (cron), a retrain requested by an alert, canary checks after a deploy —
are rows in ``apscheduler_jobs``, so a restarted scheduler finds them again. An alert with
``action: retrain`` on ``atalaia.alerts`` schedules an immediate run; the alert's offset is
committed only once that job is stored.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from atalaia.events import AlertEvent, utcnow
from atalaia.settings import Settings
from retrain.jobs import BIAS_JOB, CANARY_SWEEP_JOB, PERIODIC_JOB, RETRAIN_JOB

log = logging.getLogger(__name__)

JOBS_TABLE = "apscheduler_jobs"
_running: Any = None


def get_running_scheduler() -> Any:
    """The scheduler started in this process, if any (jobs use it to add follow-up jobs)."""
    return _running


def build_scheduler(settings: Settings) -> Any:
    """A BackgroundScheduler with a SQLAlchemy job store on ``ATALAIA_DATABASE_URL``."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    from atalaia.storage.db import get_engine

    return BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=get_engine(settings.database_url), tablename=JOBS_TABLE)},
        executors={"default": ThreadPoolExecutor(2)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
        timezone="UTC",
    )


def start_scheduler(settings: Settings) -> Any:
    """Start the scheduler and (re)install the periodic job from ``ATALAIA_RETRAIN_CRON``."""
    global _running
    from apscheduler.triggers.cron import CronTrigger

    scheduler = build_scheduler(settings)
    scheduler.start()
    _running = scheduler
    if settings.retrain_cron:
        scheduler.add_job(
            "retrain.jobs:periodic_retrain",
            CronTrigger.from_crontab(settings.retrain_cron, timezone="UTC"),
            id=PERIODIC_JOB,
            replace_existing=True,
        )
    else:
        try:
            scheduler.remove_job(PERIODIC_JOB)
        except Exception:  # noqa: BLE001 - not there
            pass
    _install_retention(settings, scheduler)
    _install_evidently(settings, scheduler)
    _install_cron(scheduler, "retrain.jobs:bias_evaluation", BIAS_JOB, settings.bias_cron)
    # Traffic splits started outside the scheduler (a run from a shell) get their checks too.
    scheduler.add_job(
        "retrain.jobs:resume_canaries",
        "interval",
        seconds=settings.canary_interval_s,
        id=CANARY_SWEEP_JOB,
        replace_existing=True,
    )
    jobs = [(job.id, str(job.next_run_time)) for job in scheduler.get_jobs()]
    log.info("scheduler started", extra={"jobs": jobs})
    return scheduler


def request_retrain(scheduler: Any, trigger: str, when: datetime | None = None) -> None:
    """Store a job that runs a retrain now, or at ``when`` (one pending request at a time)."""
    scheduler.add_job(
        "retrain.jobs:alert_retrain",
        "date",
        run_date=when or utcnow(),
        id=RETRAIN_JOB,
        replace_existing=True,
        kwargs={"trigger": trigger},
    )
    log.info("retrain requested", extra={"trigger": trigger})


def wants_retrain(alert: AlertEvent, max_age_s: float) -> bool:
    """A firing alert asking for a retrain, recent enough to act on.

    Examples
    --------
    >>> import uuid
    >>> from atalaia.events import AlertEvent, utcnow
    >>> a = AlertEvent(alert_id=uuid.uuid4(), fingerprint="f", rule="rouge", state="firing", severity="warning",
    ...                labels={}, annotations={}, started_at=utcnow(), action="retrain")
    >>> wants_retrain(a, 3600)
    True
    """
    if alert.state != "firing" or alert.action != "retrain":
        return False
    return (utcnow() - alert.ts) <= timedelta(seconds=max_age_s)


def alerts_to_recheck(waiting: dict[str, AlertEvent], active_version: str | None) -> list[AlertEvent]:
    """The still-firing retrain alerts that concern the active model version.

    An alert labelled with another ``model_version`` belongs to a version that has been replaced:
    it is dropped from ``waiting``. Alerts without that label always count.

    Examples
    --------
    >>> import uuid
    >>> from atalaia.events import AlertEvent, utcnow
    >>> def alert(fp, version):
    ...     return AlertEvent(alert_id=uuid.uuid4(), fingerprint=fp, rule="rouge", state="firing",
    ...                       severity="warning", labels={"model_version": version}, annotations={},
    ...                       started_at=utcnow(), action="retrain")
    >>> waiting = {"a": alert("a", "m@base"), "b": alert("b", "m@ft-1")}
    >>> [a.fingerprint for a in alerts_to_recheck(waiting, "m@ft-1")]
    ['b']
    >>> sorted(waiting)
    ['b']
    """
    for fp in [fp for fp, a in waiting.items() if a.labels.get("model_version", active_version) != active_version]:
        del waiting[fp]
    return list(waiting.values())


def _recheck(settings: Settings, scheduler: Any, waiting: dict[str, AlertEvent]) -> None:
    """Request a run for a retrain alert still firing on the active version, unless one is running."""
    from atalaia.storage.db import get_engine
    from retrain import registry
    from retrain.lock import current_lock, is_stale

    engine = get_engine(settings.database_url)
    alerts = alerts_to_recheck(waiting, registry.served_version(engine, settings).version)
    if not alerts:
        return
    lock = current_lock(engine)
    if lock is not None and not is_stale(lock, settings.retrain_lock_stale_s):
        return  # a run is in progress; it may be the answer to this alert
    request_retrain(scheduler, f"alert:{alerts[0].rule} (still firing)")


def follow_alerts(settings: Settings, scheduler: Any, stop: threading.Event) -> None:
    """Turn firing ``retrain`` alerts into retrain jobs until ``stop`` is set.

    A retrain alert that stays firing is acted on again every ``ATALAIA_RETRAIN_RECHECK_S``: its
    first run may have been skipped (too little new data, cooldown) or rejected by the gate.
    """
    from atalaia.kafka.clients import follow

    waiting: dict[str, AlertEvent] = {}  # fingerprint → the firing retrain alert
    next_recheck = time.monotonic() + settings.retrain_recheck_s

    def on_alert(alert: AlertEvent, _msg: object) -> None:
        nonlocal next_recheck
        if alert.action == "retrain" and alert.state == "resolved":
            waiting.pop(alert.fingerprint, None)
        if wants_retrain(alert, settings.retrain_alert_max_age_s):
            waiting[alert.fingerprint] = alert
            request_retrain(scheduler, f"alert:{alert.rule}")
            next_recheck = time.monotonic() + settings.retrain_recheck_s

    def recheck(_polled: bool) -> None:
        nonlocal next_recheck
        if settings.retrain_recheck_s > 0 and waiting and time.monotonic() >= next_recheck:
            next_recheck = time.monotonic() + settings.retrain_recheck_s
            _recheck(settings, scheduler, waiting)

    # Committed offsets, from the earliest without any + an age limit: an alert sent while the
    # scheduler was down or joining the group is still acted on, and old history is not.
    # Malformed alert events are dead-lettered.
    follow(
        settings,
        settings.topic("alerts"),
        AlertEvent,
        on_alert,
        stop=stop,
        client_id="atalaia-scheduler",
        group_id=settings.scheduler_group,
        on_poll=recheck,
    )


def _install_retention(settings: Settings, scheduler: Any) -> None:
    """(Re)install the retention job from ``ATALAIA_RETENTION_CRON``; removed when nothing is to be kept short."""
    from atalaia.privacy import RETENTION_JOB, retention_plan

    cron = settings.retention_cron if retention_plan(settings) else ""
    _install_cron(scheduler, "atalaia.privacy:retention_job", RETENTION_JOB, cron)


def _install_evidently(settings: Settings, scheduler: Any) -> None:
    """(Re)install the Evidently report job (``retrain.jobs.evidently_report``) from ``ATALAIA_EVIDENTLY_CRON``."""
    from retrain.jobs import EVIDENTLY_JOB

    _install_cron(scheduler, "retrain.jobs:evidently_report", EVIDENTLY_JOB, settings.evidently_cron)


def _install_cron(scheduler: Any, func: str, job_id: str, cron: str) -> None:
    """(Re)install a cron job, or remove it when ``cron`` is empty."""
    from apscheduler.triggers.cron import CronTrigger

    if cron:
        scheduler.add_job(func, CronTrigger.from_crontab(cron, timezone="UTC"), id=job_id, replace_existing=True)
        return
    try:
        scheduler.remove_job(job_id)
    except Exception:  # noqa: BLE001 - not there
        pass


def run_scheduler(settings: Settings, stop: threading.Event) -> None:
    """The ``atalaia scheduler`` service: jobs + alert follower until ``stop`` is set."""
    global _running
    from atalaia.storage.db import upgrade

    upgrade(settings.database_url)
    scheduler = start_scheduler(settings)
    try:
        follow_alerts(settings, scheduler, stop)
    finally:
        from retrain.jobs import stop_children

        scheduler.shutdown(wait=False)
        stop_children()
        _running = None
        log.info("scheduler stopped")
