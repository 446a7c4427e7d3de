"""Publishing to the MQTT broker for the platform itself (rule actions), on a connection of its own.

The ingesting connector's client is tuned for consuming (manual acknowledgements, shared
subscriptions); publishing goes through a separate, lazily opened aiomqtt client, so a burst of
rule messages never competes with the ingestion flow control. A dropped connection is reopened
on the next publish; a publish that fails twice raises, and the rule's trace says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiomqtt

logger = logging.getLogger(__name__)


class MqttPublisher:
    """Publishes messages with QoS 0 or 1; one connection, opened on first use."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.username = username
        self.password = password
        self.timeout_s = timeout_s
        self._client: aiomqtt.Client | None = None
        self._lock = asyncio.Lock()

    async def _connected(self) -> aiomqtt.Client:
        async with self._lock:
            if self._client is None:
                client = aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=self.client_id,
                    username=self.username,
                    password=self.password,
                    timeout=self.timeout_s,
                )
                await client.__aenter__()
                self._client = client
            return self._client

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Publish; reconnect once if the connection went away."""
        for attempt in (1, 2):
            client = await self._connected()
            try:
                await client.publish(topic, payload, qos=qos, retain=retain, timeout=self.timeout_s)
                return
            except aiomqtt.MqttError:
                await self._drop(client)
                if attempt == 2:
                    raise
                logger.info("rule publisher: reconnecting to %s:%d", self.host, self.port)

    async def _drop(self, client: Any) -> None:
        async with self._lock:
            if self._client is client:
                self._client = None
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)

    async def close(self) -> None:
        """Disconnect."""
        if self._client is not None:
            await self._drop(self._client)
