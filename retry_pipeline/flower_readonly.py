"""Flower, read only and behind auth (issue 13). Loaded by ``flowerconfig.py``.

- Every API that changes something answers 403: applying or sending a task, revoking,
  aborting, time and rate limits, and the worker controls (shutdown, pool, consumers).
- ``/metrics`` and ``/healthcheck`` ask for the same basic auth as the rest.
- The credentials come from a file (``RETRY_PIPELINE_FLOWER_BASIC_AUTH_FILE``, one
  ``user:password`` per line), never from a command line; Flower refuses to start
  without them.
"""

from __future__ import annotations

import os
import re
from typing import Any

import tornado.web

# Flower's routes that act (2.x): everything else only reads.
REFUSED = re.compile(
    r"^/api/(task/(apply|async-apply|send-task|abort|timeout|rate-limit|revoke)/"
    r"|worker/(shutdown|pool|queue)/)"
)
PROTECTED = {"/metrics", "/healthcheck"}
AUTH_FILE = "RETRY_PIPELINE_FLOWER_BASIC_AUTH_FILE"


class ReadOnly(tornado.web.RequestHandler):
    """Answers 403 to any method: this Flower does not act on the cluster."""

    def check_xsrf_cookie(self) -> None:  # refused anyway; say why, not "xsrf missing"
        return

    def _refuse(self, *_: Any, **__: Any) -> None:
        raise tornado.web.HTTPError(403, "read-only Flower: this API is disabled")

    get = post = put = delete = patch = _refuse


def _authenticated(handler: type[Any]) -> type[Any]:
    class Authenticated(handler):  # type: ignore[misc]
        def prepare(self) -> None:
            options = self.application.options
            if not (options.basic_auth or options.auth):
                raise tornado.web.HTTPError(401)
            if not self.get_current_user():  # raises 401 on wrong basic auth
                raise tornado.web.HTTPError(401)

    Authenticated.__name__ = f"Authenticated{handler.__name__}"
    return Authenticated


def restrict(handlers: list[Any]) -> None:
    """Rewrite Flower's route list in place (Flower reads it when it starts)."""
    out: list[Any] = []
    for entry in handlers:
        pattern, handler = _route(entry)
        if REFUSED.match(pattern):
            out.append((pattern, ReadOnly))
        elif pattern in PROTECTED:
            out.append((pattern, _authenticated(handler)))
        else:
            out.append(entry)
    handlers[:] = out


def _route(entry: Any) -> tuple[str, Any]:
    if isinstance(entry, tuple):
        return str(entry[0]), entry[1]
    return str(entry.regex.pattern).rstrip("$"), entry.target


def basic_auth_from_file(path: str | None = None) -> list[str]:
    """``user:password`` lines of the credentials file."""
    path = path or os.environ.get(AUTH_FILE, "")
    if not path:
        raise SystemExit(f"read-only Flower needs {AUTH_FILE} (a file of user:password lines)")
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    if not lines or any(":" not in line for line in lines):
        raise SystemExit(f"{AUTH_FILE}: {path!r} must hold user:password lines")
    return lines


def configure() -> list[str]:
    """Restrict Flower's routes; the basic-auth credentials for its options."""
    import flower.urls

    restrict(flower.urls.handlers)
    return basic_auth_from_file()
