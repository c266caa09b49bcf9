"""A real HTTP receiver on loopback for alert tests: records every request, can fail or hang."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival

    @property
    def json(self) -> dict:
        return json.loads(self.body)

    def signature_valid(self, secret: str) -> bool:
        """Verify as the README tells receivers to."""
        timestamp = self.headers["X-AgentCom-Timestamp"]
        expected = hmac.new(secret.encode(), timestamp.encode() + b"." + self.body, hashlib.sha256).hexdigest()
        fresh = abs(time.time() - int(timestamp)) < 300
        return fresh and hmac.compare_digest("sha256=" + expected, self.headers["X-AgentCom-Signature"])


class Receiver:
    """`mode`: "ok" (204), "fail" (500 for the next `failures` requests, then 204), "hang" (never answers)."""

    def __init__(self, mode: str = "ok", failures: int = 0):
        self.mode, self.failures = mode, failures
        self.requests: list[Received] = []
        self.answered = 0
        self.cond = threading.Condition()
        self.release = threading.Event()  # ends hanging requests at teardown
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.cond:
                    receiver.requests.append(Received(self.path, dict(self.headers), body, time.monotonic()))
                    receiver.cond.notify_all()
                    fail = receiver.mode == "fail" and receiver.failures > 0
                    if fail:
                        receiver.failures -= 1
                if receiver.mode == "hang":
                    receiver.release.wait(30)
                    return
                self.send_response(500 if fail else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                with receiver.cond:
                    receiver.answered += 1
                    receiver.cond.notify_all()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        """Wait until at least `count` requests arrived (or the timeout passed); return them all."""
        with self.cond:
            self.cond.wait_for(lambda: len(self.requests) >= count, timeout=timeout)
            return list(self.requests)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
