"""orjson encoding for every message we produce."""

from __future__ import annotations

from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    """Encode a JSON-able value (dicts, pydantic dumps) to compact UTF-8 bytes.

    >>> dumps({"a": 1, "b": "x"})
    b'{"a":1,"b":"x"}'
    """
    return orjson.dumps(value)


def loads(raw: bytes | str) -> Any:
    return orjson.loads(raw)
