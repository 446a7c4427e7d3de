"""MQTT ingestion benchmark: the full pipeline against a bare paho consumer, same broker, same run.

Run::

    .venv/bin/python -m bench.ingest [--messages N] [--devices 1000] [--workers 1|2] [--quick]
        [--repeat 2] [--rules 100] [--profile] [--only bare,aiomqtt,pipe1,pipe2,split,influx,rules,live]

Set-up: a private Mosquitto (a fresh one per measurement, so no session of an earlier phase
queues messages), a migrated SQLite registry with one tenant, one device type (temp, door_open,
compressor_on) and ``--devices`` devices, and publisher processes that speak MQTT 3.1.1 QoS 1
(every PUBLISH acknowledged by the broker) with payloads
``{"ts": <epoch float>, "values": {"temp": .., "door_open": .., "compressor_on": ..}}`` on
``fg/<tenant>/<device>/telemetry``, devices in turn.

Throughput is measured on a backlog: the consumer's persistent session (clean start off, QoS 1
subscription) is created first, the publishers put N messages into it while the consumer is
away, then the consumer connects and drains it. Publisher and consumer therefore never share the
2 cores, and the figure is the consumer's own ceiling. The configurations run ``--repeat`` times,
interleaved (a slow spell of the shared machine hits all of them), and the median is reported,
with each consumer's CPU per message (steadier than msg/s on a busy machine). Phases:

(a) a bare paho-mqtt consumer (MQTT 5, auto-ack) that only counts messages: the Python ceiling;
    diagnostic: a bare aiomqtt consumer that only counts;
(b) the full pipeline: worker processes each running a flatgigs app (``server.app.create_app``,
    its lifespan runs ``server.runtime.Runtime``: MqttConnector -> ReadingBus -> Ingestor ->
    EmbeddedTelemetryStore, with status tracking, dead letters, the live hub and the rule
    engine), the telemetry in its own SQLite file; with ``--workers 2`` also two workers on a
    shared subscription (``mqtt_shared_group``) writing one telemetry file, and (diagnostic)
    one file each. Every message must be in the store afterwards (row counts);
(c) latency: publishing live at half the 1-worker rate, publish time in the payload; the last
    reading consumer (``Ingestor.reading_consumers``, called after the batch is stored) takes
    ``time.time() - ts``;
(d) overload: publishing live at twice the 1-worker rate; RSS of the worker sampled from /proc;
    afterwards the backlog drains and every message must be stored;
(e) the pipeline into InfluxDB (a private influxd), backlog as in (b);
(f) the pipeline with ``--rules`` threshold rules (Node-RED's reference load), a small backlog;
    ``--profile`` adds a cProfile run of (b) and where the worker's CPU goes.

Results are printed and written to bench/results/ingest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import ctypes
import logging
import math
import multiprocessing as mp
import os
import platform
import select
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results" / "ingest.md"
TENANT = "bench-ingest"
TYPE_ID = "freezer"
PREFIX = "fg"
SHARED_GROUP = "ingest"
SESSION_EXPIRY_S = 24 * 3600
# Mosquitto must keep the whole backlog for an offline session (its default is 1,000 messages).
BROKER_CONFIG = [
    "persistence false",
    "max_queued_messages 5000000",
    "max_queued_bytes 0",
    # The harness logs everything (`log_type all`), which logs every packet: back to the default.
    "log_type none",
    "log_type error",
    "log_type warning",
    "log_type notice",
]
TARGET_RATIO = 0.5
TARGET_P99_S = 1.0
# What a worker may add under overload: bus, connector inbox, SQLite page cache, slack.
RSS_BOUND_MIB = 64
NODE_RED_MSG_S = 15_000
STALL_TIMEOUT_S = 60.0
WORKER_STARTUP_S = 60.0

# --------------------------------------------------------------------------------------------
# A minimal MQTT 3.1.1 QoS 1 publisher: pre-encoded packets written in chunks, so that the
# publishing side costs as little CPU as possible on a 2-core machine.


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return len(raw).to_bytes(2, "big") + raw


class RawPublisher:
    """One MQTT 3.1.1 connection publishing at QoS 1 with up to ``window`` unacknowledged messages."""

    def __init__(self, host: str, port: int, client_id: str, window: int = 20_000) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.window = window
        self.inflight: set[int] = set()
        self.acked = 0
        self._next_id = 0
        self._buf = bytearray()
        self._last_ping = time.monotonic()
        body = _string("MQTT") + bytes([4, 0x02]) + (60).to_bytes(2, "big") + _string(client_id)
        self.sock.sendall(b"\x10" + _varint(len(body)) + body)
        connack = self._recv_exact(4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise RuntimeError(f"broker refused the publisher: {connack!r}")
        self.sock.setblocking(False)

    def _recv_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            data += chunk
        return data

    def _packet_id(self) -> int:
        while True:
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self.inflight:
                return self._next_id

    def publish_many(self, messages: Sequence[tuple[bytes, bytes]]) -> None:
        """Send (topic, payload) pairs as QoS 1 PUBLISH packets, waiting while the window is full."""
        while len(self.inflight) + len(messages) > self.window:
            self.poll(block=True)
        out = bytearray()
        for topic, payload in messages:
            pid = self._packet_id()
            self.inflight.add(pid)
            body_len = 2 + len(topic) + 2 + len(payload)
            out += b"\x32" + _varint(body_len) + len(topic).to_bytes(2, "big") + topic
            out += pid.to_bytes(2, "big") + payload
        self._send(bytes(out))
        self.poll(block=False)

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
                view = view[sent:]
            except BlockingIOError:
                # The broker is not reading: read its acknowledgements meanwhile.
                select.select([self.sock], [self.sock], [], 1.0)
                self.poll(block=False)

    def poll(self, block: bool, timeout: float = 1.0) -> None:
        """Read PUBACKs (and PINGRESPs); keep the connection alive."""
        now = time.monotonic()
        if now - self._last_ping > 20:
            self._last_ping = now
            self._send(b"\xc0\x00")
        if block:
            select.select([self.sock], [], [], timeout)
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            if not data:
                raise ConnectionError("broker closed the connection")
            self._buf += data
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 2:
            kind, length = buf[pos], buf[pos + 1]
            if len(buf) - pos < 2 + length:
                break
            if kind == 0x40:
                pid = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                if pid in self.inflight:
                    self.inflight.discard(pid)
                    self.acked += 1
            elif kind != 0xD0:
                raise RuntimeError(f"unexpected packet 0x{kind:02x} from the broker")
            pos += 2 + length
        del buf[:pos]

    def drain(self, timeout: float = 120.0) -> None:
        """Wait for every PUBACK."""
        deadline = time.monotonic() + timeout
        while self.inflight:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.inflight)} publishes unacknowledged after {timeout}s")
            self.poll(block=True, timeout=0.2)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.setblocking(True)
            self.sock.sendall(b"\xe0\x00")
        self.sock.close()


class PayloadMaker:
    """Messages for a list of devices in turn; each device's timestamps strictly increase."""

    def __init__(self, devices: Sequence[str], seed: int) -> None:
        self.topics = [f"{PREFIX}/{TENANT}/{d}/telemetry".encode() for d in devices]
        self.last_ts = [0.0] * len(devices)
        self.i = seed % len(devices)
        self.n = seed

    def make(self, count: int) -> list[tuple[bytes, bytes]]:
        out = []
        topics, last, n_dev = self.topics, self.last_ts, len(self.topics)
        now = time.time()
        for _ in range(count):
            i = self.i
            # 2 µs apart at least, so every message is a distinct (device, ts) key in the stores.
            ts = max(now, last[i] + 2e-6)
            last[i] = ts
            n = self.n
            temp = -25.0 + (n * 7919 % 1000) / 100.0
            door = "true" if n % 17 == 0 else "false"
            comp = "true" if n % 3 else "false"
            payload = (
                f'{{"ts": {ts!r}, "values": {{"temp": {temp}, "door_open": {door}, '
                f'"compressor_on": {comp}}}}}'
            )
            out.append((topics[i], payload.encode()))
            self.i = (i + 1) % n_dev
            self.n = n + 1
        return out


