"""``retry_pipeline.worker.inspect_raw``: hostile messages recognised from their transport form."""

from __future__ import annotations

import base64
import hashlib
import zlib

from amqp.basic_message import Message as AmqpMessage
from kombu.transport.pyamqp import Message as PyamqpMessage

from retry_pipeline.worker import inspect_raw

CAP = 1_048_576


def redis_raw(body: bytes, **headers: object) -> dict[str, object]:
    return {
        "body": base64.b64encode(body).decode(),
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {"task": "retry_pipeline.report_missing", "id": "x", **headers},
        "properties": {"body_encoding": "base64", "delivery_tag": "t-1", "delivery_info": {}},
    }


def test_a_small_plain_message_passes() -> None:
    assert inspect_raw(redis_raw(b'[[{"a": 1}], {}, {}]'), CAP) is None


def test_a_compressed_message_is_refused_with_its_measure_and_an_empty_stand_in() -> None:
    body = zlib.compress(bytes(1 << 20))
    refusal = inspect_raw(redis_raw(body, compression="application/x-gzip"), CAP)
    assert refusal is not None
    assert "compress" in refusal.reason
    assert refusal.whole.size == len(body)
    assert refusal.whole.sha256 == hashlib.sha256(body).hexdigest()
    assert refusal.head == body[:65_536]
    assert refusal.headers["compression"] == "application/x-gzip"
    assert refusal.stand_in["body"] == ""
    assert "compression" not in refusal.stand_in["headers"]


def test_a_body_over_the_cap_is_refused_and_its_head_only_kept() -> None:
    body = b"[" + b"1," * CAP + b"1]"
    refusal = inspect_raw(redis_raw(body), CAP)
    assert refusal is not None
    assert f"MAX_BODY_BYTES={CAP}" in refusal.reason
    assert refusal.whole.size == len(body)
    assert len(refusal.head) == 65_536


def test_an_amqp_message_is_inspected_too() -> None:
    body = zlib.compress(b"x" * 1000)
    raw = AmqpMessage(
        body, content_type="application/json", application_headers={"compression": "zlib"}
    )
    raw.delivery_info = {"delivery_tag": 7}
    refusal = inspect_raw(raw, CAP)
    assert refusal is not None and refusal.whole.size == len(body)
    built = PyamqpMessage(refusal.stand_in)  # what the guarded channel builds instead
    assert built.body == b"" and "compression" not in built.headers
