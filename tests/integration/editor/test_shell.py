"""The editor's shell and its security: sign-in, sessions, CSRF, tenant isolation, roles, escaping."""

from __future__ import annotations

import re

from model.scopes import Role
from tests.integration.editor.conftest import Browser, EditorTenant, make_tenant
from tests.integration.editor.rule_forms import freezer_rule_form


async def _create_rule(browser: Browser, name: str) -> str:
    response = await browser.post("/app/rules/new/save", freezer_rule_form(name))
    assert response.status_code == 204, response.text
    match = re.search(r"/app/rules/(rul_[A-Za-z0-9_-]+)", response.headers["HX-Redirect"])
    assert match
    return match.group(1)


async def test_sign_in_shows_tenant_user_and_navigation(browser: Browser, shop: EditorTenant) -> None:
    response = await browser.login(shop.id, shop.users[Role.EDITOR])
    assert response.status_code == 303
    assert response.headers["location"] == "/app/rules"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "fg_session=" in cookie
    page = await browser.get("/app/rules")
    assert page.status_code == 200
    for label in ("Rules", "Devices", "Alarms", "Channels"):
        assert f">{label}</a>" in page.text
    assert shop.id in page.text and "Editor" in page.text and "New rule" in page.text


async def test_wrong_password_and_unknown_tenant_are_refused_alike(
    browser: Browser, shop: EditorTenant
) -> None:
    wrong = await browser.login(shop.id, shop.users[Role.ADMIN], "not the password")
    unknown = await browser.login("no-such-tenant", shop.users[Role.ADMIN])
    assert wrong.status_code == unknown.status_code == 401
    assert "wrong" in wrong.text and "wrong" in unknown.text
    assert (await browser.get("/app/rules")).status_code == 303  # still signed out


async def test_pages_need_a_session(browser: Browser) -> None:
    response = await browser.get("/app/rules")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/app/login?next=/app/rules")
    htmx = await browser.http.get("/app/alarms", headers={"HX-Request": "true"})
    assert htmx.status_code == 401 and htmx.headers["HX-Redirect"].startswith("/app/login")
    browser.http.cookies.set("fg_session", "eyJjIjoieCJ9.forged.sig")
    forged = await browser.http.get("/app/rules")
    assert forged.status_code == 303


async def test_login_without_the_forms_csrf_token_is_refused(browser: Browser, shop: EditorTenant) -> None:
    await browser.get("/app/login")
    response = await browser.http.post(
        "/app/login", data={"tenant": shop.id, "email": shop.users[Role.ADMIN], "password": "x" * 20}
    )
    assert response.status_code == 403
    assert "fg_session" not in (await browser.get("/app/rules")).headers.get("set-cookie", "")


async def test_state_changing_requests_without_csrf_are_refused(browser: Browser, shop: EditorTenant) -> None:
    await browser.login(shop.id, shop.users[Role.EDITOR])
    rule_id = await _create_rule(browser, "Warm freezers")
    publish = await browser.post(f"/app/rules/{rule_id}/publish", csrf=False)
    assert publish.status_code == 403 and "CSRF" in publish.text
    browser.csrf = "a-wrong-token"
    assert (await browser.post("/app/rules/new/save", freezer_rule_form("Another"))).status_code == 403
    assert (await browser.post(f"/app/rules/{rule_id}/disable")).status_code == 403
    logout = await browser.http.post("/app/logout", data={})
    assert logout.status_code == 403
    assert (await browser.get("/app/rules")).status_code == 200  # still signed in: nothing happened


async def test_another_tenants_rule_answers_404(
    browser: Browser, other_browser: Browser, shop: EditorTenant, editor_database: object
) -> None:
    await browser.login(shop.id, shop.users[Role.EDITOR])
    rule_id = await _create_rule(browser, "Only ours")
    other = await make_tenant(editor_database, "rival")  # type: ignore[arg-type]
    await other_browser.login(other.id, other.users[Role.ADMIN])
    for url in (f"/app/rules/{rule_id}", f"/app/rules/{rule_id}/diff", f"/app/rules/{rule_id}/traces/stream"):
        response = await other_browser.get(url)
        assert response.status_code == 404, url
        assert "Only ours" not in response.text
    for url in (
        f"/app/rules/{rule_id}/publish",
        f"/app/rules/{rule_id}/enable",
        f"/app/rules/{rule_id}/restore",
    ):
        response = await other_browser.post(url, {"version": "1"})
        assert response.status_code == 404, url
    assert (await other_browser.get("/app/devices/freezer-01")).status_code == 200  # its own (same id)
    mine = await browser.get(f"/app/rules/{rule_id}")
    assert mine.status_code == 200 and "Only ours" in mine.text


