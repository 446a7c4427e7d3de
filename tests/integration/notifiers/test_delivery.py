"""Delivery through Apprise to real receivers: email over SMTP, JSON webhooks, retries, dead letters,
re-sends, slow channels, quiet hours and acknowledgements, on both database backends."""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Any

from engine.alarms import AlarmService
from notifiers.channels import ChannelRepository
from notifiers.clock import ManualClock
from notifiers.deliveries import DeliveryLog, DeliveryRecord, DeliveryStatus
from notifiers.policy import DeliveryPolicy, EscalationStep, QuietHours
from notifiers.port import NotificationRequest
from notifiers.service import NotificationService
from storage.database import Database
from tests.conftest import TenantFactory
from tests.harness.receivers import HttpReceiver, SmtpReceiver


def request(
    tenant: str,
    channels: tuple[str, ...],
    *,
    kind: str = "fired",
    severity: str | None = "major",
    device: str = "freezer-12-3",
    temp: float = -7.5,
    policy: DeliveryPolicy | None = None,
    at: datetime | None = None,
    alarm_type: str = "freezer-warm",
) -> NotificationRequest:
    return NotificationRequest(
        tenant_id=tenant,
        rule_id="rul_freezer",
        rule_name="Freezer too warm",
        device_id=device,
        channels=channels,
        title="{{ device.id }}: {{ alarm.severity }} {{ event.kind }}",
        body="Temperature {{ values.temp }} °C on {{ device.id }} (rule {{ rule.name }})",
        context={"values": {"temp": temp}, "device": {"id": device}},
        kind=kind,  # type: ignore[arg-type]
        at=at or datetime.now(UTC),
        severity=severity,
        alarm_type=alarm_type,
        policy=policy,
    )


async def add_channel(
    service: NotificationService, tenant: str, name: str, urls: list[str], quiet: QuietHours | None = None
) -> str:
    async with service.database.tenant(tenant) as scope:
        channel = await ChannelRepository(scope, service.sealer).create(
            name, urls, quiet_hours=quiet, allow_private=True
        )
    return channel.id


async def log_of(service: NotificationService, tenant: str, **filters: Any) -> list[DeliveryRecord]:
    await service.flush()
    async with service.database.tenant(tenant) as scope:
        return (await DeliveryLog(scope, service.database.dialect).list(limit=500, **filters)).items


async def test_email_arrives_rendered_over_smtp(
    service: NotificationService, tenants: TenantFactory, smtp: SmtpReceiver
) -> None:
    tenant = (await tenants.create("mail")).id
    await add_channel(service, tenant, "night-shift", [smtp.url("night-shift@store12.example.com")])

    assert await service.submit(request(tenant, ("night-shift",), temp=-7.5)) == "queued"

    (mail,) = await smtp.wait_for(1)
    assert mail.rcpt_tos == ("night-shift@store12.example.com",)
    assert mail.subject == "freezer-12-3: major fired"
    assert "Temperature -7.5 °C on freezer-12-3 (rule Freezer too warm)" in mail.text
    await service.wait_idle()
    (record,) = await log_of(service, tenant)
    assert (record.status, record.attempts, record.channel_name) == (DeliveryStatus.SENT, 1, "night-shift")
    assert record.sent_at is not None


async def test_json_webhook_gets_body_and_headers(
    service: NotificationService, tenants: TenantFactory, hook: HttpReceiver
) -> None:
    tenant = (await tenants.create("hook")).id
    url = hook.url("/flatgigs/alerts", headers={"X-Api-Key": "k-123", "X-Store": "12"})
    await add_channel(service, tenant, "ops-hook", [url])

    await service.submit(request(tenant, ("ops-hook",), temp=-6.0, severity="critical"))

    (hit,) = await hook.wait_for(1)
    assert (hit.method, hit.path) == ("POST", "/flatgigs/alerts")
    assert hit.headers["X-Api-Key"] == "k-123" and hit.headers["X-Store"] == "12"
    assert hit.headers["Content-Type"] == "application/json"
    payload = hit.json()
    assert payload["title"] == "freezer-12-3: critical fired"
    assert payload["message"] == "Temperature -6.0 °C on freezer-12-3 (rule Freezer too warm)"
    assert payload["type"] == "failure"  # critical and major alarms use Apprise's failure type


