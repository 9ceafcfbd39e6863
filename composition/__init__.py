"""The composition layer of Atalaia: the ``atalaia`` command, the demo, the report and the local broker.

This is the only package that may import every service (``inference``, ``consumers``, ``monitors``,
``retrain``, ``producers``, ``otlp``, ``gateway``) and wire them together. The kernel (``atalaia/``)
imports no service and nothing here; ``tests/unit/test_layers.py`` walks the syntax trees to keep it so.
"""