async def test_a_viewer_cannot_reach_edit_actions(
    browser: Browser, other_browser: Browser, shop: EditorTenant
) -> None:
    await other_browser.login(shop.id, shop.users[Role.EDITOR])
    rule_id = await _create_rule(other_browser, "Viewed rule")
    await browser.login(shop.id, shop.users[Role.VIEWER])
    listing = await browser.get("/app/rules")
    assert "Viewed rule" in listing.text and "New rule" not in listing.text
    page = await browser.get(f"/app/rules/{rule_id}")
    assert page.status_code == 200
    assert "read only" in page.text and "Save draft" not in page.text and ">Publish" not in page.text
    assert (await browser.get("/app/rules/new")).status_code == 403
    for url in (
        "/app/rules/new/save",
        f"/app/rules/{rule_id}/save",
        f"/app/rules/{rule_id}/edit",
        f"/app/rules/{rule_id}/publish",
        f"/app/rules/{rule_id}/restore",
        f"/app/rules/{rule_id}/enable",
    ):
        response = await browser.post(url, [*freezer_rule_form("Changed by a viewer"), ("version", "1")])
        assert response.status_code == 403, url
    assert "Changed by a viewer" not in (await browser.get("/app/rules")).text


async def test_user_input_is_escaped(browser: Browser, shop: EditorTenant) -> None:
    await browser.login(shop.id, shop.users[Role.EDITOR])
    name = "<script>alert(1)</script>"
    rule_id = await _create_rule(browser, name)
    for url in ("/app/rules", f"/app/rules/{rule_id}", "/app/rules?q=%3Cscript%3E"):
        page = await browser.get(url)
        assert name not in page.text, url
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text, url
    check = await browser.post(
        f"/app/rules/{rule_id}/check", freezer_rule_form('"><img src=x onerror=alert(1)>')
    )
    assert "<img src=x" not in check.text


async def test_sign_out_ends_the_session(browser: Browser, shop: EditorTenant) -> None:
    await browser.login(shop.id, shop.users[Role.ADMIN])
    response = await browser.http.post("/app/logout", data={"csrf_token": browser.csrf})
    assert response.status_code == 303
    assert (await browser.get("/app/rules")).status_code == 303


async def test_alarms_acknowledge_and_clear_by_role(
    browser: Browser, other_browser: Browser, shop: EditorTenant, editor_database: object
) -> None:
    from datetime import UTC, datetime

    from engine.alarms import AlarmService

    service = AlarmService(editor_database)  # type: ignore[arg-type]
    alarm, _ = await service.raise_alarm(
        shop.id, "rul_x", "freezer-01", "freezer-warm", "major", "<b>warm</b>", datetime.now(UTC)
    )
    await other_browser.login(shop.id, shop.users[Role.VIEWER])
    seen = await other_browser.get("/app/alarms")
    assert (
        "freezer-warm" in seen.text
        and "&lt;b&gt;warm&lt;/b&gt;" in seen.text
        and ">Acknowledge<" not in seen.text
    )
    assert (await other_browser.post(f"/app/alarms/{alarm.id}/acknowledge")).status_code == 403
    await browser.login(shop.id, shop.users[Role.EDITOR])
    acked = await browser.post(f"/app/alarms/{alarm.id}/acknowledge")
    assert acked.status_code == 200 and '<td class="state">acknowledged</td>' in acked.text
    assert (await browser.post(f"/app/alarms/{alarm.id}/clear")).status_code == 200
    assert "No active alarms" in (await browser.get("/app/alarms")).text
    assert (await browser.post("/app/alarms/alm_unknown/acknowledge")).status_code == 404


async def test_an_invalid_rule_is_listed_with_its_reason(
    browser: Browser, shop: EditorTenant, editor_database: object
) -> None:
    from engine.rules import RuleRepository

    await browser.login(shop.id, shop.users[Role.EDITOR])
    rule_id = await _create_rule(browser, "Broken later")
    async with editor_database.tenant(shop.id) as scope:  # type: ignore[attr-defined]
        await RuleRepository(scope).update(rule_id, {"invalid_reason": "unknown device type 'fridge'"})
    listing = await browser.get("/app/rules?status=invalid")
    assert "Broken later" in listing.text and "unknown device type &#39;fridge&#39;" in listing.text


async def test_pages_forbid_inline_scripts_and_framing(browser: Browser, shop: EditorTenant) -> None:
    page = await browser.get("/app/login")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
