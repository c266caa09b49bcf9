"""Fakes for the sidecar tests: an NVML module, and a real HTTP server playing the hub and a local Ollama."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

GiB = 1024**3


class FakeNVMLError(Exception):
    """Stands in for pynvml.NVMLError."""


def fake_nvml(gpus: list[dict[str, Any]], init_error: bool = False) -> SimpleNamespace:
    """Return a module-like object that answers the NVML calls the sidecar makes."""

    def init() -> None:
        if init_error:
            raise FakeNVMLError("NVML Shared Library Not Found")

    def utilization(handle: int) -> SimpleNamespace:
        if gpus[handle]["util"] is None:
            raise FakeNVMLError("Not Supported")
        return SimpleNamespace(gpu=gpus[handle]["util"], memory=0)

    return SimpleNamespace(
        NVMLError=FakeNVMLError,
        nvmlInit=init,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetName=lambda handle: gpus[handle]["name"],
        nvmlDeviceGetMemoryInfo=lambda handle: SimpleNamespace(
            used=gpus[handle]["used"], total=gpus[handle]["total"], free=0
        ),
        nvmlDeviceGetUtilizationRates=utilization,
    )


TWO_GPUS = [
    # Older nvidia-ml-py returns bytes for the name, newer returns str.
    {"name": b"NVIDIA GeForce RTX 4090", "used": 6 * GiB, "total": 24 * GiB, "util": 37},
    {"name": "NVIDIA A100-SXM4-80GB", "used": 10 * GiB, "total": 80 * GiB, "util": None},
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# One answer of the fake hub to a report: status, extra headers, JSON body.
Answer = tuple[int, dict[str, str], dict[str, Any]]


def overloaded(retry_after: str, status: int = 503) -> Answer:
    """The hub's answer when it is over capacity."""
    return status, {"Retry-After": retry_after}, {"error": "overloaded", "detail": "too many reports; retry later"}


class FakeHub:
    """A real HTTP server that plays the hub and a local Ollama, recording what it receives.

    Reports are answered with `answers` in order, then with `report_status`.
    """

    def __init__(self, report_status: int = 200, answers: Iterable[Answer] = ()) -> None:
        self.report_status = report_status
        self.answers = list(answers)
        self.reports: list[dict[str, Any]] = []
        self.received_at: list[float] = []  # time.monotonic() of each report
        self.authorizations: list[str | None] = []
        self.arrived = threading.Condition()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/api/version":
                    self._reply((200, {}, {"version": "0.5.1"}))
                else:
                    self._reply((404, {}, {"error": "not_found", "detail": "no such page"}))

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/api/v1/sidecar/report":
                    self._reply((404, {}, {"error": "not_found", "detail": "no such page"}))
                    return
                with hub.arrived:
                    hub.received_at.append(time.monotonic())
                    hub.authorizations.append(self.headers.get("Authorization"))
                    hub.reports.append(json.loads(body))
                    answer = hub.next_answer()
                    hub.arrived.notify_all()
                self._reply(answer)

            def _reply(self, answer: Answer) -> None:
                status, headers, payload = answer
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def next_answer(self) -> Answer:
        if self.answers:
            return self.answers.pop(0)
        if self.report_status == 401:
            return 401, {}, {"error": "unauthorized", "detail": "invalid token"}
        return self.report_status, {}, {"ok": True}

    def wait_for_reports(self, count: int, timeout: float = 30) -> bool:
        """Block until `count` reports arrived; False after `timeout` seconds."""
        with self.arrived:
            return self.arrived.wait_for(lambda: len(self.reports) >= count, timeout=timeout)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