async def test_failing_twice_then_succeeding_shows_the_retries(
    service: NotificationService, tenants: TenantFactory, hook: HttpReceiver
) -> None:
    tenant = (await tenants.create("retry")).id
    await add_channel(service, tenant, "flaky", [hook.url("/flaky")])
    hook.behaviour.fail_next = 2

    await service.submit(request(tenant, ("flaky",)))
    await service.wait_idle()

    assert [h.status for h in await hook.wait_for(3)] == [500, 500, 200]
    (record,) = await log_of(service, tenant)
    assert record.status is DeliveryStatus.SENT
    assert record.attempts == 3
    assert record.last_error is None


async def test_always_failing_ends_as_dead_letter_and_resends_after_recovery(
    service: NotificationService, tenants: TenantFactory, hook: HttpReceiver
) -> None:
    tenant = (await tenants.create("dead")).id
    channel_id = await add_channel(service, tenant, "down", [hook.url("/down")])
    hook.behaviour.always_fail = True

    await service.submit(request(tenant, ("down",)))
    await service.wait_idle()

    (dead,) = await log_of(service, tenant, statuses=[DeliveryStatus.DEAD])
    assert dead.attempts == service.settings.max_attempts == 3
    assert dead.channel_id == channel_id
    assert "500" in (dead.last_error or "") or "Internal Server Error" in (dead.last_error or ""), (
        dead.last_error
    )
    assert len(await hook.wait_for(3)) == 3

    hook.behaviour.always_fail = False  # the receiver recovers
    resent = await service.resend(tenant, dead.id)
    assert resent.status is DeliveryStatus.QUEUED and resent.resent == 1
    await service.wait_idle()

    assert len(hook.ok_hits("/down")) == 1
    (record,) = await log_of(service, tenant)
    assert (record.id, record.status, record.attempts, record.resent) == (dead.id, DeliveryStatus.SENT, 1, 1)
    assert await log_of(service, tenant, statuses=[DeliveryStatus.DEAD]) == []


async def test_a_slow_channel_does_not_delay_another(
    service: NotificationService, tenants: TenantFactory, hook: HttpReceiver
) -> None:
    tenant = (await tenants.create("slow")).id
    await add_channel(service, tenant, "slow", [hook.url("/slow")])
    await add_channel(service, tenant, "fast", [hook.url("/fast")])
    hook.behaviour.delay_s = 30.0  # until the receiver is closed
    hook.behaviour.slow_paths = {"/slow"}

    # The slow channel gets several deliveries queued first; the fast one still gets through.
    for device in ("d1", "d2", "d3"):
        await service.submit(request(tenant, ("slow",), device=device))
    await service.submit(request(tenant, ("fast",), device="d4"))

    (hit,) = await hook.wait_for(1, path="/fast")
    assert hit.json()["title"].startswith("d4:")
    assert hook.ok_hits("/slow") == []


async def test_quiet_hours_hold_low_severity_and_let_critical_through(
    service: NotificationService, clock: ManualClock, tenants: TenantFactory, hook: HttpReceiver
) -> None:
    tenant = (await tenants.create("quiet")).id
    # The tenant lives in Berlin; quiet 22:00-07:00 there. 22:30 UTC = 23:30 in Berlin (winter).
    async with service.database.platform() as conn:
        from storage.tenancy import TenantRepository

        await TenantRepository(conn).update(tenant, {"timezone": "Europe/Berlin"})
    quiet = QuietHours(start=time(22, 0), end=time(7, 0), min_severity="critical")
    await add_channel(service, tenant, "night", [hook.url("/night")], quiet=quiet)
    clock.set(datetime(2026, 11, 25, 22, 30, tzinfo=UTC))

    assert await service.submit(request(tenant, ("night",), device="minor-1", severity="minor")) == "held"
    assert await service.submit(request(tenant, ("night",), device="crit-1", severity="critical")) == "queued"
    (hit,) = await hook.wait_for(1)
    assert hit.json()["title"].startswith("crit-1:")

    clock.set(datetime(2026, 11, 26, 5, 59, tzinfo=UTC))  # 06:59 in Berlin: still quiet
    assert await service.tick() == 0
    clock.set(datetime(2026, 11, 26, 6, 0, tzinfo=UTC))  # 07:00 in Berlin: released
    assert await service.tick() == 1
    hits = await hook.wait_for(2)
    assert hits[1].json()["title"].startswith("minor-1:")
    await service.wait_idle()
    statuses = {r.device_id: r.status for r in await log_of(service, tenant)}
    assert statuses == {"minor-1": DeliveryStatus.SENT, "crit-1": DeliveryStatus.SENT}


