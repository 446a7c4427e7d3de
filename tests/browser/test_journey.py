"""Olivia's day in the editor, in Debian's Chromium, against a running service fed by the simulator:
sign in, build the freezer rule with clicks and typing only, meet an expression error and its
suggestion, backtest it and see the firings on the chart, publish, watch the alarm appear live,
acknowledge it, and restore the earlier version."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import FAILING_FREEZER, Service, only_loopback
from tests.harness.ports import wait_until
from tests.harness.receivers import HttpReceiver

pytestmark = pytest.mark.browser

RULE = "Freezer too warm (north)"


def shot(page: Page, artifacts: Path, name: str) -> Path:
    path = artifacts / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def node(page: Page, path: str) -> object:
    return page.locator(f'section.node[data-path="{path}"]')


def field(page: Page, path: str, option: str) -> object:
    return page.locator(f'[name="o|{path}|{option}"]')


def add(page: Page, section: str, choice: str, parent: str = "", expect_path: str = "") -> None:
    """Pick a node type in a palette and press its Add button; wait for the node to appear and
    for htmx to have settled the builder it swapped in (typing into it before that goes
    unnoticed)."""
    select_id = f"new-{section}-{parent.replace('/', '-')}"
    page.locator(f"#{select_id}").select_option(choice)
    op = f"add|{section}|{parent}" if section == "if" else f"add|{section}"
    page.locator(f'button[name="op"][value="{op}"]').click()
    if expect_path:
        expect(page.locator(f'section.node[data-path="{expect_path}"]')).to_be_visible()
    settled(page)


def settled(page: Page) -> None:
    """Wait until htmx has no request in flight and has finished swapping and settling what came
    back (it marks the elements involved): an element it swapped in gets its listeners when it
    settles, and a choice made before that goes unnoticed."""
    page.wait_for_function(
        "() => document.querySelectorAll("
        "'.htmx-request, .htmx-swapping, .htmx-settling, .htmx-added').length === 0"
    )


def create_channel(page: Page, name: str, port: int) -> None:
    """A JSON webhook channel to the test's receiver, through the kind's fields; then test it."""
    page.get_by_label("Name").fill(name)
    page.get_by_label("Kind").select_option("JSON")
    expect(page.locator("#channel-fields legend")).to_have_text("JSON")
    settled(page)  # the kind's fields are swapped in and live: choosing a URL form before is lost
    page.get_by_label("URL form").select_option(label="{schema}://{host}:{port}")
    settled(page)
    expect(page.locator("#t-port")).to_be_visible(timeout=20_000)
    page.locator("#t-schema").select_option("json")
    page.get_by_label("Hostname").fill("127.0.0.1")
    page.get_by_label("Port").fill(str(port))
    page.get_by_role("button", name="Create channel").click()
    expect(page.locator("#flash")).to_have_text(f"Channel {name} created.")
    page.wait_for_load_state("load")
    page.get_by_role("button", name=f"Test {name}").click()
    expect(page.locator(f"#channel-{name} [role=status]")).to_contain_text("delivered")


def test_olivia_builds_tests_publishes_and_watches_her_freezer_rule(
    chromium: Browser, service: Service, artifacts: Path, receiver: HttpReceiver
) -> None:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    context.route("**/*", only_loopback)
    page = context.new_page()
    page.set_default_timeout(20_000)
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)

    # 1. Sign in.
    page.goto(f"{service.base}/app/login")
    page.get_by_label("Tenant").fill(service.tenant)
    page.get_by_label("Email").fill(service.email)
    page.get_by_label("Password").fill(service.password)
    shot(page, artifacts, "01-sign-in")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/app/rules$"))
    page.wait_for_load_state("load")
    expect(page.locator("header .tenant")).to_contain_text(service.tenant)
    shot(page, artifacts, "02-rules")

    # 2. Her channels: the night shift and the regional team (webhooks to a real receiver here).
    page.get_by_role("link", name="Channels").click()
    page.wait_for_load_state("load")
    create_channel(page, "night-shift", receiver.port)
    create_channel(page, "regional-team", receiver.port)
    assert len(receiver.ok_hits()) == 2  # one test message each
    shot(page, artifacts, "02b-channels")

    # A new rule: name, devices (live count), trigger.
    page.get_by_role("link", name="Rules").click()
    page.wait_for_load_state("load")
    page.get_by_role("link", name="New rule").click()
    page.wait_for_load_state("load")
    page.get_by_label("Name").fill(RULE)
    page.get_by_label("Device type").select_option("freezer")
    page.get_by_label("Labels").fill("region=north")
    expect(page.locator("#devcount")).to_have_text("120 devices match")
    node(page, "when/0").get_by_label("temp").check()

    # 3. An expression with a typo: the error sits on the field, with a suggestion.
    add(page, "if", "expression", expect_path="if/0")
    field(page, "if/0", "expression").fill("tmp > -10")
    expect(page.locator("#f-o-if-0-expression-err")).to_contain_text("Did you mean “temp”?")
    expect(page.locator('#diagram g.err[data-path="if/0"]')).to_be_visible()
    shot(page, artifacts, "03-expression-error")
    page.get_by_role("button", name="Remove Expression (if/0)").click()
    expect(node(page, "if/0")).to_have_count(0)

    # 4. "stays above -10 °C for 5 minutes ... clear below -12 °C for 2 minutes".
    add(page, "if", "duration", expect_path="if/0")
    field(page, "if/0", "seconds").fill("5m")
    field(page, "if/0", "clear_seconds").fill("2m")
    add(page, "if", "telemetry.threshold", parent="if/0", expect_path="if/0/0")
    field(page, "if/0/0", "metric").select_option("temp")
    field(page, "if/0/0", "operator").select_option("above")
    field(page, "if/0/0", "value").fill("-10")
    field(page, "if/0/0", "clear_at").fill("-12")

    # 5. Actions: a major alarm, the night shift and the regional team; clear when it clears.
    add(page, "then", "alarm.raise", expect_path="then/0")
    field(page, "then/0", "alarm_type").fill("freezer-warm")
    field(page, "then/0", "severity").select_option("major")
    field(page, "then/0", "message").fill("{{ device.id }} is above -10 °C")
    add(page, "then", "notify", expect_path="then/1")
    node(page, "then/1").get_by_label("night-shift").check()
    node(page, "then/1").get_by_label("regional-team").check()
    field(page, "then/1", "body").fill("{{ device.id }} is warm")
    add(page, "else", "alarm.clear", expect_path="else/0")
    field(page, "else/0", "alarm_type").fill("freezer-warm")
    # The check waits 400 ms after the last keystroke; on a loaded machine its answer can take a
    # few seconds more.
    expect(page.locator("#problems")).to_contain_text("No problems", timeout=15_000)
    expect(page.locator('#diagram g[data-path="if/0/0"]')).to_contain_text("temp above -10")
    shot(page, artifacts, "04-builder")
    page.locator("section.card.sticky").screenshot(path=str(artifacts / "editor-flow.png"))
    page.get_by_label("Comment for this version").fill("Olivia's freezer rule")
    page.get_by_role("button", name="Save draft").click()
    expect(page.locator("#flash")).to_have_text("Saved version 1.")
    page.wait_for_load_state("load")
    rule_url = page.url.split("?")[0]

    # 6. Backtest over the last day: the failed compressor fired it.
    page.get_by_label("Range").select_option("1d")
    page.get_by_role("button", name="Run backtest").click()
    expect(page.locator("#backtest-chart")).to_be_visible(timeout=120_000)
    assert page.locator("#backtest-chart .mark-fired").count() >= 1
    assert int(page.locator("#bt-fired").inner_text()) >= 1
    page.locator("#backtest-report").scroll_into_view_if_needed()
    shot(page, artifacts, "05-backtest")
    page.locator("#backtest-report").screenshot(path=str(artifacts / "editor-backtest.png"))

    # 7. Publish version 1.
    page.get_by_role("button", name="Publish v1").click()
    expect(page.locator("#flash")).to_contain_text("Published version 1")
    page.wait_for_load_state("load")

    # 8. For the demo, a 20 s version (so the live alarm comes within a test's patience).
    field(page, "if/0", "seconds").fill("20s")
    page.get_by_label("Comment for this version").fill("demo: 20 seconds")
    page.get_by_role("button", name="Save draft").click()
    expect(page.locator("#flash")).to_have_text("Saved version 2.")
    page.wait_for_load_state("load")
    page.get_by_role("button", name="Publish v2").click()
    expect(page.locator("#flash")).to_contain_text("Published version 2")
    page.wait_for_load_state("load")
    trace = page.locator("#traces details.trace").first
    expect(trace).to_be_visible(timeout=60_000)
    trace.locator("summary").click()  # expand: why it fired or not, step by step
    trace.locator("a[title^='Show']").first.click()  # the step's node, highlighted on the diagram
    expect(page.locator("#diagram g.hl")).to_have_count(1)

    # 9. The alarm appears live on the alarms page, raised by the running engine.
    page.get_by_role("link", name="Alarms").click()
    page.wait_for_load_state("load")
    row = page.locator(f'#alarm-rows tr[data-device="{FAILING_FREEZER}"]')
    expect(row).to_be_visible(timeout=120_000)
    expect(row).to_contain_text("freezer-warm")
    expect(row).to_contain_text("unacknowledged")
    shot(page, artifacts, "06-alarm-live")
    # The running engine notified both channels about it (the receiver got real webhooks).
    wait_until(
        lambda: len([h for h in receiver.ok_hits() if FAILING_FREEZER.encode() in h.body]) >= 2,
        60,
        "a notification about the warm freezer on each channel",
    )

    # 10. Acknowledge it.
    row.get_by_role("button", name=re.compile("^Acknowledge")).click()
    expect(row.locator("td.state")).to_have_text("acknowledged")
    shot(page, artifacts, "07-acknowledged")

    # 11. Restore Olivia's 5-minute version and publish it again.
    page.goto(rule_url)
    page.get_by_role("button", name="Restore version 1").click()
    expect(page.locator("#flash")).to_contain_text("Restored version 1 as version 3")
    page.wait_for_load_state("load")
    expect(field(page, "if/0", "seconds")).to_have_value("5m")
    page.get_by_role("button", name="Publish v3").click()
    expect(page.locator("#flash")).to_contain_text("Published version 3")
    page.wait_for_load_state("load")
    shot(page, artifacts, "08-restored")
    # Nothing the pages need was refused by the Content-Security-Policy, and no script failed. (An
    # empty inline style, the sha256 of "", is refused and changes nothing; htmx logs the check
    # requests that a newer keystroke aborted, which is hx-sync doing its job.)
    empty_style = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    refused = [e for e in console_errors if "Content Security Policy" in e and empty_style not in e]
    assert refused == [] and [e for e in console_errors if "Uncaught" in e] == [], console_errors
    context.close()


def test_keyboard_only_labels_everywhere_and_readable_at_360px(
    chromium: Browser, service: Service, artifacts: Path
) -> None:
    context = chromium.new_context(viewport={"width": 360, "height": 740})
    context.route("**/*", only_loopback)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{service.base}/app/login")
    # Keyboard only: Tab through the form, type, press Enter.
    for _ in range(5):  # past the skip link and the brand link
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == "tenant":
            break
    expect(page.get_by_label("Tenant")).to_be_focused()
    page.keyboard.type(service.tenant)
    page.keyboard.press("Tab")
    page.keyboard.type(service.email)
    page.keyboard.press("Tab")
    page.keyboard.type(service.password)
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/app/rules$"))
    page.wait_for_load_state("load")
    page.goto(f"{service.base}/app/rules/new")
    expect(page.get_by_label("Name")).to_be_focused()  # autofocus on an empty rule's name
    page.keyboard.type("Keyboard rule")
    palette = page.locator("#new-if-")
    palette.focus()
    page.keyboard.press("End")  # the last condition type in the list
    last = palette.locator("option").last.get_attribute("value")
    page.keyboard.press("Tab")
    expect(page.locator('button[name="op"][value="add|if|"]')).to_be_focused()
    page.keyboard.press("Enter")
    expect(node(page, "if/0")).to_be_visible()
    assert node(page, "if/0").get_attribute("data-path") == "if/0"
    assert last is not None
    for url in (
        "/app/rules",
        "/app/rules/new",
        "/app/alarms",
        "/app/devices",
        f"/app/devices/{FAILING_FREEZER}",
    ):
        page.goto(f"{service.base}{url}")
        unlabelled = page.evaluate(
            """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
                 .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
                 .map(e => e.name || e.id)"""
        )
        assert unlabelled == [], (url, unlabelled)
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, (url, overflow)
        shot(page, artifacts, "360px-" + url.strip("/").replace("/", "-"))
        if url.startswith("/app/devices/"):  # its values follow the readings live (SSE)
            stamp = page.locator('#values [data-metric="temp"] small')
            before = stamp.inner_text()
            expect(stamp).not_to_have_text(before, timeout=45_000)
    context.close()
