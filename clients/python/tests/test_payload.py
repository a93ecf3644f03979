"""Payload encoding: JSON-like kwargs survive the trip through Struct."""

import enum

import pytest

from retryd.payload import PayloadError, check_payload, from_struct, to_struct


class Color(enum.IntEnum):
    RED = 1


def test_round_trip_keeps_ints_ints():
    payload = {
        "pipeline_job_id": "job-1",
        "page": 3,
        "ratio": 0.5,
        "big": 2**53,
        "flag": True,
        "none": None,
        "nested": {"a": [1, "two", 3.25, None, {"b": False}]},
        "tuple": (1, 2),
        "enum": Color.RED,
    }
    back = from_struct(to_struct(payload))
    assert back == {**payload, "tuple": [1, 2], "enum": 1}
    assert type(back["page"]) is int and type(back["ratio"]) is float
    assert type(back["flag"]) is bool


def test_none_payload_is_absent():
    assert to_struct(None) is None
    assert from_struct(None) == {}


@pytest.mark.parametrize(
    "payload, where",
    [
        ({"when": object()}, "payload.when"),
        ({"n": 2**53 + 1}, "payload.n"),
        ({"nested": {1: "x"}}, "payload.nested"),
        ({"xs": [1, {2}]}, "payload.xs[1]"),
        ({"f": float("nan")}, "payload.f"),
        ({"b": b"bytes"}, "payload.b"),
    ],
)
def test_unrepresentable_values_are_refused_with_their_path(payload, where):
    with pytest.raises(PayloadError) as err:
        check_payload(payload)
    assert where in str(err.value)


def test_payload_must_be_a_mapping():
    with pytest.raises(PayloadError):
        check_payload([("a", 1)])


def _nested(depth):
    """A payload whose objects and lists nest depth deep (the payload is 1)."""
    value = "leaf"
    for i in range(depth - 1):
        value = {"k": value} if i % 2 else [value]
    return {"root": value}


def test_nesting_is_bounded_as_retryd_bounds_it():
    from retryd.payload import MAX_DEPTH

    assert MAX_DEPTH == 20
    check_payload(_nested(MAX_DEPTH))
    with pytest.raises(PayloadError, match="21 deep; retryd accepts at most 20"):
        check_payload(_nested(MAX_DEPTH + 1))
