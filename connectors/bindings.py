"""Device bindings: which connector kinds poll or subscribe to devices, and their config schemas.

A binding's configuration is validated by the connector's own pydantic model (the one schema that
drives validation, the API and the docs); the tenant and device always come from where the
binding is stored, never from the configuration itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from connectors.base import ConnectivitySink, Connector, ReadingSink
from connectors.modbus import ModbusConnector, ModbusDeviceConfig
from connectors.opcua import OpcUaConnector, OpcUaEndpointConfig
from model.errors import InvalidInputError

BINDING_MODELS: dict[str, type[BaseModel]] = {
    "modbus": ModbusDeviceConfig,
    "opcua": OpcUaEndpointConfig,
}
_FROM_CONTEXT = ("tenant_id", "device_id")


def validate_binding(kind: str, tenant_id: str, device_id: str, config: Mapping[str, Any]) -> BaseModel:
    """The connector config for a device; InvalidInputError pointing at the bad fields."""
    model = BINDING_MODELS.get(kind)
    if model is None:
        raise InvalidInputError(
            f"unknown binding kind {kind!r}; known: {sorted(BINDING_MODELS)}",
            errors=[{"loc": ["kind"], "msg": f"unknown binding kind {kind!r}"}],
        )
    smuggled = [key for key in _FROM_CONTEXT if key in config]
    if smuggled:
        raise InvalidInputError(
            "tenant_id and device_id come from the URL, not the configuration",
            errors=[{"loc": ["config", key], "msg": "not accepted here"} for key in smuggled],
        )
    try:
        return model.model_validate({**config, "tenant_id": tenant_id, "device_id": device_id})
    except ValidationError as exc:
        errors = [
            {"loc": ["config", *err["loc"]], "msg": err["msg"], "type": err["type"]} for err in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
        raise InvalidInputError(f"invalid {kind} binding: {summary}", errors=errors) from exc


def stored_config(config: BaseModel) -> dict[str, Any]:
    """What is stored for a validated binding (without the tenant and device)."""
    return config.model_dump(mode="json", exclude=set(_FROM_CONTEXT))


def binding_connectors(
    kind: str, configs: Sequence[BaseModel], sink: ReadingSink, connectivity: ConnectivitySink
) -> list[Connector]:
    """The connector(s) serving every binding of ``kind`` (none when there is no binding)."""
    if not configs:
        return []
    if kind == "modbus":
        devices = [c for c in configs if isinstance(c, ModbusDeviceConfig)]
        return [ModbusConnector("modbus", sink, connectivity, devices)]
    if kind == "opcua":
        endpoints = [c for c in configs if isinstance(c, OpcUaEndpointConfig)]
        return [OpcUaConnector("opcua", sink, endpoints, connectivity=connectivity)]
    raise InvalidInputError(f"unknown binding kind {kind!r}")
