"""A simulated fleet for `make demo`: fake Ollama hosts on loopback plus a simulated sidecar each."""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from dataclasses import dataclass, field

import httpx
from django.core.management.base import BaseCommand

from registry import services
from registry.fake_ollama import FakeFleet

logger = logging.getLogger(__name__)
GIB = 1024**3


@dataclass
class DemoHost:
    name: str
    models: list[str]
    loaded: list[str] = field(default_factory=list)
    mode: str = "healthy"
    options: dict = field(default_factory=dict)
    ram_gib: int = 64
    vram_gib: int | None = 24
    reports: bool = True  # a host whose sidecar is silent shows resources as unknown
    cpu: float = 20.0
    ram_used: float = 0.3
    vram_used: float = 0.3

    def step(self) -> None:
        """Random walk, so the bars move like a busy fleet's."""
        self.cpu = min(99.0, max(1.0, self.cpu + random.uniform(-12, 12)))
        self.ram_used = min(0.95, max(0.05, self.ram_used + random.uniform(-0.05, 0.05)))
        self.vram_used = min(0.98, max(0.02, self.vram_used + random.uniform(-0.06, 0.06)))


FLEET = [
    DemoHost("gpu-a100-1", ["llama3:8b", "mistral:7b", "nomic-embed-text:latest"], ["llama3:8b"], vram_gib=80),
    DemoHost(
        "gpu-a100-2",
        ["llama3:70b", "qwen2.5:14b"],
        ["llama3:70b", "qwen2.5:14b"],
        ram_gib=256,
        vram_gib=160,
        cpu=70,
        vram_used=0.85,
    ),
    DemoHost("gpu-4090-1", ["llama3:8b", "phi3:3.8b"], ["phi3:3.8b"], mode="flapping", options={"period": 20.0}),
    DemoHost("gpu-4090-2", ["llama3:8b", "codellama:13b"], mode="slow", options={"delay": 0.4}),
    DemoHost("cpu-box-1", ["llama3:8b", "tinyllama:1.1b"], ["tinyllama:1.1b"], vram_gib=None, ram_gib=32),
    DemoHost("gpu-old-1", ["mistral:7b"], mode="refused", reports=False),
]


class Command(BaseCommand):
    help = "Run a simulated fleet (fake Ollama servers + simulated sidecars) against a running hub."

    def add_arguments(self, parser):
        default_hub = f"http://{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
        parser.add_argument("--hub", default=default_hub)
        parser.add_argument("--interval", type=float, default=3.0, help="seconds between simulated reports")

    def handle(self, *args, hub: str, interval: float, **options):
        self.running = True
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        fleet = FakeFleet().start()
        try:
            urls = self._serve(fleet)
            token = services.create_token("sidecar", "demo fleet")[1]
            self._wait_for_hub(hub)
            self.stdout.write(f"[demo] {len(urls)} fake Ollama hosts; control API at {fleet.control_url}")
            with httpx.Client(base_url=hub, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
                self._register_silent_hosts(urls)
                while self.running:
                    self._report_all(client, urls)
                    self._sleep(interval)
        finally:
            fleet.stop()

    def _stop(self, signum, frame) -> None:
        self.running = False

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.running and time.monotonic() < deadline:
            time.sleep(0.1)

    def _serve(self, fleet: FakeFleet) -> dict[str, str]:
        """Serve each host on its own loopback address when the OS allows it (Linux), else on ports."""
        urls = {}
        for index, host in enumerate(FLEET, start=1):
            spec = {"models": host.models, "loaded": host.loaded, "mode": host.mode, **host.options}
            try:
                address, port = fleet.add(host=f"127.0.77.{index}", port=11434, **spec)
            except OSError:
                address, port = fleet.add(host="127.0.0.1", port=0, **spec)
            urls[host.name] = f"http://{address}:{port}"
        return urls

    def _wait_for_hub(self, hub: str) -> None:
        while self.running:
            try:
                if httpx.get(f"{hub}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            self._sleep(0.5)

    def _register_silent_hosts(self, urls: dict[str, str]) -> None:
        for host in FLEET:
            if not host.reports:
                try:
                    services.register_endpoint(urls[host.name], name=host.name)
                except services.RegistryError:  # registered by an earlier demo run
                    continue

    def _report_all(self, client: httpx.Client, urls: dict[str, str]) -> None:
        for host in FLEET:
            if not host.reports:
                continue
            host.step()
            ram_total = host.ram_gib * GIB
            body = {
                "host": host.name,  # the machine's name; its Ollama answers at a loopback address
                "hostname": f"{host.name}.demo",
                "ollama_url": urls[host.name],
                "cpu_percent": round(host.cpu, 1),
                "ram_used_bytes": int(ram_total * host.ram_used),
                "ram_total_bytes": ram_total,
                "vram_used_bytes": None,
                "vram_total_bytes": None,
                "gpus": [],
            }
            if host.vram_gib:
                vram_total = host.vram_gib * GIB
                body.update(vram_used_bytes=int(vram_total * host.vram_used), vram_total_bytes=vram_total)
                body["gpus"] = [
                    {
                        "index": 0,
                        "name": "Simulated GPU",
                        "memory_used_bytes": body["vram_used_bytes"],
                        "memory_total_bytes": vram_total,
                        "utilization_percent": round(host.cpu, 1),
                    }
                ]
            try:
                answer = client.post("/api/v1/sidecar/report", json=body)
                if answer.status_code != 200:
                    logger.warning("demo report for %s refused: %s", host.name, answer.text)
            except httpx.HTTPError as exc:
                logger.warning("demo report for %s failed: %s", host.name, exc)