def publisher_main(
    host: str, port: int, index: int, devices: list[str], plan: dict[str, Any], conn: Connection
) -> None:
    """Publisher process: ``plan`` is {"count": N} (as fast as possible) or {"rate": R, "seconds": S}."""
    try:
        pub = RawPublisher(host, port, f"bench-pub-{index}-{os.getpid()}")
        maker = PayloadMaker(devices, seed=index * 7)
        conn.send(("connected", None))
        if conn.recv() != "go":
            return
        started = time.monotonic()
        sent = 0
        if "count" in plan:
            total = int(plan["count"])
            while sent < total:
                chunk = min(500, total - sent)
                pub.publish_many(maker.make(chunk))
                sent += chunk
        else:
            rate, seconds = float(plan["rate"]), float(plan["seconds"])
            # A message every 1/rate s, sent in small bursts (at most every 2 ms).
            while True:
                now = time.monotonic()
                elapsed = now - started
                if elapsed >= seconds:
                    break
                due = int(rate * elapsed) - sent
                if due > 0:
                    chunk = min(due, 1000)
                    pub.publish_many(maker.make(chunk))
                    sent += chunk
                else:
                    pub.poll(block=True, timeout=max(0.0005, min(0.002, (sent + 1) / rate - elapsed)))
        sent_done = time.monotonic()
        pub.drain()
        acked_done = time.monotonic()
        pub.close()
        conn.send(
            (
                "done",
                {
                    "sent": sent,
                    "acked": pub.acked,
                    "started": started,
                    "sent_done": sent_done,
                    "acked_done": acked_done,
                    "cpu": time.process_time(),
                },
            )
        )
    except BaseException as exc:  # report, then die
        conn.send(("error", repr(exc)))
        raise


@dataclass
class PublishResult:
    messages: int
    seconds: float
    rate: float
    cpu_s: float = 0.0


class Publishers:
    """Publisher processes over a split of the devices; start(), go(), then wait()."""

    def __init__(self, ctx: Any, host: str, port: int, devices: Sequence[str], count: int) -> None:
        self.ctx = ctx
        self.host, self.port = host, port
        self.devices = list(devices)
        self.count = count
        self.procs: list[tuple[Any, Connection]] = []

    def start(self, plan: dict[str, Any]) -> None:
        for index in range(self.count):
            share = self.devices[index :: self.count]
            parent, child = self.ctx.Pipe()
            per = dict(plan)
            if "count" in plan:
                per["count"] = plan["count"] // self.count + (1 if index < plan["count"] % self.count else 0)
            else:
                per["rate"] = plan["rate"] / self.count
            proc = self.ctx.Process(
                target=publisher_main,
                args=(self.host, self.port, index, share, per, child),
                name=f"bench-publisher-{index}",
                daemon=True,
            )
            proc.start()
            self.procs.append((proc, parent))
        for _, parent in self.procs:
            kind, info = _recv(parent, 30.0)
            if kind != "connected":
                raise RuntimeError(f"publisher failed: {info}")

    def go(self) -> None:
        for _, parent in self.procs:
            parent.send("go")

    def wait(self, timeout: float) -> PublishResult:
        acked = 0
        cpu = 0.0
        started, done = math.inf, 0.0
        for proc, parent in self.procs:
            kind, info = _recv(parent, timeout)
            if kind != "done":
                raise RuntimeError(f"publisher failed: {info}")
            acked += info["acked"]
            if info["acked"] != info["sent"]:
                raise RuntimeError(f"publisher: {info['sent']} sent but {info['acked']} acknowledged")
            started = min(started, info["started"])
            done = max(done, info["sent_done"])
            cpu += info["cpu"]
            proc.join(10)
        self.procs.clear()
        seconds = done - started
        return PublishResult(acked, seconds, acked / seconds if seconds > 0 else math.inf, cpu)

    def kill(self) -> None:
        for proc, _ in self.procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self.procs.clear()


def _recv(conn: Connection, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise TimeoutError(f"no answer from a child process within {timeout}s")
    return conn.recv()


# --------------------------------------------------------------------------------------------
# Sessions and bare consumers (paho, aiomqtt)


def topic_filter(shared: bool) -> str:
    topic = f"{PREFIX}/+/+/telemetry"
    return f"$share/{SHARED_GROUP}/{topic}" if shared else topic


def prepare_session(host: str, port: int, client_id: str, subscription: str) -> None:
    """Create a persistent MQTT 5 session subscribed at QoS 1, then leave it (the broker queues)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    state = {"connected": False, "subscribed": False}
    client.on_connect = lambda *a: state.__setitem__("connected", True)
    client.on_subscribe = lambda *a: state.__setitem__("subscribed", True)
    client.connect(host, port, clean_start=False, properties=props)
    deadline = time.monotonic() + 10
    while not state["connected"] and time.monotonic() < deadline:
        client.loop(0.05)
    client.subscribe(subscription, qos=1)
    while not state["subscribed"] and time.monotonic() < deadline:
        client.loop(0.05)
    if not state["subscribed"]:
        raise RuntimeError(f"could not create the session of {client_id}")
    client.disconnect()
    client.loop(0.05)


def bare_paho_main(host: str, port: int, client_id: str, progress: Any, stop: Any, conn: Connection) -> None:
    """Count messages of the prepared session with plain paho (MQTT 5, QoS 1 acknowledged by paho)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    samples: list[tuple[float, int]] = []
    count = 0
    monotonic = time.monotonic

    def on_message(_c: Any, _u: Any, _m: Any) -> None:
        nonlocal count
        count += 1
        progress.value = count
        if count & 255 == 0 or count == 1:
            samples.append((monotonic(), count))

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    cpu0 = time.process_time()
    client.connect(host, port, clean_start=False, properties=props)
    while not stop.is_set():
        client.loop(0.05)
    cpu = time.process_time() - cpu0
    progress.value = count
    samples.append((monotonic(), count))
    client.disconnect()
    conn.send({"samples": samples, "count": count, "rss_kb": _rss_kb(os.getpid())[1], "cpu": cpu})


def bare_aiomqtt_main(
    host: str, port: int, client_id: str, progress: Any, stop: Any, conn: Connection
) -> None:
    """Count messages of the prepared session with aiomqtt's message iterator (auto-ack)."""
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    samples: list[tuple[float, int]] = []

    async def run() -> int:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        count = 0
        client = aiomqtt.Client(
            host,
            port,
            identifier=client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
        )

        async def watch() -> None:
            # A multiprocessing Event cannot be awaited: poll it.
            while not stop.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.05)

        async with client:
            watcher = asyncio.create_task(watch())
            counter = asyncio.ensure_future(_count(client))
            await asyncio.wait({watcher, counter}, return_when=asyncio.FIRST_COMPLETED)
            counter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                count = await counter
        return count

    async def _count(client: Any) -> int:
        count = 0
        try:
            async for _ in client.messages:
                count += 1
                progress.value = count
                if count & 255 == 0 or count == 1:
                    samples.append((time.monotonic(), count))
        except asyncio.CancelledError:
            pass
        samples.append((time.monotonic(), count))
        progress.value = count
        return count

    cpu0 = time.process_time()
    count = asyncio.run(run())
    cpu = time.process_time() - cpu0
    conn.send({"samples": samples, "count": count, "rss_kb": _rss_kb(os.getpid())[1], "cpu": cpu})


# --------------------------------------------------------------------------------------------
# The flatgigs worker process


@dataclass
class WorkerConfig:
    index: int
    data_dir: str
    registry_url: str
    mqtt_url: str
    client_id: str
    shared_group: str | None
    influx_url: str | None
    profile: str | None = None  # cProfile the event loop thread from "ready" to "stop", dump here


