"""Making the simulated devices exist, and device credentials, through the REST API.

``ensure_fleet`` creates the device types and devices that are missing (the demo tenant already
has them all, so nothing is created there). ``CredentialStore`` issues device credentials with
``POST /api/v1/devices/{id}/credentials`` for the devices that send over HTTP or CoAP and keeps
them in ``<data dir>/simulator-credentials.json`` (mode 0600, per API URL and tenant), so a rerun
reuses them instead of issuing new ones; a credential the platform refuses is replaced once.
``ensure_binding`` points the platform's Modbus or OPC-UA connector at a device the simulator
serves (``PUT /api/v1/devices/{id}/binding``), ``remove_binding`` undoes it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from model.ids import is_tenant_id
from server.simulator.fleet import Fleet

API = "/api/v1"
CREDENTIALS_FILE = "simulator-credentials.json"
PAGE = 500
RETRIES = 4
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
# Writes (devices, credentials) one at a time: concurrent writes collide on the embedded SQLite
# ("database is locked", answered 500), and they happen once per device, cached afterwards.
WRITE_CONCURRENCY = 1


class ProvisioningError(Exception):
    """The platform refused or could not be reached while preparing the fleet."""


def tenant_of(api_token: str) -> str:
    """The tenant of a tenant API token ``fg.<tenant>.<key>.<secret>``."""
    parts = api_token.split(".")
    if len(parts) != 4 or parts[0] != "fg" or not is_tenant_id(parts[1]):
        raise ProvisioningError("the API token must be a tenant token 'fg.<tenant>.<key>.<secret>'")
    return parts[1]


def api_client(
    base_url: str, api_token: str, *, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """An HTTP client for the REST API, authenticated with ``api_token``."""
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers={"Authorization": f"Bearer {api_token}"},
        timeout=30.0,
        transport=transport,
    )


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)[:300]
    return str(body)[:300]


def _refused(response: httpx.Response, what: str) -> ProvisioningError:
    hints = {
        401: "the API token was refused (wrong, expired or revoked)",
        403: "the API token lacks a scope (it needs devices:read and devices:write)",
    }
    hint = hints.get(response.status_code, _detail(response))
    return ProvisioningError(f"{what}: HTTP {response.status_code}: {hint}")


async def _request(
    api: httpx.AsyncClient, method: str, url: str, what: str, *, retries: int = RETRIES, **kwargs: Any
) -> httpx.Response:
    """One API call; server errors and 429/503 are retried (writes can collide on SQLite)."""
    attempt = 0
    while True:
        try:
            response = await api.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise ProvisioningError(
                f"{what}: cannot reach the API at {api.base_url}: {exc or type(exc).__name__}"
            ) from exc
        if response.status_code not in RETRY_STATUS or attempt >= retries:
            return response
        await asyncio.sleep(0.2 * 2.0**attempt)
        attempt += 1


async def _bounded(jobs: Iterable[Callable[[], Awaitable[None]]], concurrency: int) -> None:
    semaphore = asyncio.Semaphore(concurrency)

    async def run(job: Callable[[], Awaitable[None]]) -> None:
        async with semaphore:
            await job()

    async with asyncio.TaskGroup() as group:
        for job in jobs:
            group.create_task(run(job))


@dataclass
class ProvisionReport:
    """What ``ensure_fleet`` found and did."""

    created_types: list[str] = field(default_factory=list)
    created_devices: int = 0
    existing_devices: int = 0
    warnings: list[str] = field(default_factory=list)


async def existing_device_ids(api: httpx.AsyncClient, type_id: str) -> set[str]:
    """Ids of the tenant's devices of ``type_id`` (all pages)."""
    ids: set[str] = set()
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"type": type_id, "limit": PAGE}
        if cursor:
            params["cursor"] = cursor
        r = await _request(api, "GET", f"{API}/devices", "listing devices", params=params)
        if r.status_code != 200:
            raise _refused(r, "listing devices")
        page = r.json()
        ids.update(item["id"] for item in page["items"])
        cursor = page.get("next_cursor")
        if not cursor:
            return ids


async def ensure_fleet(
    api: httpx.AsyncClient, fleet: Fleet, *, concurrency: int = WRITE_CONCURRENCY
) -> ProvisionReport:
    """Create the fleet's missing device types and devices; warn about incomplete catalogues."""
    report = ProvisionReport()
    r = await _request(api, "GET", f"{API}/device-types", "listing device types")
    if r.status_code != 200:
        raise _refused(r, "listing device types")
    have = {t["id"]: {m["name"] for m in t.get("metrics", [])} for t in r.json()}
    for type_def in fleet.types.values():
        if type_def.id not in have:
            r = await _request(
                api, "POST", f"{API}/device-types", "creating a device type", json=type_def.to_json()
            )
            if r.status_code not in (201, 409):
                raise _refused(r, f"creating device type {type_def.id}")
            report.created_types.append(type_def.id)
            continue
        missing = sorted({m.name for m in type_def.metrics} - have[type_def.id])
        if missing:
            report.warnings.append(
                f"device type {type_def.id!r} lacks metrics {missing}: those readings will be dead-lettered"
            )
    existing: set[str] = set()
    for type_id in fleet.types:
        existing |= await existing_device_ids(api, type_id)
    wanted = [d for d in fleet.devices if d.id not in existing]
    report.existing_devices = len(fleet.devices) - len(wanted)

    def create(body: dict[str, Any]) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            r = await _request(api, "POST", f"{API}/devices", "creating a device", json=body)
            if r.status_code == 201:
                report.created_devices += 1
            elif r.status_code == 409:  # created meanwhile (or by a retried request), or another type
                r = await _request(api, "GET", f"{API}/devices/{body['id']}", "reading a device")
                if r.status_code == 200 and r.json().get("type_id") != body["type_id"]:
                    report.warnings.append(
                        f"device {body['id']!r} exists with type {r.json().get('type_id')!r}, "
                        f"not {body['type_id']!r}: its readings may be dead-lettered"
                    )
            else:
                raise _refused(r, f"creating device {body['id']}")

        return job

    try:
        await _bounded((create(d.to_json()) for d in wanted), concurrency)
    except ExceptionGroup as group:
        raise group.exceptions[0] from None
    return report


