"""The Redis wire's JSON writer (``redis_wire.write_json``) writes what ``json.dumps``
writes with its defaults, for any JSON value, and refuses what ``dumps`` refuses; the
wire's whole messages are compared with kombu's in ``tests/integration/test_redis_wire.py``."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retry_pipeline.adapters import redis_wire
from retry_pipeline.adapters.redis_wire import json_writer, write_json

SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text()
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(VALUES)
def test_writes_what_json_dumps_writes(value: Any) -> None:
    assert write_json(value) == json.dumps(value)


@pytest.mark.parametrize(
    "value",
    [
        ((), {"a": '大阪\n\u3000\t\x00"\\', "b": [math.inf, -0.0, 10**30]}, {"c": None}),
        {"nested": [{"deep": [[[]]]}], "empty": {}},
        "x" * 5000,
    ],
)
def test_the_cases_a_message_meets(value: Any) -> None:
    assert write_json(value) == json.dumps(value)


@pytest.mark.parametrize("odd", [datetime(2026, 11, 30, tzinfo=UTC), Decimal("1.5"), b"x", {1j}])
def test_refuses_what_dumps_refuses(odd: Any) -> None:
    with pytest.raises(TypeError):
        json.dumps({"k": [odd]})
    with pytest.raises(TypeError):  # the wire then lets kombu's encoder write the body
        write_json({"k": [odd]})
    assert write_json({"k": ["after a refusal"]}) == json.dumps({"k": ["after a refusal"]})


def test_without_the_c_accelerator_it_is_dumps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_wire.json.encoder, "c_make_encoder", None)
    assert json_writer() is json.dumps