async def test_held_notification_is_cancelled_when_acknowledged_meanwhile(
    service: NotificationService, clock: ManualClock, tenants: TenantFactory, hook: HttpReceiver
) -> None:
    tenant = (await tenants.create("quietack")).id
    quiet = QuietHours(start=time(22, 0), end=time(7, 0))
    await add_channel(service, tenant, "night", [hook.url("/night")], quiet=quiet)
    clock.set(datetime(2026, 11, 25, 23, 0, tzinfo=UTC))  # the tenant is on UTC
    assert await service.submit(request(tenant, ("night",), severity="major")) == "held"
    await service.alarm_acknowledged(tenant, "rul_freezer", "freezer-12-3", "freezer-warm", clock.now())
    clock.set(datetime(2026, 11, 26, 7, 0, tzinfo=UTC))
    assert await service.tick() == 1
    await service.wait_idle()
    (record,) = await log_of(service, tenant)
    assert record.status is DeliveryStatus.CANCELLED
    assert hook.hits == []


async def test_escalation_reaches_the_second_channel_only_while_unacknowledged(
    service: NotificationService,
    clock: ManualClock,
    tenants: TenantFactory,
    database: Database,
    hook: HttpReceiver,
) -> None:
    tenant = (await tenants.create("escal")).id
    await add_channel(service, tenant, "shift", [hook.url("/shift")])
    await add_channel(service, tenant, "manager", [hook.url("/manager")])
    policy = DeliveryPolicy(escalation=(EscalationStep(after_s=900, channels=("manager",)),))
    alarms = AlarmService(database, notifier=service)

    # Device A: nobody acknowledges; device B: acknowledged through the alarm service after 5 minutes.
    for device in ("fz-a", "fz-b"):
        await alarms.raise_alarm(tenant, "rul_freezer", device, "freezer-warm", "major", "warm", clock.now())
        assert await service.submit(request(tenant, ("shift",), device=device, policy=policy)) == "queued"
    await hook.wait_for(2, path="/shift")

    clock.advance(300)
    page = await alarms.list(tenant)
    (alarm_b,) = [a for a in page.items if a.device_id == "fz-b"]
    await alarms.acknowledge(tenant, alarm_b.id, by="usr_night", at=clock.now())

    clock.advance(599)
    assert await service.tick() == 0
    clock.advance(1)
    assert await service.tick() == 1
    (escalated,) = await hook.wait_for(1, path="/manager")
    assert escalated.json()["title"] == "Escalated: fz-a: major fired"
    clock.advance(3600)
    await service.tick()
    await service.wait_idle()
    assert len(hook.ok_hits("/manager")) == 1


async def test_a_burst_on_one_channel_arrives_in_order_each_logged_sent_once(
    service: NotificationService, tenants: TenantFactory, hook: HttpReceiver
) -> None:
    tenant = (await tenants.create("burst")).id
    await add_channel(service, tenant, "ops", [hook.url("/ops")])
    devices = [f"fz-{i}" for i in range(30)]  # queued faster than sent: they go to a thread in runs

    for device in devices:
        assert await service.submit(request(tenant, ("ops",), device=device)) == "queued"
    await service.wait_idle()

    hits = await hook.wait_for(30)
    assert [hit.json()["title"].split(":")[0] for hit in hits] == devices
    records = await log_of(service, tenant)
    assert len(records) == 30
    assert all((r.status, r.attempts) == (DeliveryStatus.SENT, 1) for r in records)


async def test_a_channel_created_after_the_tenants_channels_were_cached_is_found_once_told(
    service: NotificationService, tenants: TenantFactory, hook: HttpReceiver
) -> None:
    tenant = (await tenants.create("cache")).id
    await add_channel(service, tenant, "first", [hook.url("/first")])
    assert await service.submit(request(tenant, ("first",), device="a")) == "queued"
    assert await service.submit(request(tenant, ("second",), device="b")) == "no_channel"

    await add_channel(service, tenant, "second", [hook.url("/second")])
    service.channels_changed(tenant)  # what the API and the editor call after a change

    assert await service.submit(request(tenant, ("second",), device="c")) == "queued"
    (hit,) = await hook.wait_for(1, path="/second")
    assert hit.json()["title"].startswith("c:")
