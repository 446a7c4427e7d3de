"""What every editor route shares: templates, the signed-in user, CSRF checks and HTML error pages."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape

from api.context import ApiContext, api_context
from editor.session import COOKIE, CSRF_FIELD, CSRF_HEADER, EditorUser, SessionCodec, csrf_matches
from editor.throttle import SignInThrottle
from model.errors import NotFoundError, PermissionDeniedError, PlatformError
from storage.tenancy import TenantRepository, TenantStatus, UserRepository

PREFIX = "/app"
TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
# Scripts, styles and connections only from the app itself: no inline script can run even if some
# text ever escaped escaping, and no page can be framed by another site.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


templates = Jinja2Templates(env=_environment())


@dataclass(slots=True)
class EditorState:
    """The editor's process-wide parts, attached to the app state."""

    codec: SessionCodec
    throttle: SignInThrottle


def editor_state(request: Request) -> EditorState:
    """The editor state the composition root attached."""
    state: EditorState = request.app.state.editor
    return state


def services(request: Request) -> ApiContext:
    """The same services the API uses."""
    return api_context(request)


class LoginRequired(Exception):
    """No valid session: pages redirect to the sign-in form, HTMX requests are told to."""


class CsrfRejected(PlatformError):
    """A state-changing request without the session's CSRF token."""

    slug = "csrf"
    status = 403
    title = "Missing or wrong CSRF token"


async def _form_token(request: Request) -> str | None:
    content_type = request.headers.get("content-type", "")
    if "form" not in content_type:
        return None
    form = await request.form()
    value = form.get(CSRF_FIELD)
    return value if isinstance(value, str) else None


async def check_csrf(request: Request, expected: str) -> None:
    """Refuse a state-changing request whose token (header or form field) is not the session's."""
    if request.method not in _UNSAFE:
        return
    sent = request.headers.get(CSRF_HEADER) or await _form_token(request)
    if not csrf_matches(expected, sent):
        raise CsrfRejected("reload the page and try again (the form's security token is missing or stale)")


async def current_user(request: Request) -> EditorUser:
    """The signed-in user (loaded fresh: disabled users and role changes apply at once)."""
    session = editor_state(request).codec.decode(request.cookies.get(COOKIE))
    if session is None or not session.signed_in:
        raise LoginRequired
    await check_csrf(request, session.csrf)
    assert session.tenant_id is not None and session.user_id is not None
    db = services(request).database
    async with db.platform() as conn:
        tenant = await TenantRepository(conn).find(session.tenant_id)
    if tenant is None or tenant.status is not TenantStatus.ACTIVE:
        raise LoginRequired
    async with db.tenant(session.tenant_id) as scope:
        try:
            user = await UserRepository(scope).get(session.user_id)
        except NotFoundError:
            raise LoginRequired from None
    if user.disabled:
        raise LoginRequired
    return EditorUser(tenant.id, tenant.name, user.id, user.email, user.display_name, user.role, session.csrf)


async def rule_editor(user: Annotated[EditorUser, Depends(current_user)]) -> EditorUser:
    """The signed-in user, if their role may change rules (viewers get 403)."""
    if not user.can_edit_rules:
        raise PermissionDeniedError("your role can look at rules but not change them")
    return user


async def alarm_operator(user: Annotated[EditorUser, Depends(current_user)]) -> EditorUser:
    """The signed-in user, if their role may acknowledge and clear alarms."""
    if not user.can("alarms:write"):
        raise PermissionDeniedError("your role can look at alarms but not change them")
    return user


User = Annotated[EditorUser, Depends(current_user)]
Editor = Annotated[EditorUser, Depends(rule_editor)]
Operator = Annotated[EditorUser, Depends(alarm_operator)]


def is_htmx(request: Request) -> bool:
    """Whether HTMX sent the request (it wants a fragment)."""
    return request.headers.get("hx-request") == "true"


def render(
    request: Request,
    name: str,
    context: Mapping[str, Any] | None = None,
    *,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """A template rendered with the request, the user (if any) and the URL prefix."""
    ctx = {"prefix": PREFIX, **(context or {})}
    response = templates.TemplateResponse(request, name, ctx, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    for key, value in {**SECURITY_HEADERS, **(headers or {})}.items():
        response.headers[key] = value
    return response


def login_redirect(request: Request) -> Response:
    """Where an unauthenticated request goes: the sign-in form, back to this page afterwards."""
    target = f"{PREFIX}/login?next={quote(request.url.path)}"
    if is_htmx(request):
        return Response(status_code=401, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def error_page(request: Request, exc: PlatformError) -> HTMLResponse:
    """An HTML page (or fragment) for a platform error; a foreign object is a plain 404."""
    name = "_error.html" if is_htmx(request) else "error.html"
    return render(
        request,
        name,
        {"status": exc.status, "title": exc.title, "detail": exc.detail},
        status_code=exc.status,
    )


class EditorRoute(APIRoute):
    """Routes that answer HTML: errors become pages, missing sessions become redirects."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                return login_redirect(request)
            except PlatformError as exc:
                return error_page(request, exc)

        return route


async def in_thread(func: Callable[..., Any], *args: Any) -> Any:
    """Run CPU-bound work (password hashing) off the event loop."""
    return await asyncio.to_thread(func, *args)
