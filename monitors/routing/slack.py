"""Slack-compatible receiver: an incoming-webhook message (``text`` plus Block Kit ``blocks``).

Works with Slack incoming webhooks and with tools that accept the same payload (Mattermost,
Rocket.Chat and others read ``text``).
"""

from __future__ import annotations

import json
from typing import Any

from monitors.routing.base import Notification, Receiver, fmt_value

_ICON = {"firing": ":rotating_light:", "resolved": ":white_check_mark:", "pending": ":hourglass:"}


def slack_payload(n: Notification) -> dict[str, Any]:
    """The message: a one-line ``text`` (also the notification preview) and blocks with details."""
    alert = n.alert
    state = alert.state.upper() + (" (reminder)" if n.repeat else "")
    scope = ", ".join(f"{k}={v}" for k, v in alert.labels.items() if k != "alertname")
    summary = alert.annotations.get("summary", "")
    text = f"{_ICON.get(alert.state, '')} [{state}] {alert.rule} ({alert.severity}) {scope}: {summary}".strip()
    fields = [
        {"type": "mrkdwn", "text": f"*Value*\n{fmt_value(alert.value)}"},
        {"type": "mrkdwn", "text": f"*Threshold*\n{fmt_value(alert.threshold)}"},
        {"type": "mrkdwn", "text": f"*Severity*\n{alert.severity}"},
        {"type": "mrkdwn", "text": f"*Since*\n{alert.started_at.isoformat(timespec='seconds')}"},
    ]
    if alert.action:
        fields.append({"type": "mrkdwn", "text": f"*Action*\n{alert.action}"})
    context = f"{scope or 'all'} · alert `{alert.alert_id}` · <{n.generator_url}|details>"
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*[{state}] {alert.rule}*\n{summary}"}},
            {"type": "section", "fields": fields},
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": context}],
            },
        ],
    }


class SlackReceiver(Receiver):
    """POSTs messages to a Slack-compatible incoming webhook."""

    name = "slack"

    def __init__(self, url: str, timeout_s: float) -> None:
        super().__init__(timeout_s)
        self.url = url

    def send(self, notification: Notification) -> None:
        """POST the message."""
        self._post(self.url, json.dumps(slack_payload(notification)).encode(), {})
