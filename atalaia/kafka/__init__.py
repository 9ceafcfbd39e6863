"""Kafka plumbing of Atalaia: the local development broker (:mod:`atalaia.kafka.broker`)."""
