"""Channels from the editor: a kind from Apprise's list, its fields, a sealed URL, a rule using it."""

from __future__ import annotations

import re

from model.scopes import Role
from tests.integration.editor.conftest import Browser, EditorTenant
from tests.integration.editor.rule_forms import freezer_rule_form


async def test_create_a_channel_from_its_kinds_fields_and_use_it_in_a_rule(
    browser: Browser, shop: EditorTenant
) -> None:
    await browser.login(shop.id, shop.users[Role.ADMIN])
    page = await browser.get("/app/channels")
    assert '<option value="Slack">Slack</option>' in page.text and "No channels yet" in page.text
    fields = await browser.get("/app/channels/fields?service=JSON&template=0")
    assert 'name="t|schema"' in fields.text and 'name="t|host"' in fields.text
    secret = "s3cr3t-pw"
    with_password = await browser.get("/app/channels/fields?service=JSON&template=4")
    assert 'name="t|password" type="password"' in with_password.text
    created = await browser.post(
        "/app/channels",
        [
            ("name", "night-shift"),
            ("description", "Night shift webhook"),
            ("service", "JSON"),
            ("template", "4"),
            ("t|schema", "jsons"),
            ("t|user", "olivia"),
            ("t|password", secret),
            ("t|host", "hooks.example.com"),
        ],
    )
    assert created.status_code == 204, created.text
    listing = await browser.get("/app/channels")
    assert "night-shift" in listing.text and "hooks.example.com" in listing.text
    assert secret not in listing.text  # the URL is a secret: only its preview is shown
    private = await browser.post(
        "/app/channels",
        [
            ("name", "local"),
            ("service", "JSON"),
            ("template", "0"),
            ("t|schema", "json"),
            ("t|host", "127.0.0.1"),
        ],
    )
    assert private.status_code == 422 and "127.0.0.1" in private.text
    builder = await browser.post(
        "/app/rules/new/edit", [*freezer_rule_form("R"), ("op", "add|then"), ("new|then", "notify")]
    )
    assert re.search(r'<input type="checkbox" name="o\|then/1\|channels" value="night-shift"', builder.text)


async def test_viewers_cannot_create_channels(browser: Browser, shop: EditorTenant) -> None:
    await browser.login(shop.id, shop.users[Role.VIEWER])
    assert "New channel" not in (await browser.get("/app/channels")).text
    response = await browser.post("/app/channels", [("name", "x"), ("service", "JSON")])
    assert response.status_code == 403
