"""Topics, event schemas and serialization (CONTRACT section 4). No I/O here.

- :mod:`streambill.streams.topics` -- topic names, partitioning and config.
- :mod:`streambill.streams.events` -- one pydantic model per topic, and the decoders that
  turn raw bytes into a model or an error with a stable dead-letter code.
- :mod:`streambill.streams.codec` -- orjson encoding shared by producers.
"""
