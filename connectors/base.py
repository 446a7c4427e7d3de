"""The connector contract and the ports connectors use to hand their readings on."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Protocol

from model.errors import PlatformError
from model.readings import Reading
from model.rejections import Rejection


class ReadingSink(Protocol):
    """Where connectors deliver readings and refusals (the pipeline implements it)."""

    async def submit(self, reading: Reading) -> None:
        """Hand over a reading, waiting while the pipeline is full (protocols that can pause)."""
        ...

    def offer(self, reading: Reading) -> None:
        """Hand over a reading now or raise BackpressureError (request/response protocols)."""
        ...

    def reject(self, rejection: Rejection) -> None:
        """Record a refused message; never blocks, never raises."""
        ...


class DeviceAuthenticator(Protocol):
    """Checks a device credential presented to a connector (the device registry implements it)."""

    async def authenticate(self, token: str) -> tuple[str, str] | None:
        """``(tenant_id, device_id)`` for a valid, unrevoked credential, else None."""
        ...


class ConnectivitySink(Protocol):
    """Where polling connectors report that a device stopped answering (or answers again)."""

    def unreachable(self, tenant_id: str, device_id: str, detail: str) -> None:
        """The device did not answer (timeout, refused connection); never blocks."""
        ...


class ConnectorError(PlatformError):
    """A connector failed; the supervisor restarts it. Library errors are translated into this."""

    slug = "connector-error"
    status = 502
    title = "Connector failure"


class CommandNotSupportedError(PlatformError):
    """This connector cannot carry commands (yet)."""

    slug = "command-not-supported"
    status = 501
    title = "Command not supported"


class HealthState(StrEnum):
    """A connector's state as the supervisor reports it."""

    STARTING = "starting"
    RUNNING = "running"
    BACKING_OFF = "backing_off"
    STOPPED = "stopped"


@dataclass(slots=True)
class ConnectorHealth:
    """What a connector reports about itself."""

    state: HealthState = HealthState.STARTING
    since: datetime | None = None
    restarts: int = 0
    last_error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Connector(abc.ABC):
    """A protocol adapter: runs until cancelled, raises ConnectorError when it cannot go on."""

    kind: ClassVar[str]

    def __init__(self, name: str) -> None:
        self.name = name

    @abc.abstractmethod
    async def run(self) -> None:
        """Connect and move messages until cancelled; return or raise to be restarted."""

    def details(self) -> dict[str, Any]:
        """Protocol-specific health details (counters, connection state)."""
        return {}

    async def send(self, tenant_id: str, device_id: str, command: Mapping[str, Any]) -> None:
        """Carry a command to a device (the device-control issue fills this in per protocol)."""
        raise CommandNotSupportedError(f"the {self.kind} connector cannot send commands yet")
