"""A real HTTP server on this machine that receives webhooks in tests, and the receiving
side's checks written independently of the product's signing code (hmac, hashlib and
base64 here, as a customer would write them).

The server runs in its own thread, so worker processes and the test's own event loop can
both reach it. `plan` says how to answer each request in turn (status, extra headers,
delay); after the plan runs out every request gets 200. `connections` counts accepted TCP
connections, whatever happened on them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    body: bytes = b"ok"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, receiver: Receiver, address: tuple[str, int], family: int) -> None:
        self.address_family = family
        self.receiver = receiver
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.receiver.lock:
            self.receiver.connections += 1
        super().process_request(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        receiver = self.server.receiver
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        received = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        with receiver.lock:
            delivery_id = received.headers.get("x-vivix-delivery-id")
            seen = sum(
                1 for r in receiver.received if r.headers.get("x-vivix-delivery-id") == delivery_id
            )
            receiver.received.append(received)
            if seen < receiver.failures_per_delivery:
                answer = Answer(500, body=b"not yet")
            else:
                answer = receiver.plan.pop(0) if receiver.plan else Answer()
        if answer.delay_s:
            time.sleep(answer.delay_s)
        try:
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)
        except OSError:
            pass  # the sender gave up (timeout) and closed the connection

    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Receiver:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.plan: list[Answer] = []
        # Each delivery id's first N requests get 500 (then the plan applies).
        self.failures_per_delivery = 0
        self.connections = 0
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = _Server(self, (host, port), family)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/hook"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def hooks(self) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == "/hook"]

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def verify_vivix_signature(secret: str, received: Received) -> bool:
    """`X-Vivix-Signature: sha256=<hex HMAC-SHA256>` keyed with the whole `whsec_…`."""
    expected = "sha256=" + hmac.new(secret.encode(), received.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, received.headers["x-vivix-signature"])


def standard_signature_entries(secret: str, received: Received) -> list[bool]:
    """For each `webhook-signature` entry: does it verify with `secret` (Standard
    Webhooks: key = base64-decoded part after `whsec_`, content = id.timestamp.body)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = (
        f"{received.headers['webhook-id']}.{received.headers['webhook-timestamp']}.".encode()
        + received.body
    )
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    results = []
    for entry in received.headers["webhook-signature"].split(" "):
        version, _, signature = entry.partition(",")
        results.append(version == "v1" and hmac.compare_digest(signature, expected))
    return results


async def wait_until(predicate: Any, within_s: float = 30.0, what: str = "condition") -> None:
    import asyncio

    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
