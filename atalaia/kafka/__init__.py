"""Kafka plumbing of the kernel: the one place that builds Kafka clients (:mod:`atalaia.kafka.clients`).

The local development broker lives in the composition layer (:mod:`composition.kafka.broker`); the
kernel never starts one.
"""
