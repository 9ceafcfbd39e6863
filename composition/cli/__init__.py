"""The ``atalaia`` command line."""

from __future__ import annotations
