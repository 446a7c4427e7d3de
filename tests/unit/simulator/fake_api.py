"""An in-memory stand-in for the REST API endpoints the simulator uses, as an httpx transport."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from connectors.payload import decode
from server.simulator.signals import Metrics
from storage.types import utcnow

TENANT = "acme-test"
API_TOKEN = f"fg.{TENANT}.tok_1.secret"


@dataclass
class FakeApi:
    """Device types, devices, credentials and ingested samples of one tenant."""

    types: dict[str, dict[str, Any]] = field(default_factory=dict)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict)  # token -> device
    bindings: dict[str, dict[str, Any]] = field(default_factory=dict)  # device -> {"kind", "config"}
    revoked: set[str] = field(default_factory=set)
    ingested: dict[str, list[tuple[float, Metrics]]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    fail_ingest: int = 0  # answer 503 to this many ingest requests first
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def transport(self) -> httpx.MockTransport:
        """The transport to give httpx clients."""
        return httpx.MockTransport(self.handle)

    def issued_for(self, device_id: str) -> int:
        """How many credentials were issued for a device."""
        return sum(1 for d in self.credentials.values() if d == device_id)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        self.requests.append((method, path))
        auth = request.headers.get("authorization", "")
        if path == "/api/v1/ingest":
            return self._ingest(request, auth.removeprefix("Bearer "))
        if auth != f"Bearer {API_TOKEN}":
            return httpx.Response(401, json={"detail": "bad token"})
        if path == "/api/v1/device-types":
            if method == "GET":
                return httpx.Response(200, json=list(self.types.values()))
            body = json.loads(request.content)
            if body["id"] in self.types:
                return httpx.Response(409, json={"detail": "exists"})
            self.types[body["id"]] = body
            return httpx.Response(201, json=body)
        if path == "/api/v1/devices":
            if method == "GET":
                wanted = request.url.params.get("type")
                items = [d for d in self.devices.values() if wanted is None or d["type_id"] == wanted]
                return httpx.Response(200, json={"items": items, "next_cursor": None})
            body = json.loads(request.content)
            if body["type_id"] not in self.types:
                return httpx.Response(422, json={"detail": "unknown type"})
            if body["id"] in self.devices:
                return httpx.Response(409, json={"detail": "exists"})
            self.devices[body["id"]] = body
            return httpx.Response(201, json=body)
        if path.endswith("/binding"):
            return self._binding(request, path.split("/")[-2])
        if path.endswith("/credentials") and method == "POST":
            device_id = path.split("/")[-2]
            if device_id not in self.devices:
                return httpx.Response(404, json={"detail": "no such device"})
            token = f"fgd.{TENANT}.cred_{next(self._ids)}.s"
            self.credentials[token] = device_id
            return httpx.Response(201, json={"id": token, "device_id": device_id, "token": token})
        return httpx.Response(404, json={"detail": f"no route {method} {path}"})

    def _binding(self, request: httpx.Request, device_id: str) -> httpx.Response:
        if device_id not in self.devices:
            return httpx.Response(404, json={"detail": "no such device"})
        if request.method == "PUT":
            body = json.loads(request.content)
            # The platform stores the validated config: with the defaults filled in.
            config = (
                {"max_read_registers": 125, **body["config"]} if body["kind"] == "modbus" else body["config"]
            )
            self.bindings[device_id] = {"device_id": device_id, "kind": body["kind"], "config": config}
            return httpx.Response(200, json=self.bindings[device_id])
        if device_id not in self.bindings:
            return httpx.Response(404, json={"detail": "no binding"})
        if request.method == "DELETE":
            del self.bindings[device_id]
            return httpx.Response(204)
        return httpx.Response(200, json=self.bindings[device_id])

    def _ingest(self, request: httpx.Request, token: str) -> httpx.Response:
        device_id = self.credentials.get(token)
        if device_id is None or token in self.revoked:
            return httpx.Response(401, json={"detail": "the device credential is unknown or revoked"})
        if self.fail_ingest > 0:
            self.fail_ingest -= 1
            return httpx.Response(503, headers={"Retry-After": "0.01"}, json={"detail": "full"})
        samples = decode(request.content, max_bytes=65536, now=utcnow())
        stored = self.ingested.setdefault(device_id, [])
        stored.extend((s.ts.timestamp(), dict(s.metrics)) for s in samples)
        return httpx.Response(202, json={"device_id": device_id, "accepted": len(samples)})
