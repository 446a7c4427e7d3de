"""What the HTTP layer needs from the composition root, attached to the app's state."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from storage.database import Database


@dataclass(slots=True)
class ApiContext:
    """Services shared by every request of one process."""

    database: Database
    max_body_bytes: int
    ready_checks: list[str] = field(default_factory=lambda: ["database"])


def api_context(request: Request) -> ApiContext:
    """The context the composition root attached to the app."""
    ctx: ApiContext = request.app.state.api_context
    return ctx
