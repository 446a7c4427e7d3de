"""Start-up tasks of the composition root: migrations and the demo tenant of the README."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from devices.registry import DeviceRepository, DeviceTypeRepository
from engine.document import RuleDocument
from engine.examples import freezer_rule
from engine.rules import RuleRepository
from model.devices import DataType, MetricSpec
from model.scopes import ROLE_SCOPES, Role
from server.settings import Settings
from storage import migrate
from storage.database import Database
from storage.tenancy import TenantRepository, TokenRepository, UserRepository

logger = logging.getLogger(__name__)

DEMO_TENANT = "acme-retail"
DEMO_EMAIL = "olivia@acme-retail.example"
STORES = 40


async def upgrade_database(settings: Settings) -> None:
    """Run migrations as the owner role (blocking Alembic runs in a worker thread)."""
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(migrate.upgrade, settings.owner_database_url, settings.db_app_role)


@dataclass(frozen=True, slots=True)
class DemoCredentials:
    """How to sign in to the demo tenant."""

    tenant: str
    email: str
    password: str
    token: str


def _demo_device_types() -> dict[str, tuple[str, list[MetricSpec]]]:
    num, flag = DataType.NUMBER, DataType.BOOLEAN
    return {
        "freezer": (
            "Freezer controller",
            [
                MetricSpec(name="temp", data_type=num, unit="°C", min=-40, max=20),
                MetricSpec(name="door_open", data_type=flag),
                MetricSpec(name="compressor_on", data_type=flag),
            ],
        ),
        "power-meter": (
            "Power meter (Modbus)",
            [
                MetricSpec(name="voltage", data_type=num, unit="V"),
                MetricSpec(name="current", data_type=num, unit="A"),
                MetricSpec(name="energy_kwh", data_type=num, unit="kWh"),
            ],
        ),
        "battery-sensor": (
            "Battery sensor (CoAP)",
            [
                MetricSpec(name="battery_pct", data_type=num, unit="%", min=0, max=100),
                MetricSpec(name="humidity", data_type=num, unit="%", min=0, max=100),
            ],
        ),
        "gateway": ("Store gateway (HTTP)", [MetricSpec(name="door_count", data_type=num)]),
    }


def _demo_devices() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for store in range(1, STORES + 1):
        labels = {"store": f"store-{store:02d}", "region": "north" if store <= 20 else "south"}
        for n in range(1, 7):
            rows.append(
                {
                    "id": f"freezer-{store:02d}-{n}",
                    "name": f"Freezer {n}, store {store:02d}",
                    "type_id": "freezer",
                    "labels": labels,
                }
            )
        for kind, prefix in (("power-meter", "meter"), ("battery-sensor", "battery"), ("gateway", "gw")):
            rows.append(
                {
                    "id": f"{prefix}-{store:02d}",
                    "name": f"{kind} store {store:02d}",
                    "type_id": kind,
                    "labels": labels,
                }
            )
    return rows


async def ensure_demo(settings: Settings, database: Database) -> DemoCredentials:
    """Create the demo tenant of SCENARIOS.md once; later runs reuse the saved credentials.

    The password and token are random, generated on the first run and kept in
    ``data_dir/demo-credentials.json`` (mode 0600): no well-known demo password exists.
    """
    path = settings.data_dir / "demo-credentials.json"
    async with database.platform() as conn:
        tenant = await TenantRepository(conn).find(DEMO_TENANT)
    if tenant is not None and path.exists():
        saved = json.loads(path.read_text())
        return DemoCredentials(**saved)
    async with database.platform() as conn:
        if tenant is None:
            await TenantRepository(conn).create(DEMO_TENANT, name="ACME Retail", timezone="Europe/Berlin")
    password = secrets.token_urlsafe(12)
    async with database.tenant(DEMO_TENANT) as scope:
        users = UserRepository(scope)
        existing = await users.password_hash_for(DEMO_EMAIL)
        if existing is None:
            user = await users.create(
                email=DEMO_EMAIL, password=password, role=Role.ADMIN, display_name="Olivia"
            )
        else:
            user = await users.update(existing[0].id, {"password": password})
        issued = await TokenRepository(scope).issue(
            name="demo", scopes=ROLE_SCOPES[Role.ADMIN], user_id=user.id
        )
        types = DeviceTypeRepository(scope)
        have_types = {t.id for t in await types.list()}
        for type_id, (name, metrics) in _demo_device_types().items():
            if type_id not in have_types:
                await types.create(type_id, name=name, metrics=metrics)
        devices = DeviceRepository(scope)
        wanted = _demo_devices()
        taken = await devices.existing_ids([str(d["id"]) for d in wanted])
        await devices.create_many([d for d in wanted if d["id"] not in taken])
        rules = RuleRepository(scope)
        if not await rules.list():
            # Olivia's rule, alarms only (notifications need a channel the user creates), so the
            # simulator's failing compressors show up on the alarms page.
            document = RuleDocument.model_validate(freezer_rule(channels=()))
            rule, version = await rules.create(document, author=user.id)
            await rules.publish(rule.id, version.version)
    creds = DemoCredentials(DEMO_TENANT, DEMO_EMAIL, password, issued.bearer)
    _write_private(path, json.dumps(_as_dict(creds)))
    return creds


def _as_dict(creds: DemoCredentials) -> dict[str, str]:
    return {"tenant": creds.tenant, "email": creds.email, "password": creds.password, "token": creds.token}


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)
