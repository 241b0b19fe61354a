"""Task messages written onto kombu's Redis transport as that transport writes them,
many to one ``LPUSH``: the outcomes of the 08:30 release (issue 11).

Why: the release ends thousands of chains at the opening, and each ending is one outcome
task. Through kombu, each message is serialized, wrapped in the transport's envelope,
given a delivery tag, serialized again as a whole and pushed with a Redis command of its
own: about 44 µs a message on this machine, the largest part of a released chain's
cost. Here the envelope's constant parts are serialized once per task name, each
message fills in its own strings (body, id, ``kwargsrepr``, delivery tag), and a batch
goes as one ``LPUSH`` per thousand messages in one round trip: about 19 µs a message.

The bytes are kombu's own (``tests/integration/test_redis_wire.py`` compares them, byte
for byte but for the random ids, with what ``Producer.publish`` writes) and a Celery
worker reads them like any other. The wire is used only where kombu would do nothing
else per message: its Redis transport (Sentinel's channel included: the same command
goes to the master), the body base64, no global key prefix, the app's JSON serializer
without compression, priority 0 and a queue without expiry. Anywhere else ``wire_for``
answers ``None`` and ``TaskPublisher`` sends through kombu.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring_ascii as as_json  # what json.dumps writes a str as
from typing import Any

from celery.utils.nodenames import anon_nodename
from kombu import entity, serialization
from kombu.transport.redis import Channel as RedisChannel
from kombu.utils import encoding
from kombu.utils import json as kombu_json

from retry_pipeline.adapters.task_message import EMBED, KWARGSREPR_MAX, task_headers

LPUSH_MAX = 1000  # messages per LPUSH command (kombu's batch size, in commands)
_SLOT = "\ue000{}\ue000"  # a private-use marker: stands for a per-message string

# kombu's own functions (untyped there): its serializer registry, its JSON, its modes
serialize: Callable[..., tuple[str, str, str | bytes]] = serialization.dumps
json_dumps: Callable[[Any], str] = kombu_json.dumps
maybe_delivery_mode: Callable[[Any], int] = entity.maybe_delivery_mode
str_to_bytes: Callable[[str | bytes], bytes] = encoding.str_to_bytes


def _refuse(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def json_writer() -> Callable[[Any], str]:
    """``json.dumps`` with its defaults, from one C encoder made once (``dumps`` makes
    one for every call: a third of a small body's cost), or ``dumps`` itself in a Python
    without the C accelerator. No check for cycles (a message's kwargs are a tree); a
    value JSON has no form for raises TypeError, as ``dumps`` does."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return json.dumps
    encode = make(None, _refuse, as_json, None, ": ", ", ", False, False, True)
    return lambda value: "".join(encode(value, 0))


write_json = json_writer()


def uuid4_strings(n: int) -> list[str]:
    """``n`` random (version 4) UUIDs as strings, from one read of the OS's random bytes:
    what ``str(uuid.uuid4())`` gives, at a fraction of its cost per id."""
    raw = bytearray(os.urandom(16 * n))
    out = []
    for i in range(0, 16 * n, 16):
        raw[i + 6] = (raw[i + 6] & 0x0F) | 0x40  # version 4
        raw[i + 8] = (raw[i + 8] & 0x3F) | 0x80  # RFC 4122 variant
        h = raw[i : i + 16].hex()
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out


class RedisTaskWire:
    """Writes task messages (sent by name, keyword arguments only) to one queue."""

    FIELDS = ("body", "id", "kwargsrepr", "tag")
    # where they stand in the envelope: body; id, root_id, kwargsrepr; correlation_id, tag
    SHAPE = (0, 1, 1, 2, 1, 3)

    def __init__(self, app: Any, channel: Any, queue: Any, origin: str) -> None:
        conf = app.conf
        self.channel = channel
        self.queue = queue.name
        self.key = channel._q_for_pri(queue.name, 0)  # the list kombu pushes priority 0 to
        self.origin = origin
        self.serializer = conf.task_serializer
        self.delivery_mode = maybe_delivery_mode(
            queue.exchange.delivery_mode or conf.task_default_delivery_mode
        )
        self.content_type, self.content_encoding, _ = serialize({}, serializer=self.serializer)
        # kombu's JSON is the standard library's with a fallback for other types: where
        # the standard library writes a value, the bytes are the same, without kombu's
        # encoder made anew for each message (half of a body's cost)
        codec = getattr(serialization.registry, "_encoders", {}).get(self.serializer)
        self.stdlib_first = getattr(codec, "encoder", None) is kombu_json.dumps
        self._templates: dict[str, str] = {}

    def _template(self, name: str) -> str:
        """The envelope of task ``name`` serialized once, as a ``%`` format with a named
        gap (``%(id)s``) where each per-message string goes (the body's in quotes: Base64
        needs no JSON escape; the others are JSON strings already)."""
        known = self._templates.get(name)
        if known is not None:
            return known
        mark = {f: _SLOT.format(f) for f in self.FIELDS}
        envelope = {  # the dict kombu's virtual channel builds (prepare_message, then
            # _inplace_augment_message), key for key in its order
            "body": mark["body"],
            "content-encoding": self.content_encoding,
            "content-type": self.content_type,
            "headers": task_headers(mark["id"], name, mark["kwargsrepr"], self.origin),
            "properties": {
                "correlation_id": mark["id"],
                "reply_to": "",
                "delivery_mode": self.delivery_mode,
                "delivery_info": {"exchange": "", "routing_key": self.queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": mark["tag"],
            },
        }
        text = json_dumps(envelope)  # as kombu's Redis channel serializes it
        quoted = {as_json(m): i for i, m in enumerate(mark.values())}
        cut = re.split("(" + "|".join(map(re.escape, quoted)) + ")", text)
        found = [self.FIELDS[quoted[q]] for q in cut[1::2]]
        if tuple(self.FIELDS.index(f) for f in found) != self.SHAPE:  # a marker in the name
            raise ValueError(f"the task name {name!r} cannot be written on the wire")
        gaps = [f'"%({f})s"' if f == "body" else f"%({f})s" for f in found]
        pieces = [piece.replace("%", "%%") for piece in cut[0::2]]
        template = pieces[0] + "".join(g + p for g, p in zip(gaps, pieces[1:], strict=True))
        self._templates[name] = template
        return template

    def encode(self, name: str, kwargs: dict[str, Any], task_id: str, tag: str) -> str:
        """One message as the Redis list holds it."""
        body = base64.b64encode(str_to_bytes(self._body(kwargs))).decode()  # kombu's codec
        return self._template(name) % {
            "body": body, "id": as_json(task_id), "tag": as_json(tag),
            "kwargsrepr": as_json(repr(kwargs)[:KWARGSREPR_MAX]),
        }  # fmt: skip

    def _body(self, kwargs: dict[str, Any]) -> str | bytes:
        """The serialized body ``((), kwargs, embed)``, as kombu's registry writes it."""
        if self.stdlib_first:
            try:
                return write_json(((), kwargs, EMBED))
            except TypeError:  # a date, a UUID, bytes ...: kombu's encoder writes those
                pass
        return serialize(((), kwargs, EMBED), serializer=self.serializer)[2]

    def push(self, messages: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
        """Writes ``(task name, kwargs)`` messages in order, in one round trip, and returns
        their task ids. A failure raises, and any of the LPUSH commands (a thousand
        messages each) may have gone: the caller counts none as handed, and the relay
        sends them all again (the examination side drops a repeat by its key)."""
        n = len(messages)
        ids = uuid4_strings(2 * n)
        task_ids, tags = ids[:n], ids[n:]
        encoded = [
            self.encode(name, kwargs, task_id, tag)
            for (name, kwargs), task_id, tag in zip(messages, task_ids, tags, strict=True)
        ]
        with self.channel.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            for first in range(0, n, LPUSH_MAX):  # the list's head: read from its tail, in order
                pipe.lpush(self.key, *encoded[first : first + LPUSH_MAX])
            pipe.execute()
        return task_ids


# What kombu's Redis channel does per message; a subclass that overrides any of them may
# write something else, so the wire leaves its messages to kombu.
_KOMBU_PATH = ("prepare_message", "basic_publish", "_inplace_augment_message",
               "encode_body", "_next_delivery_tag", "_put", "_q_for_pri")  # fmt: skip


def kombu_writes_as_the_wire(channel: Any) -> bool:
    """Whether kombu's publish on ``channel`` writes what the wire writes: its own Redis
    channel (or Sentinel's, which changes none of the path), the body base64 and no
    global key prefix."""
    return (
        isinstance(channel, RedisChannel)
        and all(getattr(type(channel), m) is getattr(RedisChannel, m) for m in _KOMBU_PATH)
        and channel.body_encoding == "base64"
        and not channel.global_keyprefix
        and not channel.default_priority
    )


def wire_for(app: Any, producer: Any, queue: Any) -> RedisTaskWire | None:
    """A wire for ``queue`` on the producer's channel (the queue declared first, as kombu
    declares it), or ``None`` when kombu must send: another transport or channel, the
    ``auth`` serializer or another than JSON, compression, a queue that expires."""
    conf = app.conf
    if conf.task_serializer != "json" or conf.task_compression:
        return None
    channel = producer.channel
    if not kombu_writes_as_the_wire(channel):
        return None
    producer.maybe_declare(queue)
    if queue.name in channel._expires:  # kombu would PEXPIRE the list after each push
        return None
    return RedisTaskWire(app, channel, queue, anon_nodename())
