"""Payloads: Python keyword arguments ⇄ ``google.protobuf.Struct``.

A payload is what a retry is dispatched with, so it travels as JSON-like
data: ``str``, ``int``, ``float``, ``bool``, ``None``, lists (tuples become
lists) and dicts with ``str`` keys. ``Struct`` numbers are IEEE doubles, so
an ``int`` must lie within ±2**53 to survive the trip, and whole-number
doubles come back as ``int`` (``page=3`` is dispatched as ``3``, not
``3.0``). Anything else is refused before the task runs, with the path of
the offending value, rather than silently changed.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional

from google.protobuf import struct_pb2

__all__ = ["PayloadError", "MAX_DEPTH", "to_struct", "from_struct", "check_payload"]

_MAX_EXACT_INT = 2**53

#: How deeply a payload's objects and lists may nest (the payload itself is
#: 1); retryd refuses deeper ones (server/validate.go, MaxPayloadDepth).
MAX_DEPTH = 20


class PayloadError(TypeError):
    """A value cannot be carried by a ``google.protobuf.Struct`` payload."""


def _check(value: Any, path: str, depth: int = 0) -> Any:
    if isinstance(value, (Mapping, list, tuple)):
        depth += 1
        if depth > MAX_DEPTH:
            raise PayloadError(
                f"payload value {path} nests objects and lists {depth} deep; retryd accepts at most {MAX_DEPTH}"
            )
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if abs(value) > _MAX_EXACT_INT:
            raise PayloadError(
                f"payload value {path} = {value} is beyond ±2**53, which a JSON number "
                "(google.protobuf.Struct) cannot hold exactly; pass it as a string"
            )
        return int(value)  # bool excluded above; IntEnum and friends become int
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PayloadError(f"payload value {path} = {value!r} is not a finite number")
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise PayloadError(f"payload key {key!r} in {path} is not a string")
            out[key] = _check(item, f"{path}.{key}", depth)
        return out
    if isinstance(value, (list, tuple)):
        return [_check(item, f"{path}[{i}]", depth) for i, item in enumerate(value)]
    raise PayloadError(
        f"payload value {path} has type {type(value).__name__}; payloads hold only "
        "str, int, float, bool, None, lists and dicts with str keys"
    )


def check_payload(payload: Mapping[str, Any]) -> Dict[str, Any]:
    """Validate a payload and return it normalised (tuples as lists)."""
    if not isinstance(payload, Mapping):
        raise PayloadError(f"a payload is a mapping of keyword arguments, not {type(payload).__name__}")
    return _check(payload, "payload")


def to_struct(payload: Optional[Mapping[str, Any]]) -> Optional[struct_pb2.Struct]:
    """Encode a payload; None stays None (the server keeps the stored one)."""
    if payload is None:
        return None
    struct = struct_pb2.Struct()
    struct.update(check_payload(payload))
    return struct


def _from_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "null_value" or kind is None:
        return None
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and abs(number) <= _MAX_EXACT_INT:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return from_struct(value.struct_value)
    return [_from_value(item) for item in value.list_value.values]


def from_struct(struct: Optional[struct_pb2.Struct]) -> Dict[str, Any]:
    """Decode a payload; an absent struct is an empty dict."""
    if struct is None:
        return {}
    return {key: _from_value(value) for key, value in struct.fields.items()}
