"""Editor page benchmark: server-side render times with 1,000 rules and 10,000 devices in a tenant.

Run::

    .venv/bin/python -m bench.editor [--repeat 30] [--output bench/results/editor.md]

A fresh SQLite database (the embedded default) gets one tenant with 10,000 freezers (labels
``store``, ``region``), 1,000 rules (half published, the freezer rule of the scenarios with
different thresholds and stores) and 200 active alarms. The app runs in-process (ASGI, no
network), signed in through the editor's form, and each page is requested ``--repeat`` times
after one warm-up request. Median and 95th percentile per page are printed against the issue's
target of 200 ms and written to the output file.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import httpx

from devices.registry import DeviceRepository, DeviceTypeRepository
from engine.alarms import AlarmService
from engine.document import RuleDocument
from engine.examples import freezer_rule
from engine.rules import RuleRepository
from model.devices import DataType, MetricSpec
from model.scopes import Role
from server.app import create_app
from server.settings import load_settings
from storage import migrate
from storage.database import Database
from storage.tenancy import TenantRepository, UserRepository

TENANT = "bench-retail"
PASSWORD = "bench password, long enough"
TARGET_MS = 200.0
DEVICES = 10_000
RULES = 1_000


def _rule(i: int) -> RuleDocument:
    store = f"store-{i % 500:03d}"
    document = freezer_rule(
        name=f"Freezer too warm {i:04d} ({store})", labels={"store": store}, value=-10 + i % 5, channels=()
    )
    return RuleDocument.model_validate(document)


async def _populate(db: Database) -> str:
    async with db.platform() as conn:
        await TenantRepository(conn).create(TENANT, name="Bench Retail")
    async with db.tenant(TENANT) as scope:
        await UserRepository(scope).create(email="olivia@bench.example", password=PASSWORD, role=Role.ADMIN)
        await DeviceTypeRepository(scope).create(
            "freezer",
            name="Freezer",
            metrics=[
                MetricSpec(name="temp", data_type=DataType.NUMBER),
                MetricSpec(name="door_open", data_type=DataType.BOOLEAN),
            ],
        )
        rows = [
            {
                "id": f"freezer-{i:05d}",
                "name": f"Freezer {i}",
                "type_id": "freezer",
                "labels": {"store": f"store-{i // 20:03d}", "region": "north" if i % 2 else "south"},
            }
            for i in range(DEVICES)
        ]
        devices = DeviceRepository(scope)
        for start in range(0, DEVICES, 1000):
            await devices.create_many(rows[start : start + 1000])
        repo = RuleRepository(scope)
        first = ""
        for i in range(RULES):
            rule, version = await repo.create(_rule(i), author="bench")
            first = first or rule.id
            if i % 2 == 0:
                await repo.publish(rule.id, version.version)
    alarms = AlarmService(db)
    now = datetime.now(UTC)
    for i in range(200):
        await alarms.raise_alarm(TENANT, first, f"freezer-{i:05d}", "freezer-warm", "major", "warm", now)
    return first


async def _measure(repeat: int) -> list[tuple[str, float, float]]:
    root = Path(tempfile.mkdtemp(prefix="flatgigs-bench-editor-"))
    url = f"sqlite+aiosqlite:///{root / 'bench.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    db = Database(url, pool_size=5)
    rule_id = await _populate(db)
    app = create_app(load_settings(data_dir=root / "data"), db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as http:
        page = await http.get("/app/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert csrf
        await http.post(
            "/app/login",
            data={
                "csrf_token": csrf.group(1),
                "tenant": TENANT,
                "email": "olivia@bench.example",
                "password": PASSWORD,
            },
        )
        landing = await http.get("/app/rules")
        token = re.search(r'name="csrf_token" value="([^"]+)"', landing.text)
        assert token
        rule_page = await http.get(f"/app/rules/{rule_id}")
        skeleton = re.search(r'name="skeleton" value="([^"]+)"', rule_page.text)
        assert skeleton
        form = urlencode(
            [
                ("skeleton", skeleton.group(1).replace("&#34;", '"')),
                ("name", "Freezer too warm"),
                ("dev_type", "freezer"),
                ("dev_labels", "region=north"),
                ("n|if/0", "1"),
                ("o|if/0|seconds", "5m"),
                ("n|if/0/0", "1"),
                ("o|if/0/0|metric", "temp"),
                ("o|if/0/0|value", "-10"),
            ]
        )
        post_headers = {
            "X-CSRF-Token": token.group(1),
            "HX-Request": "true",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        requests = {
            "rules list (1,000 rules, page of 100)": lambda: http.get("/app/rules"),
            "rules search": lambda: http.get(
                "/app/rules?q=store-042", headers={"HX-Request": "true", "HX-Target": "rules-table"}
            ),
            "rule page (builder, versions, diagram)": lambda: http.get(f"/app/rules/{rule_id}"),
            "validate as you type (check)": lambda: http.post(
                f"/app/rules/{rule_id}/check", content=form, headers=post_headers
            ),
            "devices list (10,000 devices)": lambda: http.get("/app/devices?labels=region%3Dnorth"),
            "alarms page (200 active)": lambda: http.get("/app/alarms"),
        }
        results = []
        for name, send in requests.items():
            assert (await send()).status_code == 200, name
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                response = await send()
                times.append((time.perf_counter() - start) * 1000)
                assert response.status_code == 200, name
            times.sort()
            results.append((name, statistics.median(times), times[int(len(times) * 0.95) - 1]))
    await app.state.runtime.telemetry.close()
    await db.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "editor.md")
    args = parser.parse_args()
    results = asyncio.run(_measure(args.repeat))
    lines = [
        "# Editor pages, server-side (in-process ASGI, SQLite)",
        "",
        f"{RULES:,} rules, {DEVICES:,} devices, 200 active alarms; {args.repeat} requests per page.",
        "",
        "| Page | median ms | p95 ms | p95 / 200 ms target |",
        "|------|-----------|--------|---------------------|",
    ]
    for name, median, p95 in results:
        lines.append(f"| {name} | {median:.1f} | {p95:.1f} | {p95 / TARGET_MS:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
