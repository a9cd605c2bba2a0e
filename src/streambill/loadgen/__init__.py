"""Synthetic load for ``streambill demo`` and ``streambill bench``.

Generation is pure and deterministic for a seed; Kafka I/O sits in separate modules so the
shape of the traffic can be tested without a broker.

- :mod:`streambill.loadgen.population` -- demo resellers and customers, their account events
  and initial top-ups.
- :mod:`streambill.loadgen.traffic` -- business-hours activity, call lengths, heavy users,
  the usage stream and the local spend tracker that posts manual top-ups.
- :mod:`streambill.loadgen.stats` -- percentiles, medians and the bench result object.
- :mod:`streambill.loadgen.kafka` -- the idempotent producer and the ledger watcher.
- :mod:`streambill.loadgen.baseline` -- the raw aiokafka consume + decode floor.
- :mod:`streambill.loadgen.workers` -- worker resident memory from /metrics or pid files.
"""
