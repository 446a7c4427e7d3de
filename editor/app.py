"""Mounting the editor on an application (called by the composition root)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from editor.pages import alarms, auth, backtest, builder, channels, devices, live, rules
from editor.session import SessionCodec
from editor.throttle import SignInLimits, SignInThrottle
from editor.web import PREFIX, STATIC_DIR, EditorState


def mount_editor(
    app: FastAPI, *, secret_key: str, secure_cookies: bool, sign_in_limits: SignInLimits | None = None
) -> None:
    """Add the editor's pages under /app (outside the versioned API and its OpenAPI document)."""
    app.state.editor = EditorState(
        SessionCodec(secret_key, secure=secure_cookies), SignInThrottle(sign_in_limits or SignInLimits())
    )
    for module in (auth, rules, builder, backtest, live, alarms, devices, channels):
        app.include_router(module.router, include_in_schema=False)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC_DIR), name="editor-static")