def pipeline_main(cfg: WorkerConfig, progress: Any, conn: Connection) -> None:
    """A flatgigs process: the app's lifespan runs the Runtime (connectors, bus, ingestor, store)."""
    logging.basicConfig(
        level=logging.WARNING, format=f"worker {cfg.index}: %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(_pipeline(cfg, progress, conn))


class LatencyProbe:
    """The last reading consumer: counts readings that are stored and through the consumers
    before it (the rule engine), and their publish-to-here latency while ``active``."""

    def __init__(self) -> None:
        self.active = False
        self.processed = 0
        self.latencies: list[float] = []

    async def on_reading(self, reading: Any) -> None:
        self.processed += 1
        if self.active:
            self.latencies.append(time.time() - reading.ts.timestamp())


async def _pipeline(cfg: WorkerConfig, progress: Any, conn: Connection) -> None:
    from server.app import create_app
    from server.settings import load_settings
    from storage.database import Database

    settings = load_settings(
        data_dir=Path(cfg.data_dir),
        database_url=cfg.registry_url,
        mqtt_url=cfg.mqtt_url,
        mqtt_client_id=cfg.client_id,
        mqtt_shared_group=cfg.shared_group,
        influx_url=cfg.influx_url,
    )
    database = Database(settings.app_database_url)
    app = create_app(settings, database)
    runtime = app.state.runtime
    probe = LatencyProbe()
    runtime.ingestor.reading_consumers.append(probe.on_reading)
    stored_counter = runtime.ingestor.metrics.stored
    rejected = runtime.ingestor.metrics.rejected
    connector = runtime.supervisor.connectors[0]
    samples: list[tuple[float, int]] = []
    max_depth = 0

    def stats() -> dict[str, Any]:
        return {
            "stored": int(stored_counter._value.get()),
            "rejected": sum(
                s.value for m in rejected.collect() for s in m.samples if s.name.endswith("_total")
            ),
            "connector": connector.details(),
            "bus_depth": runtime.bus.depth,
            "max_bus_depth": max_depth,
            "pid": os.getpid(),
        }

    try:
        async with app.router.lifespan_context(app):
            conn.send(("ready", os.getpid()))
            profiler = None
            cpu_process, cpu_thread = time.process_time(), time.thread_time()
            if cfg.profile:
                import cProfile

                # Thread CPU time: the loop thread only; aiosqlite's thread is the rest of the process.
                profiler = cProfile.Profile(time.thread_time)
                profiler.enable()
            last = -1
            while True:
                processed = probe.processed
                max_depth = max(max_depth, runtime.bus.depth)
                if processed != last:
                    samples.append((time.monotonic(), processed))
                    progress.value = processed
                    last = processed
                if conn.poll():
                    command = conn.recv()
                    if command == "stop":
                        break
                    if command == "stats":
                        conn.send(("stats", stats()))
                    elif command == "latency_on":
                        probe.latencies.clear()
                        probe.active = True
                        conn.send(("ok", None))
                    elif command == "latency_off":
                        probe.active = False
                        conn.send(("latency", probe.latencies))
                        probe.latencies = []
                await asyncio.sleep(0.02)
            final = stats()
            process_s, thread_s = time.process_time() - cpu_process, time.thread_time() - cpu_thread
            final["cpu_loop_s"], final["cpu_other_threads_s"] = thread_s, process_s - thread_s
            if profiler is not None and cfg.profile:
                profiler.disable()
                profiler.dump_stats(cfg.profile)
                final["profile"] = profile_summary(cfg.profile, process_s, thread_s)
        samples.append((time.monotonic(), probe.processed))
        conn.send(("stopped", {**final, "samples": samples, "rss_kb": _rss_kb(os.getpid())}))
    finally:
        await database.dispose()


PROFILE_BUCKETS = [
    ("connectors/mqtt.py", "MQTT connector (inbox, PUBLISH decoding, acks, topic)"),
    ("paho/", "paho-mqtt (packet framing, socket reads)"),
    ("aiomqtt/", "aiomqtt"),
    ("connectors/payload.py", "payload decoding (JSON, timestamps, names)"),
    ("json/", "payload decoding (JSON, timestamps, names)"),
    ("model/readings.py", "Reading objects"),
    ("pipeline/bus.py", "bus"),
    ("pipeline/", "ingestor (validation, status, live hub, metrics)"),
    ("devices/catalogue.py", "ingestor (validation, status, live hub, metrics)"),
    ("prometheus_client/", "ingestor (validation, status, live hub, metrics)"),
    ("storage/telemetry/", "telemetry store, event-loop side (rows, aiosqlite calls)"),
    ("aiosqlite/", "telemetry store, event-loop side (rows, aiosqlite calls)"),
    ("sqlalchemy/", "registry database (SQLAlchemy)"),
    ("storage/", "registry database (SQLAlchemy)"),
    ("asyncio/", "asyncio event loop"),
    ("selectors.py", "asyncio event loop"),
    ("bench/", "benchmark's own sampling"),
]


def _bucket(filename: str) -> str:
    for fragment, name in PROFILE_BUCKETS:
        if fragment in filename:
            return name
    return "other"


def profile_summary(path: str, process_s: float, thread_s: float) -> dict[str, float]:
    """Share of the worker's CPU per part: the event loop thread from cProfile (built-in calls
    counted with their main caller), the rest of the process as the SQLite thread."""
    import pstats

    stats: Any = pstats.Stats(path)
    raw: dict[Any, Any] = stats.stats
    totals: dict[str, float] = {}
    for (filename, _line, _name), (_cc, _nc, tottime, _ct, callers) in raw.items():
        owner = filename
        if filename == "~" and callers:
            owner = max(callers.items(), key=lambda item: item[1][2])[0][0]
        totals[_bucket(owner)] = totals.get(_bucket(owner), 0.0) + tottime
    profiled = sum(totals.values()) or 1.0
    loop_share = thread_s / process_s if process_s else 1.0
    out = {name: loop_share * t / profiled for name, t in sorted(totals.items(), key=lambda x: -x[1])}
    out["SQLite thread (aiosqlite: INSERTs, commits, WAL)"] = 1 - loop_share
    return out


# --------------------------------------------------------------------------------------------
# Orchestration helpers


def _rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB, from /proc (0, 0 when gone)."""
    rss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def _cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


class CpuMeter:
    """CPU seconds of some processes and how busy the whole machine was, over an interval."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        self.t0 = time.monotonic()
        self.busy0, self.total0 = _machine_jiffies()

    def stop(self) -> dict[str, float]:
        """{name: CPU seconds} plus "wall" (s), "machine busy" (0..1 of all cores) and "ours"."""
        out = {name: _cpu_seconds(pid) - self.start[name] for name, pid in self.pids.items()}
        busy, total = _machine_jiffies()
        wall = time.monotonic() - self.t0
        out["wall"] = wall
        out["machine busy"] = (busy - self.busy0) / max(1, total - self.total0)
        return out


def describe_cpu(cpu: dict[str, float], extra: dict[str, float] | None = None) -> str:
    """ "worker 3.1s (78% of a core), broker ..., machine 100% busy (others ~x cores)" """
    wall = cpu["wall"]
    parts = {k: v for k, v in cpu.items() if k not in ("wall", "machine busy")}
    parts.update(extra or {})
    ours = sum(parts.values())
    cores = len(os.sched_getaffinity(0))
    others = max(0.0, cpu["machine busy"] * cores - ours / wall) if wall > 0 else math.nan
    text = ", ".join(f"{k} {v:.1f}s ({v / wall:.0%})" for k, v in parts.items())
    return f"{text}; machine {cpu['machine busy']:.0%} busy, other work ≈ {others:.1f} cores"


def time_at(samples: Sequence[tuple[float, int]], target: float) -> float:
    """When the (time, count) series reached ``target`` (linear between samples)."""
    counts = [c for _, c in samples]
    i = bisect.bisect_left(counts, target)
    if i >= len(samples):
        return math.nan
    if i == 0:
        return samples[0][0]
    (t0, c0), (t1, c1) = samples[i - 1], samples[i]
    return t0 + (t1 - t0) * (target - c0) / (c1 - c0) if c1 != c0 else t1


def merge(series: Sequence[Sequence[tuple[float, int]]]) -> list[tuple[float, int]]:
    """The sum of several monotonic (time, count) series, sampled at all their times."""
    if len(series) == 1:
        return list(series[0])
    times = sorted({t for s in series for t, _ in s})
    out = []
    for t in times:
        total = 0
        for s in series:
            idx = bisect.bisect_right([x for x, _ in s], t) - 1
            total += s[idx][1] if idx >= 0 else 0
        out.append((t, total))
    return out


@dataclass
class Throughput:
    """One consumer configuration draining a backlog of ``messages``."""

    label: str
    key: str
    messages: int
    consumed: int
    first_t: float
    t10: float
    t90: float
    last_t: float
    publish: PublishResult
    stored_rows: int | None = None  # distinct rows found in the store (None: not a store)
    expected_rows: int | None = None
    rejected: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)
    peak_rss_kb: int = 0
    note: str = ""
    profile: dict[str, float] | None = None
    cpu_threads: dict[str, float] = field(default_factory=dict)

    @property
    def sustained(self) -> float:
        """msg/s between 10% and 90% of the backlog (steady state)."""
        return 0.8 * self.messages / (self.t90 - self.t10) if self.t90 > self.t10 else math.nan

    @property
    def overall(self) -> float:
        """msg/s from the first message to the last."""
        return self.consumed / (self.last_t - self.first_t) if self.last_t > self.first_t else math.nan

    @property
    def cpu_us_per_message(self) -> float:
        """CPU of the consumer process(es), not the broker, per message (robust on a busy machine)."""
        spent = sum(v for k, v in self.cpu_s.items() if k != "broker")
        return spent / self.consumed * 1e6 if self.consumed else math.nan

    @property
    def lost(self) -> int | None:
        if self.stored_rows is None or self.expected_rows is None:
            return None
        return self.expected_rows - self.stored_rows


