"""Jinja2 templates of the console (Japanese, autoescaped)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from retry_pipeline import wording
from retry_pipeline.web.auth import console_of
from retry_pipeline.web.scope import Scope

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TEMPLATES.env.globals["w"] = wording


def render(
    request: Request, name: str, scope: Scope | None, status: int = 200, **context: Any
) -> HTMLResponse:
    """A page; ``scope`` (None before login) gives the header its user and office."""
    console = console_of(request)
    context.update(scope=scope, today=wording.date_text(console.now()))
    return TEMPLATES.TemplateResponse(request, name, context, status_code=status)
