"""Secrets never printed: every URL shown to a person goes through ``mask_url``."""

from __future__ import annotations

from kombu.utils.url import maybe_sanitize_url


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``**`` (Redis, PostgreSQL, any scheme)."""
    try:
        return str(maybe_sanitize_url(url, mask="**"))
    except Exception:  # an unparsable URL is shown as nothing rather than leaked
        return "<url>"