@dataclass
class LiveResult:
    workers: int
    latency_rate: float
    latency_published: PublishResult
    latencies: list[float]
    overload_rate: float
    overload_published: PublishResult
    rss_start_kb: int
    rss_samples: list[tuple[float, int]]
    rss_peak_kb: int
    hwm_kb: int
    broker_rss_peak_kb: int
    drain_seconds: float
    live_rate: float
    stored_rows: int
    expected_rows: int
    connector: dict[str, Any]
    max_bus_depth: int
    bus_capacity: int
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    publisher_cpu: dict[str, float] = field(default_factory=dict)
    stored_during_overload: int = 0

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return math.nan
        return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


class Bench:
    """Shared state of one benchmark run."""

    def __init__(self, args: argparse.Namespace, console: Console, root: Path) -> None:
        self.args = args
        self.console = console
        self.root = root
        self.ctx = mp.get_context("spawn")
        self.devices = [f"fz-{i:05d}" for i in range(args.devices)]
        self.registry_url = ""
        self.rules_registry_url = ""
        self.versions: dict[str, str] = {}
        self._phase = 0

    def workdir(self, name: str) -> Path:
        self._phase += 1
        path = self.root / f"{self._phase:02d}-{name}"
        path.mkdir(parents=True)
        return path

    # ---- set-up

    def provision(self) -> None:
        from tests.conftest import migrated_sqlite

        directory = self.root / "registry"
        directory.mkdir()
        target = migrated_sqlite(directory)
        self.registry_url = target.app_url
        asyncio.run(_provision(self.registry_url, self.devices))
        if self.args.rules:
            # A second registry, the same plus the rules (the engine loads rules at start-up).
            directory = self.root / "registry-rules"
            directory.mkdir()
            self.rules_registry_url = migrated_sqlite(directory).app_url
            asyncio.run(_provision(self.rules_registry_url, self.devices))
            asyncio.run(_add_rules(self.rules_registry_url, self.args.rules))

    @contextlib.contextmanager
    def broker(self, name: str) -> Iterator[Any]:
        from tests.harness.mosquitto import start_mosquitto

        server = start_mosquitto(self.workdir(name), extra_config=BROKER_CONFIG)
        try:
            yield server
        finally:
            server.stop()

    # ---- progress

    def wait_for(
        self,
        label: str,
        total: int,
        current: Callable[[], int],
        alive: Callable[[], bool],
        on_tick: Callable[[], None] | None = None,
        stall_timeout: float = STALL_TIMEOUT_S,
    ) -> None:
        """Wait until ``current() >= total``; give up after ``stall_timeout`` s without progress."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        last, last_change = -1, time.monotonic()
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as bar:
            task = bar.add_task(label, total=total)
            while True:
                value = current()
                bar.update(task, completed=value)
                if on_tick is not None:
                    on_tick()
                if value >= total:
                    return
                now = time.monotonic()
                if value != last:
                    last, last_change = value, now
                elif now - last_change > stall_timeout:
                    self.console.log(f"[red]{label}: stalled at {value:,}/{total:,}")
                    return
                if not alive():
                    self.console.log(f"[red]{label}: a consumer process died at {value:,}/{total:,}")
                    return
                time.sleep(0.1)

    # ---- phases

    def publish_backlog(self, server: Any, n: int) -> PublishResult:
        pubs = Publishers(self.ctx, server.host, server.port, self.devices, self.args.publishers)
        try:
            pubs.start({"count": n})
            pubs.go()
            result = pubs.wait(timeout=max(120.0, n / 2000))
        finally:
            pubs.kill()
        self.console.log(
            f"  published {result.messages:,} messages at QoS 1 in {result.seconds:.1f}s "
            f"({result.rate:,.0f} msg/s, {self.args.publishers} publisher process(es))"
        )
        return result

    def bare(self, kind: str, n: int) -> Throughput:
        label = {"paho": "bare paho consumer", "aiomqtt": "diag: bare aiomqtt consumer"}[kind]
        target = bare_paho_main if kind == "paho" else bare_aiomqtt_main
        self.console.log(f"[bold]{label}[/] ({n:,} messages)")
        with self.broker(f"bare-{kind}") as server:
            client_id = f"bench-bare-{kind}"
            prepare_session(server.host, server.port, client_id, topic_filter(False))
            published = self.publish_backlog(server, n)
            progress = self.ctx.RawValue(ctypes.c_longlong, 0)
            stop = self.ctx.Event()
            parent, child = self.ctx.Pipe()
            proc = self.ctx.Process(
                target=target, args=(server.host, server.port, client_id, progress, stop, child), daemon=True
            )
            proc.start()
            cpu0 = _cpu_seconds(server.process.pid)
            try:
                self.wait_for(label, n, lambda: progress.value, proc.is_alive)
                stop.set()
                info = _recv(parent, 30)
                proc.join(10)
            finally:
                if proc.is_alive():
                    proc.kill()
            broker_cpu = _cpu_seconds(server.process.pid) - cpu0
        samples = info["samples"]
        result = Throughput(
            label,
            f"bare-{kind}",
            n,
            info["count"],
            samples[0][0],
            time_at(samples, 0.1 * n),
            time_at(samples, 0.9 * n),
            time_at(samples, info["count"]),
            published,
            cpu_s={"consumer": info["cpu"], "broker": broker_cpu},
            peak_rss_kb=info["rss_kb"],
        )
        self._log_throughput(result)
        return result

    def start_workers(
        self,
        server: Any,
        workers: int,
        data_dirs: Sequence[Path],
        influx_url: str | None,
        key: str,
        profile: bool = False,
        registry_url: str | None = None,
    ) -> list[tuple[Any, Connection, Any]]:
        procs = []
        for index in range(workers):
            progress = self.ctx.RawValue(ctypes.c_longlong, 0)
            parent, child = self.ctx.Pipe()
            cfg = WorkerConfig(
                index=index,
                data_dir=str(data_dirs[index]),
                registry_url=registry_url or self.registry_url,
                mqtt_url=server.url,
                client_id=f"bench-{key}-{index}",
                shared_group=SHARED_GROUP if workers > 1 else None,
                influx_url=influx_url,
                profile=str(self.root / f"profile-{key}-{index}.pstats") if profile else None,
            )
            proc = self.ctx.Process(target=pipeline_main, args=(cfg, progress, child), daemon=True)
            proc.start()
            procs.append((proc, parent, progress))
        for _proc, parent, _ in procs:
            kind, info = _recv(parent, WORKER_STARTUP_S)
            if kind != "ready":
                raise RuntimeError(f"worker failed to start: {info}")
        return procs

    def stop_workers(self, procs: list[tuple[Any, Connection, Any]]) -> list[dict[str, Any]]:
        finals = []
        for _, parent, _ in procs:
            parent.send("stop")
        for proc, parent, _ in procs:
            try:
                _kind, info = _recv(parent, 60)
                finals.append(info)
            finally:
                proc.join(30)
                if proc.is_alive():
                    proc.kill()
        return finals

    def pipeline(
        self,
        n: int,
        workers: int,
        store: str = "embedded",
        split_files: bool = False,
        profile: bool = False,
        rules: int = 0,
    ) -> Throughput:
        shared_file = workers > 1 and not split_files
        label = f"pipeline -> {store}, {workers} worker{'s' if workers > 1 else ''}"
        if workers > 1:
            label += ", one shared telemetry file" if shared_file else ", one telemetry file each"
        key = f"pipe-{store}-{workers}" + ("-split" if split_files else "") + ("-profiled" if profile else "")
        if rules:
            label += f", {rules} threshold rules"
            key += f"-rules{rules}"
        self.console.log(f"[bold]{label}[/] ({n:,} messages)")
        influx = None
        influx_url = None
        with contextlib.ExitStack() as stack:
            if store == "influx":
                from tests.harness.influxdb import start_influxdb

                influx = start_influxdb(self.workdir("influxdb"))
                stack.callback(influx.stop)
                influx_url = influx.url
            server = stack.enter_context(self.broker(key))
            base = self.workdir(key)
            data_dirs = [base / (f"worker-{i}" if split_files else "data") for i in range(workers)]
            for d in data_dirs:
                d.mkdir(exist_ok=True)
            for i in range(workers):
                prepare_session(server.host, server.port, f"bench-{key}-{i}", topic_filter(workers > 1))
            published = self.publish_backlog(server, n)
            cpu0 = _cpu_seconds(server.process.pid)
            procs = self.start_workers(
                server,
                workers,
                data_dirs,
                influx_url,
                key,
                profile=profile,
                registry_url=self.rules_registry_url if rules else None,
            )
            cpu_ready = [_cpu_seconds(p.pid) for p, _, _ in procs]
            peak_rss = 0

            def tick() -> None:
                nonlocal peak_rss
                peak_rss = max(peak_rss, sum(_rss_kb(p.pid)[0] for p, _, _ in procs))

            try:
                self.wait_for(
                    label,
                    n,
                    lambda: sum(int(pr.value) for _, _, pr in procs),
                    lambda: all(p.is_alive() for p, _, _ in procs),
                    tick,
                    stall_timeout=600.0 if rules else STALL_TIMEOUT_S,
                )
                time.sleep(0.3)  # let the last acknowledgements out before disconnecting
                cpu = {f"worker {i}": _cpu_seconds(p.pid) - cpu_ready[i] for i, (p, _, _) in enumerate(procs)}
            finally:
                finals = self.stop_workers(procs)
            cpu["broker"] = _cpu_seconds(server.process.pid) - cpu0
            if store == "embedded":
                rows = sum(count_embedded(d / "telemetry.db") for d in dict.fromkeys(data_dirs))
            else:
                assert influx is not None
                rows = count_influx(influx)
        series = [f["samples"] for f in finals]
        merged = merge(series)
        consumed = merged[-1][1]
        first = min(s[1][0] if len(s) > 1 else s[0][0] for s in series)
        result = Throughput(
            label,
            key,
            n,
            consumed,
            first,
            time_at(merged, 0.1 * n),
            time_at(merged, 0.9 * n),
            time_at(merged, min(consumed, n)),
            published,
            stored_rows=rows,
            expected_rows=n,
            rejected=int(sum(f["rejected"] for f in finals)),
            cpu_s=cpu,
            peak_rss_kb=peak_rss,
        )
        if any(f["connector"]["pauses"] for f in finals):
            result.note = f"connector paused reading {sum(f['connector']['pauses'] for f in finals)}x"
        result.cpu_threads = {
            "event loop": sum(f["cpu_loop_s"] for f in finals),
            "SQLite/other threads": sum(f["cpu_other_threads_s"] for f in finals),
        }
        if profile:
            result.profile = finals[0].get("profile")
        self._log_throughput(result)
        return result

    def live(self, workers: int, rate: float) -> LiveResult:
        """(c) latency at ``rate / 2``, then (d) overload at ``2 * rate``, one set of workers."""
        latency_rate, overload_rate = rate / 2, rate * 2
        seconds_c, seconds_d = self.args.latency_seconds, self.args.overload_seconds
        key = f"live-{workers}"
        self.console.log(
            f"[bold]live, {workers} worker(s)[/]: latency at {latency_rate:,.0f} msg/s for {seconds_c:.0f}s, "
            f"then overload at {overload_rate:,.0f} msg/s for {seconds_d:.0f}s"
        )
        with self.broker(key) as server:
            data_dir = self.workdir(key) / "data"
            data_dir.mkdir()
            procs = self.start_workers(server, workers, [data_dir] * workers, None, key)
            try:
                self._wait_subscribed(procs)
                # (c) latency
                for _, parent, _ in procs:
                    parent.send("latency_on")
                    _recv(parent, 30)
                pids = {f"worker {i}": p.pid for i, (p, _, _) in enumerate(procs)}
                pids["broker"] = server.process.pid
                meter = CpuMeter(pids)
                published_c = self._publish_live(server, latency_rate, seconds_c, procs)
                self.wait_for(
                    "latency: draining", published_c.messages, lambda: _stored(procs), _alive(procs)
                )
                cpu_c = meter.stop()
                latencies: list[float] = []
                for _, parent, _ in procs:
                    parent.send("latency_off")
                    latencies += _recv(parent, 30)[1]
                # (d) overload
                rss_start = sum(_rss_kb(p.pid)[0] for p, _, _ in procs)
                before = _stored(procs)
                rss_samples: list[tuple[float, int]] = []
                broker_peak = 0
                t0 = time.monotonic()

                def sample() -> None:
                    nonlocal broker_peak
                    rss_samples.append((time.monotonic() - t0, sum(_rss_kb(p.pid)[0] for p, _, _ in procs)))
                    broker_peak = max(broker_peak, _rss_kb(server.process.pid)[0])

                meter = CpuMeter(pids)
                published_d = self._publish_live(server, overload_rate, seconds_d, procs, sample)
                cpu_d = meter.stop()
                stored_d = _stored(procs) - before
                self.console.log(
                    f"  overload published; {stored_d:,} stored meanwhile "
                    f"({stored_d / cpu_d['wall']:,.0f}/s); "
                    "draining the broker's backlog"
                )
                drain_start = time.monotonic()
                meter = CpuMeter(pids)
                total = published_c.messages + published_d.messages
                self.wait_for("overload: draining", total, lambda: _stored(procs), _alive(procs), sample)
                drained = time.monotonic()
                cpu_drain = meter.stop()
                stats = [_ask(parent, "stats") for _, parent, _ in procs]
                hwm = sum(_rss_kb(p.pid)[1] for p, _, _ in procs)
                live_rate = (_stored(procs) - before) / (drained - t0)
            finally:
                self.stop_workers(procs)
        rows = count_embedded(data_dir / "telemetry.db")
        result = LiveResult(
            workers=workers,
            latency_rate=latency_rate,
            latency_published=published_c,
            latencies=latencies,
            overload_rate=overload_rate,
            overload_published=published_d,
            rss_start_kb=rss_start,
            rss_samples=rss_samples,
            rss_peak_kb=max(r for _, r in rss_samples),
            hwm_kb=hwm,
            broker_rss_peak_kb=broker_peak,
            drain_seconds=drained - drain_start,
            live_rate=live_rate,
            stored_rows=rows,
            expected_rows=total,
            connector=stats[0]["connector"],
            max_bus_depth=max(s["max_bus_depth"] for s in stats),
            bus_capacity=10_000,
            cpu={"latency": cpu_c, "overload": cpu_d, "drain": cpu_drain},
            publisher_cpu={"latency": published_c.cpu_s, "overload": published_d.cpu_s},
            stored_during_overload=stored_d,
        )
        for phase, cpu in result.cpu.items():
            pub = result.publisher_cpu.get(phase)
            self.console.log(f"  CPU, {phase}: " + describe_cpu(cpu, {"publisher": pub} if pub else None))
        self.console.log(
            f"  latency at {latency_rate:,.0f} msg/s ({published_c.rate:,.0f} achieved): "
            f"p50 {result.pct(0.5) * 1000:.0f} ms, p99 {result.pct(0.99) * 1000:.0f} ms, "
            f"max {result.pct(1.0) * 1000:.0f} ms over {len(latencies):,} readings"
        )
        self.console.log(
            f"  overload at {overload_rate:,.0f} msg/s ({published_d.rate:,.0f} achieved): RSS "
            f"{rss_start / 1024:.0f} MiB at start, peak {result.rss_peak_kb / 1024:.0f} MiB; "
            f"stored at {live_rate:,.0f} msg/s while live; {rows:,}/{total:,} messages stored"
        )
        return result

    def _wait_subscribed(self, procs: list[tuple[Any, Connection, Any]]) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(_ask(parent, "stats")["connector"]["subscribed"] for _, parent, _ in procs):
                return
            time.sleep(0.1)
        raise TimeoutError("the workers did not subscribe within 30s")

    def _publish_live(
        self,
        server: Any,
        rate: float,
        seconds: float,
        procs: list[tuple[Any, Connection, Any]],
        on_tick: Callable[[], None] | None = None,
    ) -> PublishResult:
        pubs = Publishers(self.ctx, server.host, server.port, self.devices, self.args.publishers)
        try:
            pubs.start({"rate": rate, "seconds": seconds})
            pubs.go()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                if on_tick is not None:
                    on_tick()
                time.sleep(0.25)
            return pubs.wait(timeout=seconds + 120)
        finally:
            pubs.kill()

    def _log_throughput(self, r: Throughput) -> None:
        lost = "" if r.lost is None else f"; rows in store {r.stored_rows:,}/{r.expected_rows:,}"
        cpu = ", ".join(f"{k} {v:.1f}s" for k, v in r.cpu_s.items())
        self.console.log(
            f"  {r.sustained:,.0f} msg/s sustained (10%-90%), {r.overall:,.0f} msg/s overall{lost}; CPU {cpu}"
        )


def _stored(procs: Sequence[tuple[Any, Connection, Any]]) -> int:
    return sum(int(pr.value) for _, _, pr in procs)


def _alive(procs: Sequence[tuple[Any, Connection, Any]]) -> Callable[[], bool]:
    return lambda: all(p.is_alive() for p, _, _ in procs)


def _ask(conn: Connection, command: str) -> Any:
    conn.send(command)
    _kind, info = _recv(conn, 30)
    return info


def threshold_rule(i: int) -> dict[str, Any]:
    """A Node-RED-style threshold rule on every freezer's temp (never reached by the stream)."""
    level = -10.0 + i * 0.1
    return {
        "name": f"Freezer above {level:.1f} °C",
        "devices": {"type": TYPE_ID},
        "when": [{"type": "telemetry.received", "options": {"metrics": ["temp"]}}],
        "if": [
            {
                "type": "telemetry.threshold",
                "options": {"metric": "temp", "operator": "above", "value": level},
            }
        ],
        "then": [{"type": "alarm.raise", "options": {"alarm_type": f"warm-{i}", "severity": "minor"}}],
    }


