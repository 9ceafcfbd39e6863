"""Alert routing: receivers (Alertmanager, signed webhook, Slack) and durable, retried delivery."""

from __future__ import annotations

from monitors.routing.base import DeliveryError, Notification, Receiver
from monitors.routing.delivery import DeliveryWorker, enqueue, receivers_from_settings

__all__ = ["DeliveryError", "DeliveryWorker", "Notification", "Receiver", "enqueue", "receivers_from_settings"]
