"""Local development broker: Kafka assembled from Maven Central and run on 127.0.0.1 (:mod:`.broker`).

The kernel's :mod:`atalaia.kafka` builds clients; this package only starts and stops a broker for
``atalaia kafka``, the demo and the tests.
"""
