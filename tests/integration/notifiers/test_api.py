"""The notifications API: bad input refused at save, secrets never shown, tests, re-sends, metrics."""

from __future__ import annotations

import logging

import httpx
import pytest

from storage.database import Database
from storage.tables import notification_channels
from tests.conftest import TenantFactory
from tests.harness.receivers import HttpReceiver, SmtpReceiver

API = "/api/v1/notifications"
SECRET_PASSWORD = "pw-9f3c2a7b41"
SECRET_PATH = "T0KEN-7d2e91c4aa"
SECRET_HEADER = "hdr-5b8e0f6c13"


def problem(response: httpx.Response, status: int, slug: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body: dict[str, object] = response.json()
    assert body["type"] == f"urn:flatgigs:problem:{slug}", body
    return body


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("nosuchkind://example.com/x", "not a channel kind"),
        ("json://", "cannot use this json://"),
        ("just text", "needs a scheme"),
    ],
)
async def test_an_invalid_apprise_url_is_refused_at_save(
    client: httpx.AsyncClient, tenants: TenantFactory, url: str, reason: str
) -> None:
    tenant = await tenants.create("badurl")
    response = await client.post(
        f"{API}/channels",
        json={"name": "ops", "urls": ["json://hooks.example.com/a", url]},
        headers=tenant.headers,
    )
    body = problem(response, 422, "invalid-input")
    assert reason in str(body["detail"])
    assert body["errors"] == [{"loc": ["urls", 1], "msg": str(body["detail"]).split(": ", 1)[1]}]


@pytest.mark.parametrize(
    "url",
    [
        "json://127.0.0.1:8080/hook",
        "json://localhost/hook",
        "jsons://10.1.2.3/hook",
        "form://192.168.1.20/x",
        "mailto://127.0.0.1:25/ops@example.com?from=fg@example.com",
        "json://[::1]:9000/x",
    ],
)
async def test_a_webhook_to_loopback_or_private_space_is_refused_when_not_allowed(
    client: httpx.AsyncClient, tenants: TenantFactory, url: str
) -> None:
    tenant = await tenants.create("private")
    response = await client.post(
        f"{API}/channels", json={"name": "ops", "urls": [url]}, headers=tenant.headers
    )
    body = problem(response, 422, "invalid-input")
    assert "FLATGIGS_ALLOW_PRIVATE_WEBHOOKS" in str(body["detail"])


async def test_private_targets_are_accepted_when_allowed(
    private_client: httpx.AsyncClient, tenants: TenantFactory
) -> None:
    tenant = await tenants.create("allowed")
    response = await private_client.post(
        f"{API}/channels",
        json={"name": "ops", "urls": ["json://127.0.0.1:8080/hook"]},
        headers=tenant.headers,
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("template", "line", "reason"),
    [
        ("Hello\n{{ device.id }\n", 2, "unexpected '}'"),
        ("{% for x in values %}\n{{ x }}\n", 2, "endfor"),
        ("ok\n{{ device.__class__.__mro__ }}", 2, "is not available in templates"),
        ("{{ values._sa_instance_state }}", 1, "is not available"),
        ("{{ cycler.__init__.__globals__.os }}", 1, "is not available"),
    ],
)
async def test_a_bad_template_is_refused_with_line_and_reason(
    client: httpx.AsyncClient, tenants: TenantFactory, template: str, line: int, reason: str
) -> None:
    tenant = await tenants.create("tpl")
    response = await client.post(f"{API}/templates/preview", json={"body": template}, headers=tenant.headers)
    body = problem(response, 422, "invalid-input")
    errors: list[dict[str, object]] = body["errors"]  # type: ignore[assignment]
    (error,) = errors
    assert error["loc"] == ["body"] and error["line"] == line, error
    assert reason in str(error["msg"]), error


async def test_preview_renders_with_sample_data(client: httpx.AsyncClient, tenants: TenantFactory) -> None:
    tenant = await tenants.create("preview")
    response = await client.post(
        f"{API}/templates/preview",
        json={
            "title": "{{ device.id }}: {{ alarm.severity }}",
            "body": "{{ values.temp }} °C, see {{ links.alarm }}",
            "context": {"values": {"temp": 3.5}},
        },
        headers=tenant.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "title": "freezer-12-3: major",
        "body": "3.5 °C, see https://flatgigs.example.com/alarms/alm_sample",
    }