async def _add_rules(url: str, count: int) -> None:
    from engine.document import RuleDocument
    from engine.rules import RuleRepository
    from storage.database import Database

    db = Database(url)
    try:
        async with db.tenant(TENANT) as scope:
            repo = RuleRepository(scope)
            for i in range(count):
                rule, version = await repo.create(
                    RuleDocument.model_validate(threshold_rule(i)), author="bench"
                )
                await repo.publish(rule.id, version.version)
    finally:
        await db.dispose()


async def _provision(url: str, device_ids: Sequence[str]) -> None:
    from devices.registry import DeviceRepository, DeviceTypeRepository
    from model.devices import DataType, MetricSpec
    from storage.database import Database
    from storage.tenancy import TenantRepository

    db = Database(url)
    try:
        async with db.platform() as conn:
            await TenantRepository(conn).create(TENANT, name="Ingest benchmark")
        async with db.tenant(TENANT) as scope:
            await DeviceTypeRepository(scope).create(
                TYPE_ID,
                name="Freezer",
                metrics=[
                    MetricSpec(name="temp", data_type=DataType.NUMBER, unit="°C", min=-40, max=10),
                    MetricSpec(name="door_open", data_type=DataType.BOOLEAN),
                    MetricSpec(name="compressor_on", data_type=DataType.BOOLEAN),
                ],
                inactivity_timeout_s=600,
            )
            await DeviceRepository(scope).create_many([{"id": d, "type_id": TYPE_ID} for d in device_ids])
    finally:
        await db.dispose()


