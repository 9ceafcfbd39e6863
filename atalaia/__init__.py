"""Atalaia: event-driven LLMOps monitoring and retraining.

The ``atalaia`` package is the shared kernel: settings, event schemas, topics, storage, model
loading and pure metric functions. Services (``inference``, ``producers``, ``consumers``,
``monitors``, ``retrain``) import it; it imports none of them.
"""

from __future__ import annotations

__version__ = "0.1.0"