async def test_a_channel_of_another_tenant_is_not_found(
    client: httpx.AsyncClient, tenants: TenantFactory
) -> None:
    a, b = await tenants.create("own"), await tenants.create("other")
    created = await client.post(
        f"{API}/channels", json={"name": "b-ops", "urls": ["json://hooks.example.com/b"]}, headers=b.headers
    )
    channel_id = created.json()["id"]
    for method, path in (
        ("GET", f"{API}/channels/{channel_id}"),
        ("PATCH", f"{API}/channels/{channel_id}"),
        ("DELETE", f"{API}/channels/{channel_id}"),
        ("POST", f"{API}/channels/{channel_id}/test"),
    ):
        body = {"description": "x"} if method == "PATCH" else None
        problem(await client.request(method, path, json=body, headers=a.headers), 404, "not-found")
    assert (await client.get(f"{API}/channels/{channel_id}", headers=b.headers)).status_code == 200


async def test_duplicate_names_conflict(client: httpx.AsyncClient, tenants: TenantFactory) -> None:
    tenant = await tenants.create("dup")
    body = {"name": "ops", "urls": ["json://hooks.example.com/a"]}
    assert (await client.post(f"{API}/channels", json=body, headers=tenant.headers)).status_code == 201
    problem(await client.post(f"{API}/channels", json=body, headers=tenant.headers), 409, "conflict")


