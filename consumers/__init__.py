"""Stream processors (faust): score every event and store the scores, exactly once in effect."""

from __future__ import annotations
