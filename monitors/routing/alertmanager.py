"""Prometheus Alertmanager receiver: ``POST /api/v2/alerts``.

Alertmanager treats an alert without ``endsAt`` (or with one in the future) as firing and resolves
it by itself once ``endsAt`` passes, so, as Prometheus does, a firing alert is re-posted every
``ATALAIA_ALERTMANAGER_RESEND_S`` seconds with ``endsAt`` four resend intervals ahead. A resolved
transition is posted with ``endsAt`` set to the time it resolved. If the monitor stops, Alertmanager
resolves its alerts after at most four resend intervals.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

from monitors.routing.base import Notification, Receiver, fmt_value

_BAD_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_]")


def label_name(name: str) -> str:
    """A valid Prometheus label name (``[A-Za-z_][A-Za-z0-9_]*``).

    >>> label_name("model-version"), label_name("1x")
    ('model_version', '_1x')
    """
    out = _BAD_LABEL_CHARS.sub("_", name)
    return out if out and not out[0].isdigit() else f"_{out}"


def alertmanager_alert(n: Notification, resend_s: float) -> dict[str, Any]:
    """The postable alert (Alertmanager API v2 ``PostableAlert``) of a notification."""
    alert = n.alert
    labels = {label_name(k): str(v) for k, v in alert.labels.items()}
    labels.update(alertname=alert.rule, severity=alert.severity)
    annotations = {label_name(k): str(v) for k, v in alert.annotations.items()}
    annotations.update(
        value=fmt_value(alert.value),
        alert_id=str(alert.alert_id),
        atalaia_state=alert.state,
    )
    if alert.threshold is not None:
        annotations["threshold"] = fmt_value(alert.threshold)
    if alert.action:
        annotations["action"] = alert.action
    ends = alert.ts if alert.state == "resolved" else n.sent_at + timedelta(seconds=4 * resend_s)
    return {
        "labels": labels,
        "annotations": annotations,
        "startsAt": alert.started_at.isoformat(),
        "endsAt": ends.isoformat(),
        "generatorURL": n.generator_url,
    }


class AlertmanagerReceiver(Receiver):
    """Posts alerts to an Alertmanager at ``url`` (its base URL, e.g. ``http://127.0.0.1:9093``)."""

    name = "alertmanager"

    def __init__(self, url: str, resend_s: float, timeout_s: float) -> None:
        super().__init__(timeout_s)
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.refresh_s = resend_s

    def send(self, notification: Notification) -> None:
        """POST the alert as a one-element list."""
        assert self.refresh_s is not None
        body = json.dumps([alertmanager_alert(notification, self.refresh_s)]).encode()
        self._post(self.url, body, {})