async def test_channel_urls_are_not_in_clear_in_the_database_the_api_or_the_logs(
    private_client: httpx.AsyncClient,
    tenants: TenantFactory,
    database: Database,
    hook: HttpReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # Apprise and urllib3 log the most at DEBUG
    tenant = await tenants.create("secret")
    url = hook.url(f"/{SECRET_PATH}", headers={"X-Api-Key": SECRET_HEADER}).replace(
        "json://", f"json://user:{SECRET_PASSWORD}@"
    )
    secrets = (SECRET_PASSWORD, SECRET_PATH, SECRET_HEADER)

    created = await private_client.post(
        f"{API}/channels", json={"name": "secret-hook", "urls": [url]}, headers=tenant.headers
    )
    assert created.status_code == 201, created.text
    channel_id = created.json()["id"]
    hook.behaviour.fail_next = 1  # a failure makes Apprise log more (and fills last_error)
    tested = await private_client.post(f"{API}/channels/{channel_id}/test", headers=tenant.headers)
    assert tested.status_code == 200 and tested.json()["ok"] is False
    tested = await private_client.post(f"{API}/channels/{channel_id}/test", headers=tenant.headers)
    assert tested.json()["ok"] is True
    (delivered,) = [h for h in await hook.wait_for(2) if h.status == 200]
    assert delivered.headers["X-Api-Key"] == SECRET_HEADER  # the secrets did work

    responses = [
        created.text,
        tested.text,
        (await private_client.get(f"{API}/channels", headers=tenant.headers)).text,
        (await private_client.get(f"{API}/channels/{channel_id}", headers=tenant.headers)).text,
        (
            await private_client.patch(
                f"{API}/channels/{channel_id}", json={"description": "d"}, headers=tenant.headers
            )
        ).text,
    ]
    for text in responses:
        for secret in secrets:
            assert secret not in text, text
    assert created.json()["urls"] == [
        {"service": "JSON", "preview": f"json://user:****@127.0.0.1:{hook.port}/…"}
    ]

    async with database.tenant(tenant.id) as scope:
        row = (
            await scope.conn.execute(
                scope.select(notification_channels).where(notification_channels.c.id == channel_id)
            )
        ).one()
    stored = " ".join(str(v) for v in row)
    for secret in secrets:  # the host is in the preview on purpose; the secrets are not
        assert secret not in stored, f"{secret} stored in clear"

    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "apprise" in {r.name.split(".")[0] for r in caplog.records}, (
        "Apprise logged nothing: the test proves nothing"
    )
    for secret in secrets:
        assert secret not in logged, f"{secret} written to the logs"


async def test_channel_test_reports_each_url(
    private_client: httpx.AsyncClient, tenants: TenantFactory, smtp: SmtpReceiver, hook: HttpReceiver
) -> None:
    tenant = await tenants.create("test")
    hook.behaviour.always_fail = True
    body = {"name": "both", "urls": [smtp.url("ops@example.com"), hook.url("/down")]}
    channel = (await private_client.post(f"{API}/channels", json=body, headers=tenant.headers)).json()
    response = await private_client.post(
        f"{API}/channels/{channel['id']}/test", json={"title": "Hello"}, headers=tenant.headers
    )
    result = response.json()
    assert result["ok"] is False
    assert [(r["service"], r["ok"]) for r in result["results"]] == [("E-Mail", True), ("JSON", False)]
    assert result["results"][1]["error"]
    (mail,) = await smtp.wait_for(1)
    assert mail.subject == "Hello"


async def test_dead_letters_are_listed_and_resent_through_the_api(
    private_client: httpx.AsyncClient, tenants: TenantFactory, hook: HttpReceiver, private_app: object
) -> None:
    from notifiers.port import NotificationRequest
    from storage.types import utcnow

    tenant = await tenants.create("resend")
    channel = (
        await private_client.post(
            f"{API}/channels", json={"name": "down", "urls": [hook.url("/down")]}, headers=tenant.headers
        )
    ).json()
    notifier = private_app.state.runtime.notifier  # type: ignore[attr-defined]
    hook.behaviour.always_fail = True
    request = NotificationRequest(
        tenant.id,
        "rul_1",
        "Rule",
        "dev-1",
        ("down",),
        "{{ device.id }} warm",
        "",
        {},
        "fired",
        utcnow(),
        "major",
        "warm",
    )
    assert await notifier.submit(request) == "queued"
    await notifier.wait_idle()

    dead = (await private_client.get(f"{API}/dead-letters", headers=tenant.headers)).json()["items"]
    assert [(d["channel_id"], d["status"], d["attempts"]) for d in dead] == [(channel["id"], "dead", 3)]
    hook.behaviour.always_fail = False
    resent = await private_client.post(f"{API}/dead-letters/{dead[0]['id']}/resend", headers=tenant.headers)
    assert resent.status_code == 202, resent.text
    await notifier.wait_idle()
    log = (await private_client.get(f"{API}/deliveries", headers=tenant.headers)).json()["items"]
    assert [(d["id"], d["status"], d["resent"]) for d in log] == [(dead[0]["id"], "sent", 1)]
    again = await private_client.post(f"{API}/dead-letters/{dead[0]['id']}/resend", headers=tenant.headers)
    problem(again, 409, "conflict")

    metrics = (await private_client.get("/metrics")).text
    assert 'flatgigs_notify_deliveries_total{outcome="dead"}' in metrics
    assert "flatgigs_notify_resent_total 1.0" in metrics or "flatgigs_notify_resent_total" in metrics


async def test_policy_defaults_round_trip(client: httpx.AsyncClient, tenants: TenantFactory) -> None:
    tenant = await tenants.create("policy")
    assert (await client.get(f"{API}/policy", headers=tenant.headers)).json()["throttle_s"] == 300
    body = {
        "throttle_s": 60,
        "repeat_every_s": 900,
        "escalation": [{"after_s": 1800, "channels": ["manager"]}],
    }
    saved = await client.put(f"{API}/policy", json=body, headers=tenant.headers)
    assert saved.status_code == 200, saved.text
    got = (await client.get(f"{API}/policy", headers=tenant.headers)).json()
    assert (got["throttle_s"], got["repeat_every_s"], got["escalation"]) == (60, 900, body["escalation"])
    bad = await client.put(
        f"{API}/policy", json={"dedup_key": "{{ rule.__class__ }}"}, headers=tenant.headers
    )
    problem(bad, 422, "invalid-input")


async def test_channel_kinds_come_from_apprise(client: httpx.AsyncClient, tenants: TenantFactory) -> None:
    import apprise

    tenant = await tenants.create("kinds")
    kinds = (await client.get(f"{API}/channel-kinds", headers=tenant.headers)).json()
    schemes = {s for k in kinds for s in k["schemes"]}
    assert {"mailto", "json", "slack", "ntfy"} <= schemes
    details = apprise.Apprise().details()
    assert len(kinds) == len(
        [s for s in details["schemas"] if s.get("protocols") or s.get("secure_protocols")]
    )
    (email,) = [k for k in kinds if "mailto" in k["schemes"]]
    assert "password" in {t["name"] for t in email["tokens"] if t["private"]}
