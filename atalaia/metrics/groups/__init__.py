"""Metric groups as plugins: one module per group, listed in :mod:`.registry`."""
