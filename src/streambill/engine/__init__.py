"""Stream processing logic of the agents, testable without Kafka or Faust.

- :mod:`streambill.engine.balances` -- :class:`~streambill.engine.balances.BalanceEngine`,
  the batch processor behind the ``balances`` agent, and the two-phase publish contract.
"""
