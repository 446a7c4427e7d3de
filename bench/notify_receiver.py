"""The webhook receiver of bench/notify.py: answers every POST with 200 at once and counts them.

A threaded http.server on 127.0.0.1 (a thread per connection, like the test harness's
HttpReceiver) with a listen backlog large enough for 16 senders connecting at once (the
default of 5 drops connections under that load). ``GET /count`` answers how many POSTs arrived.
It runs in its own process (``start_process``), like any real receiver, or in a thread of the
caller (``start_thread``). Deliberately light on imports: a spawned process imports this module.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from typing import Any

LOOPBACK = "127.0.0.1"
_ANSWER = b'{"ok": true}'


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self) -> None:
        super().__init__((LOOPBACK, 0), _Handler)
        self.lock = threading.Lock()
        self.count = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with self.server.lock:
            self.server.count += 1
        self._answer(_ANSWER)

    def do_GET(self) -> None:
        with self.server.lock:
            count = self.server.count
        self._answer(json.dumps({"count": count}).encode())

    def _answer(self, payload: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_: Any) -> None:
        pass


def _serve(conn: Connection) -> None:
    server = _Server()
    conn.send(server.server_address[1])
    server.serve_forever()


def start_process() -> tuple[int, Callable[[], None]]:
    """A receiver in a child process: its port and a function that stops it."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve, args=(child,), name="bench-webhook-receiver", daemon=True)
    process.start()
    if not parent.poll(60):
        process.terminate()
        raise RuntimeError("the benchmark's webhook receiver did not start")
    port = int(parent.recv())

    def stop() -> None:
        process.terminate()
        process.join(10)

    return port, stop


def start_thread() -> tuple[int, Callable[[], None]]:
    """A receiver in a thread of this process: its port and a function that stops it."""
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, name="bench-webhook-receiver", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return int(server.server_address[1]), stop
