"""Monitors: rules over the metric stream, alert lifecycle, routing."""

from __future__ import annotations
