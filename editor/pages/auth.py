"""Sign in and sign out with a tenant user's email and password (ADR 0021)."""

from __future__ import annotations

import logging
import math

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from editor.session import COOKIE, CSRF_FIELD, csrf_matches
from editor.throttle import Attempt, account_key, address_key
from editor.web import PREFIX, EditorRoute, User, editor_state, in_thread, render, services
from storage.credentials import hash_password, verify_password
from storage.tenancy import TenantRepository, TenantStatus, UserRepository

logger = logging.getLogger(__name__)
router = APIRouter(route_class=EditorRoute)

# Verified when the tenant or user does not exist, so a wrong email takes as long as a wrong password.
_DUMMY_HASH = hash_password("not-a-password-of-anyone")
_REFUSED = "The tenant, email or password is wrong, or the account is disabled."


def _too_many(wait_s: float) -> str:
    minutes = math.ceil(wait_s / 60)
    when = f"{minutes} minute{'s' if minutes != 1 else ''}"
    if minutes > 120:
        hours = math.ceil(minutes / 60)
        when = f"{hours} hours"
    return f"Too many failed sign-ins; try again in {when}."


def _safe_next(target: str) -> str:
    if target.startswith(f"{PREFIX}/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{PREFIX}/rules"


@router.get(PREFIX, include_in_schema=False)
async def home() -> Response:
    """The editor starts at the rules."""
    return RedirectResponse(f"{PREFIX}/rules", status_code=303)


@router.get(f"{PREFIX}/login", include_in_schema=False)
async def login_form(request: Request, next: str = "") -> Response:
    """The sign-in form, with a fresh anonymous session holding its CSRF token."""
    codec = editor_state(request).codec
    session = codec.decode(request.cookies.get(COOKIE))
    if session is None or session.signed_in:
        session = codec.anonymous()
    response = render(
        request, "login.html", {"csrf": session.csrf, "next": _safe_next(next), "tenant": "", "email": ""}
    )
    response.set_cookie(value=codec.encode(session), **codec.cookie_kwargs())
    return response


@router.post(f"{PREFIX}/login", include_in_schema=False)
async def login(request: Request) -> Response:
    """Check the password (Argon2, off the event loop) and start a new session.

    Failed sign-ins are throttled per account and per client address (ADR 0028): while either is
    locked the answer is 429 with ``Retry-After``, and neither the database nor the password is
    looked at, so a locked key costs no Argon2 and says nothing about whether the account exists.
    """
    state = editor_state(request)
    codec = state.codec
    form = await request.form()
    session = codec.decode(request.cookies.get(COOKIE))
    sent = form.get(CSRF_FIELD)
    tenant_id = str(form.get("tenant", "")).strip()
    email = str(form.get("email", "")).strip()
    password = str(form.get("password", ""))
    target = _safe_next(str(form.get("next", "")))
    if session is None or not csrf_matches(session.csrf, sent if isinstance(sent, str) else None):
        fresh = codec.anonymous()
        response = render(
            request,
            "login.html",
            {
                "csrf": fresh.csrf,
                "next": target,
                "tenant": tenant_id,
                "email": email,
                "error": "The form expired; please sign in again.",
            },
            status_code=403,
        )
        response.set_cookie(value=codec.encode(fresh), **codec.cookie_kwargs())
        return response
    account = account_key(tenant_id, email)
    client = request.client.host if request.client else None
    address = address_key(client)
    attempt = state.throttle.begin(account, address)
    if isinstance(attempt, Attempt):
        user_id = await _verify(request, tenant_id, email, password)
        if user_id is not None:
            state.throttle.succeeded(attempt)
            redirect = RedirectResponse(target, status_code=303)
            redirect.set_cookie(
                value=codec.encode(codec.signed_in(tenant_id, user_id)), **codec.cookie_kwargs()
            )
            return redirect
        if locked := attempt.started_locks:
            logger.warning(
                "editor sign-in: %s locked after failed sign-ins (tenant %r, email %r, client %s)",
                " and ".join(locked),
                tenant_id[:64],
                email[:254],
                client,
            )
        wait_s = state.throttle.retry_after(account, address)
    else:
        wait_s = attempt
    context = {"csrf": session.csrf, "next": target, "tenant": tenant_id, "email": email}
    if wait_s <= 0:
        return render(request, "login.html", {**context, "error": _REFUSED}, status_code=401)
    return render(
        request,
        "login.html",
        {**context, "error": _too_many(wait_s)},
        status_code=429,
        headers={"Retry-After": str(math.ceil(wait_s))},
    )


async def _verify(request: Request, tenant_id: str, email: str, password: str) -> str | None:
    db = services(request).database
    found = None
    if tenant_id and email and len(tenant_id) <= 64:
        async with db.platform() as conn:
            tenant = await TenantRepository(conn).find(tenant_id)
        if tenant is not None and tenant.status is TenantStatus.ACTIVE:
            async with db.tenant(tenant_id) as scope:
                found = await UserRepository(scope).password_hash_for(email)
    password_hash = found[1] if found else _DUMMY_HASH
    matches = await in_thread(verify_password, password_hash, password)
    if found is None or not matches or found[0].disabled:
        return None
    return found[0].id


@router.post(f"{PREFIX}/logout", include_in_schema=False)
async def logout(request: Request, user: User) -> Response:
    """End the session (the CSRF check keeps other sites from signing people out)."""
    codec = editor_state(request).codec
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax", secure=codec.secure)
    return response
