"""The event-emitting SDK (:class:`producers.sdk.EventProducer`) and the traffic simulator."""

from __future__ import annotations

from producers.sdk import EventProducer

__all__ = ["EventProducer"]