class CredentialStore:
    """Device credentials issued through the API, cached in a JSON file (mode 0600)."""

    def __init__(self, path: Path, api: httpx.AsyncClient, tenant: str) -> None:
        self.path = path
        self.api = api
        self.scope = f"{str(api.base_url).rstrip('/')} {tenant}"
        self._tokens: dict[str, str] = self._load().get(self.scope, {})
        self._locks: dict[str, asyncio.Lock] = {}
        self.issued = 0

    def _load(self) -> dict[str, dict[str, str]]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise ProvisioningError(
                f"cannot read {self.path}: {exc} (delete it to issue new credentials)"
            ) from exc
        scopes = data.get("scopes") if isinstance(data, dict) else None
        return scopes if isinstance(scopes, dict) else {}

    def _save(self) -> None:
        scopes = self._load()
        scopes[self.scope] = dict(sorted(self._tokens.items()))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"version": 1, "scopes": scopes}, handle, indent=1)
        os.replace(tmp, self.path)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._tokens

    def token(self, device_id: str) -> str:
        """The cached credential of ``device_id``; KeyError if there is none."""
        return self._tokens[device_id]

    async def _issue(self, device_id: str) -> str:
        r = await _request(
            self.api,
            "POST",
            f"{API}/devices/{device_id}/credentials",
            f"issuing a credential for {device_id}",
        )
        if r.status_code != 201:
            raise _refused(r, f"issuing a credential for {device_id}")
        token = r.json()["token"]
        if not isinstance(token, str):
            raise ProvisioningError(f"issuing a credential for {device_id}: no token in the answer")
        self.issued += 1
        return token

    async def ensure(
        self,
        device_ids: Iterable[str],
        *,
        concurrency: int = WRITE_CONCURRENCY,
        on_issued: Callable[[int], None] | None = None,
    ) -> int:
        """Issue credentials for the devices that have none cached; how many were issued."""
        missing = sorted({d for d in device_ids if d not in self._tokens})

        def issue(device_id: str) -> Callable[[], Awaitable[None]]:
            async def job() -> None:
                self._tokens[device_id] = await self._issue(device_id)
                if on_issued is not None:
                    on_issued(1)

            return job

        try:
            await _bounded((issue(d) for d in missing), concurrency)
        except ExceptionGroup as group:
            raise group.exceptions[0] from None
        finally:
            if missing:
                self._save()  # keep what was issued, even when some failed
        return len(missing)

    async def refresh(self, device_id: str, stale: str) -> str:
        """Replace a credential the platform refused (once, however many senders noticed)."""
        lock = self._locks.setdefault(device_id, asyncio.Lock())
        async with lock:
            current = self._tokens.get(device_id)
            if current is not None and current != stale:
                return current
            self._tokens[device_id] = await self._issue(device_id)
            self._save()
            return self._tokens[device_id]


# --- bindings (devices the platform polls or subscribes to) ---------------------------------------


def _covers(stored: Any, wanted: Any) -> bool:
    """True if ``stored`` has every field of ``wanted`` with the same value (defaults aside)."""
    if isinstance(wanted, dict):
        return isinstance(stored, dict) and all(
            key in stored and _covers(stored[key], value) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(wanted)
            and all(_covers(a, b) for a, b in zip(stored, wanted, strict=True))
        )
    return bool(stored == wanted)


async def ensure_binding(api: httpx.AsyncClient, device_id: str, kind: str, config: dict[str, Any]) -> bool:
    """Bind ``device_id`` to the ``kind`` connector with ``config``; False if it already was.

    An identical binding is left alone, so a rerun does not make the platform rebuild its
    connector for nothing; any other binding of the device is replaced.
    """
    url = f"{API}/devices/{device_id}/binding"
    r = await _request(api, "GET", url, f"reading the binding of {device_id}")
    if r.status_code == 200:
        body = r.json()
        if isinstance(body, dict) and body.get("kind") == kind and _covers(body.get("config"), config):
            return False
    elif r.status_code != 404:
        raise _refused(r, f"reading the binding of {device_id}")
    r = await _request(api, "PUT", url, f"binding {device_id}", json={"kind": kind, "config": config})
    if r.status_code == 404:
        raise ProvisioningError(
            f"binding {device_id}: HTTP 404: {_detail(r)} (the device is missing, or the platform "
            "has no device bindings API)"
        )
    if r.status_code != 200:
        raise _refused(r, f"binding {device_id} ({kind})")
    return True


async def remove_binding(api: httpx.AsyncClient, device_id: str) -> bool:
    """Unbind ``device_id`` (the platform stops polling it); False if it had no binding."""
    url = f"{API}/devices/{device_id}/binding"
    r = await _request(api, "DELETE", url, f"unbinding {device_id}")
    if r.status_code == 404:
        return False
    if r.status_code != 204:
        raise _refused(r, f"unbinding {device_id}")
    return True
