"""Provisioning through the REST API: missing types and devices created, credentials cached."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx
import pytest

from server.simulator.fleet import build_fleet
from server.simulator.provision import (
    CredentialStore,
    ProvisioningError,
    api_client,
    ensure_fleet,
    tenant_of,
)
from tests.unit.simulator.fake_api import API_TOKEN, TENANT, FakeApi


def test_tenant_comes_from_the_api_token() -> None:
    assert tenant_of("fg.acme-retail.tok_1.secret") == "acme-retail"
    for bad in ("fgo.tok.secret", "fgd.acme.c.s", "fg.Not Valid.k.s", "nope"):
        with pytest.raises(ProvisioningError):
            tenant_of(bad)


async def test_missing_types_and_devices_are_created_once() -> None:
    api = FakeApi()
    fleet = build_fleet(stores=2)
    async with api_client("http://api", API_TOKEN, transport=api.transport()) as client:
        first = await ensure_fleet(client, fleet)
        assert sorted(first.created_types) == ["battery-sensor", "freezer", "gateway", "power-meter"]
        assert (first.created_devices, first.existing_devices) == (18, 0)
        assert api.devices["freezer-02-6"]["labels"] == {"store": "store-02", "region": "north"}
        second = await ensure_fleet(client, build_fleet(stores=3))
        assert (second.created_types, second.created_devices, second.existing_devices) == ([], 9, 18)
        assert second.warnings == []


async def test_an_incomplete_catalogue_is_reported() -> None:
    api = FakeApi(types={"freezer": {"id": "freezer", "metrics": [{"name": "temp"}]}})
    async with api_client("http://api", API_TOKEN, transport=api.transport()) as client:
        report = await ensure_fleet(client, build_fleet(stores=1))
    assert any("'freezer' lacks metrics ['compressor_on', 'door_open']" in w for w in report.warnings)


async def test_a_refused_token_is_a_clear_error() -> None:
    async with api_client(
        "http://api", "fg.acme-test.tok_1.wrong", transport=FakeApi().transport()
    ) as client:
        with pytest.raises(ProvisioningError, match="401: the API token was refused"):
            await ensure_fleet(client, build_fleet(stores=1))


async def test_credentials_are_issued_once_and_cached(tmp_path: Path) -> None:
    api = FakeApi()
    path = tmp_path / "data" / "simulator-credentials.json"
    devices = ["meter-01", "battery-01", "gw-01"]
    async with api_client("http://api", API_TOKEN, transport=api.transport()) as client:
        await ensure_fleet(client, build_fleet(stores=1))
        store = CredentialStore(path, client, TENANT)
        assert await store.ensure(devices) == 3
        tokens = {d: store.token(d) for d in devices}
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        again = CredentialStore(path, client, TENANT)  # a rerun
        assert await again.ensure(devices) == 0
        assert {d: again.token(d) for d in devices} == tokens
        assert all(api.issued_for(d) == 1 for d in devices)
        other_tenant = CredentialStore(path, client, "someone-else")
        assert "meter-01" not in other_tenant

        renewed = await again.refresh("meter-01", tokens["meter-01"])
        assert renewed != tokens["meter-01"]
        assert await again.refresh("meter-01", tokens["meter-01"]) == renewed, "a second notice reuses it"
        assert api.issued_for("meter-01") == 2
        saved = json.loads(path.read_text())["scopes"][f"http://api {TENANT}"]
        assert saved["meter-01"] == renewed and saved["gw-01"] == tokens["gw-01"]

        with pytest.raises(ProvisioningError, match="issuing a credential for ghost"):
            await again.ensure(["ghost"])


async def test_an_unreachable_api_is_a_clear_error(tmp_path: Path) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    async with api_client("http://api", API_TOKEN, transport=httpx.MockTransport(down)) as client:
        with pytest.raises(ProvisioningError, match="cannot reach the API"):
            await ensure_fleet(client, build_fleet(stores=1))


async def test_an_unreadable_cache_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "simulator-credentials.json"
    path.write_text("{not json")
    async with httpx.AsyncClient(base_url="http://api") as client:
        with pytest.raises(ProvisioningError, match="delete it"):
            CredentialStore(path, client, TENANT)