def count_embedded(path: Path) -> int:
    """Messages in an embedded telemetry file: distinct (device, ts) with all three metrics."""
    if not path.exists():
        return 0
    conn = sqlite3.connect(path)
    try:
        (complete,) = conn.execute(
            "SELECT count(*) FROM (SELECT device, ts FROM samples WHERE tenant = ? "
            "GROUP BY device, ts HAVING count(*) = 3)",
            (TENANT,),
        ).fetchone()
    finally:
        conn.close()
    return int(complete)


def count_influx(server: Any) -> int:
    body = server.query("SELECT count(temp) FROM telemetry", db=f"flatgigs_{TENANT}")
    series = body["results"][0].get("series") or []
    return int(series[0]["values"][0][1]) if series else 0


# --------------------------------------------------------------------------------------------
# Report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
                break
    load = ""
    with contextlib.suppress(OSError):
        load = ", load average at start " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return f"nproc={len(os.sched_getaffinity(0))}, {cpu}{mem}, {platform.system()} {platform.release()}{load}"


def mosquitto_version() -> str:
    import subprocess

    from tests.harness.mosquitto import mosquitto_binary

    out = subprocess.run([mosquitto_binary(), "-h"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0].strip() if out else "mosquitto (version unknown)"


@dataclass
class Report:
    throughput: list[Throughput]
    live: LiveResult | None
    meta: dict[str, str]
    profiled: Throughput | None = None

    def baseline(self) -> Throughput:
        return next(t for t in self.throughput if t.key == "bare-paho")

    def rows(self) -> list[list[str]]:
        base = self.baseline()
        rows = []
        for t in self.throughput:
            ratio = t.sustained / base.sustained
            lost = "—" if t.lost is None else ("0" if t.lost == 0 else f"**{t.lost:,}**")
            rows.append(
                [
                    t.label,
                    f"{t.messages:,}",
                    _rate(t.sustained),
                    _rate(t.overall),
                    f"{ratio:.2f}",
                    f"{t.sustained / NODE_RED_MSG_S:.2f}",
                    lost,
                    f"{t.cpu_us_per_message:.0f}",
                    f"{base.cpu_us_per_message / t.cpu_us_per_message:.2f}",
                    " / ".join(f"{k} {v:.1f}" for k, v in t.cpu_s.items()),
                    f"{t.peak_rss_kb / 1024:.0f}",
                ]
            )
        return rows

    HEADERS = [
        "consumer",
        "messages",
        "msg/s (10-90%)",
        "msg/s overall",
        "vs bare paho",
        "vs Node-RED 15k",
        "lost",
        "CPU µs/msg",
        "CPU ratio",
        "CPU s",
        "peak RSS MiB",
    ]

    def acceptance(self) -> list[str]:
        base = self.baseline()
        lines = []
        one = next((t for t in self.throughput if t.key == "pipe-embedded-1"), None)
        if one is not None:
            ratio = one.sustained / base.sustained
            ok = ratio >= TARGET_RATIO and one.lost == 0
            lines.append(
                f"pipeline -> embedded, 1 worker: {ratio:.2f}x the bare paho consumer "
                f"({one.sustained:,.0f} vs {base.sustained:,.0f} msg/s), {one.lost} lost -> "
                f"{'PASS' if ok else 'FAIL'} (target ≥ {TARGET_RATIO:.2f}x, none lost)"
            )
        best = max(
            (t for t in self.throughput if t.key.startswith("pipe-embedded") and "rules" not in t.key),
            key=lambda t: t.sustained,
            default=None,
        )
        if best is not None and best is not one:
            ratio = best.sustained / base.sustained
            ok = ratio >= TARGET_RATIO and best.lost == 0
            lines.append(
                f"best embedded configuration ({best.label}): {ratio:.2f}x, {best.lost} lost -> "
                f"{'PASS' if ok else 'FAIL'}"
            )
        if best is not None:
            lines.append(
                f"vs Node-RED 4.1 (≈{NODE_RED_MSG_S:,} msg/s, 100 threshold rules, quoted): "
                f"{best.sustained:,.0f} msg/s -> {'BEATS' if best.sustained > NODE_RED_MSG_S else 'BELOW'}"
                " (ingestion with no rule configured; with rules see the next line)"
            )
        rules = next((t for t in self.throughput if "rules" in t.key), None)
        if rules is not None:
            lines.append(
                f"{rules.label}: {rules.overall:,.0f} msg/s (first to last message; "
                f"{rules.cpu_us_per_message / 1000:,.1f} ms CPU per message) "
                f"vs Node-RED's ≈{NODE_RED_MSG_S:,} "
                f"msg/s with 100 threshold rules -> {'BEATS' if rules.overall > NODE_RED_MSG_S else 'BELOW'}"
            )
        if self.live is not None:
            lv = self.live
            p99 = lv.pct(0.99)
            lines.append(
                f"p99 publish-to-stored latency at half the rate ({lv.latency_rate:,.0f} msg/s): "
                f"{p99 * 1000:.0f} ms -> {'PASS' if p99 < TARGET_P99_S else 'FAIL'} (target < 1 s)"
            )
            end = lv.rss_samples[-1][0]
            last_quarter = [r for t, r in lv.rss_samples if t >= 0.75 * end]
            third_quarter = [r for t, r in lv.rss_samples if 0.5 * end <= t < 0.75 * end]
            growth = (
                (max(last_quarter) - max(third_quarter)) / 1024
                if last_quarter and third_quarter
                else math.nan
            )
            added = (lv.rss_peak_kb - lv.rss_start_kb) / 1024
            bounded = added <= RSS_BOUND_MIB and growth < 5
            lines.append(
                f"memory at 2x the rate ({lv.overload_rate:,.0f} msg/s, then draining): "
                f"RSS {lv.rss_start_kb / 1024:.0f} MiB at start, peak {lv.rss_peak_kb / 1024:.0f} MiB "
                f"(+{added:.0f} MiB; bound {RSS_BOUND_MIB} MiB: bus ≤ 10,000 readings, SQLite page "
                f"cache ≤ 32 MiB, connector ≤ 128 messages + 64 KiB), last quarter vs third quarter "
                f"{growth:+.1f} MiB; {lv.expected_rows - lv.stored_rows} lost -> "
                f"{'PASS' if bounded and lv.stored_rows == lv.expected_rows else 'FAIL'}"
            )
        return lines


def _rate(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def print_report(console: Console, report: Report) -> None:
    table = Table(title="MQTT ingestion: backlog drained, msg/s (ratios vs the bare paho consumer)")
    for i, header in enumerate(Report.HEADERS):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in report.rows():
        table.add_row(*row)
    console.print(table)
    for line in report.acceptance():
        console.print("  " + line)
    if report.profiled is not None and report.profiled.profile:
        console.print(f"Where a worker's CPU goes ({report.profiled.label}, cProfile):")
        for line in profile_lines(report.profiled):
            console.print("  " + line)


def profile_lines(t: Throughput) -> list[str]:
    assert t.profile is not None
    return [f"{share:6.1%}  {name}" for name, share in t.profile.items() if share >= 0.005]


def write_markdown(path: Path, report: Report) -> None:
    meta = report.meta
    lines = [
        "# MQTT ingestion benchmark",
        "",
        f"- Date: {meta['date']}",
        f"- Machine: {meta['machine']}",
        f"- Python {platform.python_version()}; paho-mqtt {package_version('paho-mqtt')}, "
        f"aiomqtt {package_version('aiomqtt')}, aiosqlite {package_version('aiosqlite')}; {meta['mosquitto']}"
        + (f"; {meta['influxdb']}" if meta.get("influxdb") else ""),
        f"- N = {meta['messages']} messages per throughput run, {meta['devices']} devices of one tenant "
        "(type with 3 metrics: temp, door_open, compressor_on), 3 samples per message",
        f"- Command: `{meta['command']}`",
        f"- Total run time: {meta['runtime']}",
        "",
        "## Throughput (backlog of N QoS 1 messages drained by the consumer)",
        "",
        "| " + " | ".join(Report.HEADERS) + " |",
        "|---|" + "---:|" * (len(Report.HEADERS) - 1),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in report.rows()]
    notes = []
    for t in report.throughput:
        parts = [t.note] if t.note else []
        if t.cpu_threads and t.consumed:
            parts.append(
                "CPU per message: "
                + " + ".join(f"{k} {v / t.consumed * 1e6:.0f} µs" for k, v in t.cpu_threads.items())
            )
        if parts:
            notes.append(f"- {t.label}: {'; '.join(parts)}")
    lines += ["", *notes] if notes else []
    if report.live is not None:
        lv = report.live
        lines += [
            "",
            f"## Live: latency and overload ({lv.workers} worker, embedded store)",
            "",
            "| measure | value |",
            "|---|---:|",
            f"| latency phase: target rate (half the pipeline's) | {lv.latency_rate:,.0f} msg/s |",
            f"| latency phase: achieved publish rate | {lv.latency_published.rate:,.0f} msg/s "
            f"({lv.latency_published.messages:,} messages) |",
            f"| publish-to-stored latency p50 | {lv.pct(0.5) * 1000:,.0f} ms |",
            f"| publish-to-stored latency p90 | {lv.pct(0.9) * 1000:,.0f} ms |",
            f"| publish-to-stored latency p99 | {lv.pct(0.99) * 1000:,.0f} ms |",
            f"| publish-to-stored latency max | {lv.pct(1.0) * 1000:,.0f} ms |",
            f"| overload: target rate (twice the pipeline's) | {lv.overload_rate:,.0f} msg/s |",
            f"| overload: achieved publish rate | {lv.overload_published.rate:,.0f} msg/s "
            f"({lv.overload_published.messages:,} messages) |",
            f"| overload: worker RSS at start | {lv.rss_start_kb / 1024:,.0f} MiB |",
            f"| overload: worker peak RSS (sampled) / VmHWM | {lv.rss_peak_kb / 1024:,.0f} / "
            f"{lv.hwm_kb / 1024:,.0f} MiB |",
            "| overload: broker peak RSS (the backlog lives there) | "
            f"{lv.broker_rss_peak_kb / 1024:,.0f} MiB |",
            f"| overload: connector max held / queue limit, pauses | {lv.connector['max_held_seen']} / "
            f"{lv.connector['queue_limit']}, {lv.connector['pauses']:,} |",
            f"| overload: max bus depth / capacity | {lv.max_bus_depth:,} / {lv.bus_capacity:,} |",
            f"| stored while live, overload start to drained | {lv.live_rate:,.0f} msg/s |",
            f"| backlog drained after publishing stopped in | {lv.drain_seconds:,.1f} s |",
            "| messages stored / published (latency + overload) | "
            f"{lv.stored_rows:,} / {lv.expected_rows:,} |",
            "",
            "RSS of the worker during overload (s since start: MiB):",
            "",
            "    "
            + ", ".join(
                f"{t:.0f}: {r / 1024:.0f}" for t, r in lv.rss_samples[:: max(1, len(lv.rss_samples) // 16)]
            ),
        ]
    if report.profiled is not None and report.profiled.profile:
        t = report.profiled
        lines += [
            "",
            "## Where a worker's CPU goes",
            "",
            f"A separate run of {t.label} under cProfile (thread CPU time of the event loop; the rest "
            f"of the process's CPU is aiosqlite's SQLite thread), {t.messages:,} messages, "
            f"{t.cpu_us_per_message:.0f} µs/message with the profiler on. The profiler inflates the "
            "event loop's Python calls (not the SQLite thread's C code), so the SQLite share here is "
            "too small: the split without profiler is in the notes under the throughput table.",
            "",
            "| share of the worker's CPU | part |",
            "|---:|---|",
        ]
        lines += [f"| {share:.1%} | {name} |" for name, share in (t.profile or {}).items() if share >= 0.005]
    lines += ["", "## Acceptance", ""]
    lines += [f"- {line}" for line in report.acceptance()]
    lines += ["", "## Method", "", *[f"- {m}" for m in METHOD], ""]
    if meta.get("extra"):
        lines += [meta["extra"], ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


METHOD = [
    "Each throughput run starts a fresh private Mosquitto (persistence off, `max_queued_messages` "
    "5,000,000). The consumer's MQTT 5 session (clean start off, 1-day expiry, QoS 1 subscription "
    "to `fg/+/+/telemetry`, or `$share/ingest/fg/+/+/telemetry` for several workers) is created "
    "first and left; the publisher processes then put N messages into it (each PUBLISH at QoS 1, "
    "acknowledged by the broker) and exit; then the consumer connects and drains the backlog. "
    "Publisher and consumer never compete for the 2 cores; broker and consumer do.",
    "msg/s (10-90%) is the steady-state rate between 10% and 90% of the backlog consumed (for "
    "the pipeline: readings stored and through every reading consumer, the rule engine included); "
    "overall is from the first message to the last, start-up (first catalogue loads, 1,000 "
    "devices going online) included. CPU µs/msg is the consumer process's CPU (the worker's: "
    "event loop and SQLite thread; not the broker's) per message: on this shared machine it "
    "varies far less than msg/s, which depends on how much of the 2 cores other work leaves.",
    "The bare paho consumer is paho-mqtt 2 (MQTT 5, default Receive Maximum, on_message only "
    "counts, paho acknowledges). The bare aiomqtt consumer iterates `client.messages` and counts.",
    "The pipeline workers are separate processes, each a flatgigs app from "
    "`server.app.create_app` run through its lifespan (the real `Runtime`: MqttConnector with "
    "ack-after-hand-over, Receive Maximum 64 and read pausing, ReadingBus of 10,000, Ingestor "
    "batches of 500 with catalogue validation, status tracking, dead letters and the live hub "
    "with no subscriber, the rule engine as a reading consumer (no rule, except in the rules row: "
    "N threshold rules `temp above L` on every freezer, L never reached), EmbeddedTelemetryStore "
    "in its own SQLite file, WAL, synchronous=NORMAL). The registry is a migrated SQLite file with "
    "the tenant, the device type and the devices.",
    "Lost = messages published minus messages found complete in the store after the run "
    "(embedded: distinct (device, ts) keys with all 3 metrics; InfluxDB: `count(temp)`). Every "
    "message has a distinct (device, ts), so redeliveries cannot hide a loss.",
    "Latency: a reading consumer appended last to `Ingestor.reading_consumers` (called after the "
    "batch is committed and after the rule engine) records `time.time() - ts`, `ts` being the "
    "publisher's clock when it built the message (same machine, same clock). Publishing is live "
    "at half the 1-worker backlog rate, so publisher, broker and worker share the 2 cores.",
    "Overload: publishing at twice the 1-worker backlog rate; RSS sampled from /proc every "
    "0.25 s; afterwards the broker's backlog drains and the store is counted.",
    "The publishers are a minimal MQTT 3.1.1 client written for the benchmark (pre-encoded QoS 1 "
    "PUBLISH packets sent in chunks, up to 20,000 unacknowledged) so that publishing costs as "
    "little CPU as possible; each publisher connection carries the messages of its share of "
    "the devices, round robin.",
]


# --------------------------------------------------------------------------------------------
# Entry point


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200_000, help="backlog per throughput run")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument(
        "--workers",
        type=int,
        choices=(1, 2),
        default=2,
        help="measure the pipeline with 1 and up to this many",
    )
    parser.add_argument("--publishers", type=int, default=1, help="publisher processes")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--overload-seconds", type=float, default=40.0)
    parser.add_argument(
        "--repeat", type=int, default=2, help="interleaved throughput runs per configuration (median)"
    )
    parser.add_argument(
        "--only", default="", help="comma list of: bare,aiomqtt,pipe1,pipe2,split,live,influx,rules"
    )
    parser.add_argument("--quick", action="store_true", help="small N and short live phases")
    parser.add_argument("--profile", action="store_true", help="cProfile the 1-worker embedded run")
    parser.add_argument("--rules", type=int, default=100, help="threshold rules for the rules row (0: none)")
    parser.add_argument("--rules-messages", type=int, default=300, help="backlog of the rules row")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.messages = min(args.messages, 40_000)
        args.latency_seconds = min(args.latency_seconds, 8.0)
        args.overload_seconds = min(args.overload_seconds, 15.0)
        args.rules_messages = min(args.rules_messages, 150)
        args.repeat = 1
    return args


def _median(runs: list[Throughput]) -> Throughput:
    ordered = sorted(runs, key=lambda t: t.sustained)
    chosen = ordered[len(ordered) // 2]
    if len(runs) > 1:
        chosen.note = (
            (chosen.note + "; " if chosen.note else "")
            + "median of "
            + ", ".join(f"{t.sustained:,.0f}" for t in runs)
        )
        lost = [t.lost for t in runs if t.lost]
        if lost:
            chosen.note += f"; LOST in some run: {lost}"
    return chosen


def _raise_on_term(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_term)
    console = Console() if sys.stdout.isatty() else Console(width=200)
    started = time.perf_counter()
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine_facts = machine()
    root = Path(tempfile.mkdtemp(prefix="flatgigs-bench-ingest-"))
    only = {s.strip() for s in args.only.split(",") if s.strip()}

    def wanted(name: str) -> bool:
        return not only or name in only

    ok = False
    try:
        bench = Bench(args, console, root)
        console.log(f"registry: {args.devices:,} devices in tenant {TENANT} ({root})")
        bench.provision()
        runs: dict[str, list[Throughput]] = {}
        order = ["bare", "aiomqtt", "pipe1"] + (["pipe2", "split"] if args.workers >= 2 else [])
        for _ in range(args.repeat):
            # Interleaved, so that a slow spell of the shared machine hits every configuration.
            for name in order:
                if name != "bare" and not wanted(name):
                    continue
                if name == "bare":
                    result = bench.bare("paho", args.messages)
                elif name == "aiomqtt":
                    result = bench.bare("aiomqtt", args.messages)
                elif name == "pipe1":
                    result = bench.pipeline(args.messages, 1)
                elif name == "pipe2":
                    result = bench.pipeline(args.messages, 2)
                else:
                    result = bench.pipeline(args.messages, 2, split_files=True)
                runs.setdefault(name, []).append(result)
        if wanted("influx"):
            runs["influx"] = [bench.pipeline(args.messages, 1, store="influx")]
        if args.rules and wanted("rules"):
            runs["rules"] = [bench.pipeline(args.rules_messages, 1, rules=args.rules)]
        medians = {name: _median(r) for name, r in runs.items()}
        throughput = list(medians.values())
        profiled = None
        if args.profile:
            profiled = bench.pipeline(min(args.messages, 60_000), 1, profile=True)
        live = None
        if wanted("live"):
            pipe1 = runs.get("pipe1")
            rate = medians["pipe1"].sustained if pipe1 else 5000.0
            live = bench.live(1, rate)
        runtime = time.perf_counter() - started
        meta = {
            "date": date,
            "machine": machine_facts,
            "mosquitto": mosquitto_version(),
            "messages": f"{args.messages:,}",
            "devices": f"{args.devices:,}",
            "command": "python -m bench.ingest " + " ".join(sys.argv[1:] if argv is None else argv),
            "runtime": f"{runtime / 60:.1f} min ({runtime:.0f} s)",
        }
        if wanted("influx"):
            meta["influxdb"] = "InfluxDB 1.6.7 (Debian; private influxd)"
        report = Report(throughput, live, meta, profiled)
        print_report(console, report)
        write_markdown(args.output, report)
        console.print(f"total run time {meta['runtime']}; results written to {args.output}")
        ok = True
        return 0
    finally:
        if ok and not args.profile:
            shutil.rmtree(root, ignore_errors=True)
        else:
            console.log(f"work files kept in {root}")


if __name__ == "__main__":
    sys.exit(main())
