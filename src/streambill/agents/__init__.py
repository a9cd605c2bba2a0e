"""The Faust app and its agents, one per module, each thin: decode, call pure code, emit.

- :mod:`streambill.agents.app` -- builds the Faust app from settings (tables, topics, web).
- :mod:`streambill.agents.accounts` -- fills the global accounts table from the compacted
  ``billing.accounts.v1`` topic.
- :mod:`streambill.agents.balances` -- rates usage, applies payments, emits the ledger.
- :mod:`streambill.agents.publisher` -- the acknowledged producer the agents emit through.
- :mod:`streambill.agents.worker` -- ``streambill worker``.
"""
