"""Pure billing domain: money, rating, balance transitions. No I/O, no Kafka, no clocks.

- :mod:`streambill.domain.money` -- integer micros, parsing, the one rounding function.
- :mod:`streambill.domain.rating` -- prices a usage quantity with a customer's price list.
- :mod:`streambill.domain.ledger` -- the balance state machine that turns events into
  ledger entries exactly once.
"""
