"""The rule builder through HTTP: validation as you type, edits, save, diff, publish, restore, backtest."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI

from model.readings import Reading, Source
from model.scopes import Role
from tests.integration.editor.conftest import Browser, EditorTenant
from tests.integration.editor.rule_forms import freezer_rule_form


def _rule_id(response_location: str) -> str:
    match = re.search(r"/app/rules/(rul_[A-Za-z0-9_-]+)", response_location)
    assert match
    return match.group(1)


async def test_expression_errors_land_on_the_field_with_a_suggestion(
    browser: Browser, shop: EditorTenant
) -> None:
    await browser.login(shop.id, shop.users[Role.EDITOR])
    response = await browser.post("/app/rules/new/check", freezer_rule_form("R", expression="tmp > -10"))
    assert response.status_code == 200
    field_slot = re.search(
        r'<p class="field-error" id="f-o-if-1-expression-err" hx-swap-oob="true">(.*?)</p>',
        response.text,
        re.S,
    )
    assert field_slot and "Did you mean “temp”" in field_slot.group(1), response.text
    assert 'class="condition err"' in response.text and 'data-path="if/1"' in response.text
    assert "3 devices match" in response.text  # freezer + region=north
    fixed = await browser.post("/app/rules/new/check", freezer_rule_form("R", expression="temp > -10"))
    assert "No problems" in fixed.text and ' err"' not in fixed.text


async def test_bad_option_values_are_reported_on_their_node_path(
    browser: Browser, shop: EditorTenant
) -> None:
    await browser.login(shop.id, shop.users[Role.EDITOR])
    response = await browser.post("/app/rules/new/check", freezer_rule_form("R", value="warm"))
    slot = re.search(r'id="f-o-if-0-value-err" hx-swap-oob="true">(.*?)</p>', response.text, re.S)
    assert slot and "number" in slot.group(1)
    assert "if/0</a> → options.value" in response.text


async def test_add_nested_conditions_and_remove_them(browser: Browser, shop: EditorTenant) -> None:
    await browser.login(shop.id, shop.users[Role.EDITOR])
    form = freezer_rule_form("R")
    added = await browser.post("/app/rules/new/edit", [*form, ("op", "add|if|"), ("new|if|", "any")])
    assert added.status_code == 200 and 'data-path="if/1"' in added.text and "Any of these" in added.text
    skeleton = re.search(r'name="skeleton" value="([^"]+)"', added.text)
    assert skeleton
    shape = json.loads(skeleton.group(1).replace("&#34;", '"').replace("&quot;", '"'))
    assert shape["if"][1] == {"any": []}
    form2 = [("skeleton", json.dumps(shape)) if k == "skeleton" else (k, v) for k, v in form]
    nested = await browser.post(
        "/app/rules/new/edit", [*form2, ("op", "add|if|if/1"), ("new|if|if/1", "expression")]
    )
    assert 'data-path="if/1/0"' in nested.text and 'name="o|if/1/0|expression"' in nested.text
    assert "autofocus" in nested.text  # the new node's first field takes the focus
    removed = await browser.post("/app/rules/new/edit", [*form2, ("op", "remove|if/1")])
    assert 'data-path="if/1"' not in removed.text


async def test_save_diff_publish_and_restore(browser: Browser, shop: EditorTenant) -> None:
    await browser.login(shop.id, shop.users[Role.EDITOR])
    created = await browser.post("/app/rules/new/save", freezer_rule_form("Warm freezers"))
    assert created.status_code == 204
    rule_id = _rule_id(created.headers["HX-Redirect"])
    page = await browser.get(f"/app/rules/{rule_id}")
    assert "Publish v1" in page.text and "draft" in page.text
    assert (await browser.post(f"/app/rules/{rule_id}/publish", {"version": "1"})).status_code == 204
    changed = await browser.post(
        f"/app/rules/{rule_id}/save", [*freezer_rule_form("Warm freezers", value="-8"), ("base_version", "1")]
    )
    assert changed.status_code == 204, changed.text
    stale = await browser.post(
        f"/app/rules/{rule_id}/save", [*freezer_rule_form("Warm freezers", value="-7"), ("base_version", "1")]
    )
    assert "Not saved" in stale.text and "not the latest" in stale.text
    diff = await browser.get(f"/app/rules/{rule_id}/diff")
    assert "if/0/options/value" in diff.text and "-10" in diff.text and "-8" in diff.text
    restored = await browser.post(f"/app/rules/{rule_id}/restore", {"version": "1"})
    assert restored.status_code == 204 and "as version 3" in restored.headers["HX-Redirect"].replace(
        "%20", " "
    )
    page = await browser.get(f"/app/rules/{rule_id}")
    assert "restore of version 1" in page.text and "running" in page.text
    listing = await browser.get("/app/rules?status=published")
    assert "Warm freezers" in listing.text
    disabled = await browser.post(f"/app/rules/{rule_id}/disable")
    assert "disabled" in disabled.text and ">Enable<" in disabled.text


async def test_invalid_drafts_are_not_saved(browser: Browser, shop: EditorTenant) -> None:
    await browser.login(shop.id, shop.users[Role.EDITOR])
    response = await browser.post("/app/rules/new/save", freezer_rule_form("", expression="nope >"))
    assert response.status_code == 200 and "Not saved" in response.text
    assert "HX-Redirect" not in response.headers


async def test_backtest_charts_firings_from_stored_readings(
    browser: Browser, shop: EditorTenant, editor_app: FastAPI
) -> None:
    end = datetime.now(UTC).replace(microsecond=0)
    readings = []
    for i in range(120):  # two hours, one reading a minute: warm between 30 and 60 minutes in
        ts = end - timedelta(minutes=120 - i)
        temp = -5.0 if 30 <= i < 60 else -18.0
        readings.append(Reading(shop.id, "freezer-01", ts, {"temp": temp}, Source("http", "test")))
    await editor_app.state.runtime.telemetry.write(readings)
    await browser.login(shop.id, shop.users[Role.EDITOR])
    response = await browser.post("/app/rules/new/backtest", [*freezer_rule_form("R"), ("bt_range", "1d")])
    assert response.status_code == 200, response.text
    assert re.search(r'id="bt-fired">1<', response.text), response.text
    assert re.search(r'id="bt-cleared">1<', response.text)
    assert 'class="fired mark-fired"' in response.text and 'class="threshold"' in response.text
    assert "temp of freezer-01" in response.text
