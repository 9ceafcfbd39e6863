"""The inference service: an OpenAI-compatible chat API whose traffic Atalaia watches."""

from __future__ import annotations
