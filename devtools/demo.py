"""A simulated fleet for `make demo`: fake Ollama hosts on loopback plus a simulated sidecar each.

    python -m devtools.demo [--hub http://127.0.0.1:8000] [--interval 3]

Run beside a hub (the launcher's `demo` starts both) with the hub's environment: it uses the hub's
database to keep its sidecar tokens (one per simulated host) across runs and to register the hosts whose sidecar is silent.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import django
import httpx

from devtools.fake_ollama import FakeFleet

logger = logging.getLogger("devtools.demo")
GIB = 1024**3
TOKEN_FILE = "demo-sidecar-tokens.json"


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

    def resources(self) -> dict[str, Any]:
        """The figures a real sidecar's collect_resources() would read on this machine."""
        ram_total = self.ram_gib * GIB
        figures: dict[str, Any] = {
            "cpu_percent": round(self.cpu, 1),
            "ram_used_bytes": int(ram_total * self.ram_used),
            "ram_total_bytes": ram_total,
            "vram_used_bytes": None,
            "vram_total_bytes": None,
            "gpus": [],
        }
        if self.vram_gib:
            vram_total = self.vram_gib * GIB
            vram_used = int(vram_total * self.vram_used)
            figures.update(vram_used_bytes=vram_used, vram_total_bytes=vram_total)
            figures["gpus"] = [
                {
                    "index": 0,
                    "name": "Simulated GPU",
                    "memory_used_bytes": vram_used,
                    "memory_total_bytes": vram_total,
                    "utilization_percent": round(self.cpu, 1),
                }
            ]
        return figures


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


def sidecar_tokens(path: Path, hosts: list[str]) -> dict[str, str]:
    """One sidecar token per simulated host (a sidecar token reports for its own host only), kept
    in `path` (JSON, 0600) while the hub still accepts them; missing or refused ones are replaced."""
    from registry import services
    from registry.models import Token

    try:
        kept = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        kept = {}
    tokens = {}
    for host in hosts:
        raw = kept.get(host) if isinstance(kept, dict) else None
        token = services.authenticate_token(raw) if isinstance(raw, str) else None
        if token is None or token.scope != Token.Scope.SIDECAR or token.host not in ("", host):
            raw = services.create_token(Token.Scope.SIDECAR, f"demo {host}", host=host)[1]
        tokens[host] = raw
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(tokens, out)
    path.chmod(0o600)  # also when an older file had looser permissions
    return tokens


def serve(fleet: FakeFleet) -> dict[str, str]:
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


def register_silent_hosts(urls: dict[str, str]) -> None:
    from registry import services

    for host in FLEET:
        if not host.reports:
            try:
                services.register_endpoint(urls[host.name], name=host.name)
            except services.RegistryError:  # registered by an earlier demo run
                continue


class Demo:
    """Report for every simulated host each interval until SIGINT/SIGTERM."""

    def __init__(self, hub: str, interval: float) -> None:
        self.hub, self.interval = hub, interval
        self.running = True

    def stop(self, signum: int, frame: object) -> None:
        self.running = False

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.running and time.monotonic() < deadline:
            time.sleep(0.1)

    def wait_for_hub(self) -> None:
        while self.running:
            try:
                if httpx.get(f"{self.hub}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            self.sleep(0.5)

    def report_all(self, client: httpx.Client, tokens: dict[str, str], urls: dict[str, str]) -> None:
        from agentcom_sidecar.agent import build_report, send_report

        for host in FLEET:
            if not host.reports:
                continue
            host.step()
            # `host` names the machine; its Ollama answers at a loopback address.
            report = build_report(
                host.resources(), hostname=f"{host.name}.demo", host=host.name, ollama_url=urls[host.name]
            )
            result = send_report(client, self.hub, tokens[host.name], report)
            if result.outcome != "ok":
                logger.warning("demo report for %s: %s %s", host.name, result.outcome, result.detail)

    def run(self, tokens: dict[str, str]) -> None:
        fleet = FakeFleet().start()
        try:
            urls = serve(fleet)
            self.wait_for_hub()
            print(f"[demo] {len(urls)} fake Ollama hosts; control API at {fleet.control_url}", flush=True)
            register_silent_hosts(urls)
            with httpx.Client() as client:
                while self.running:
                    self.report_all(client, tokens, urls)
                    self.sleep(self.interval)
        finally:
            fleet.stop()


def main(argv: list[str] | None = None) -> None:
    default_hub = f"http://{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--hub", default=default_hub)
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between simulated reports")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[demo] %(message)s")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentcom_site.settings")
    django.setup()
    from django.conf import settings

    demo = Demo(args.hub, args.interval)
    signal.signal(signal.SIGTERM, demo.stop)
    signal.signal(signal.SIGINT, demo.stop)
    demo.run(sidecar_tokens(Path(settings.RUN_DIR) / TOKEN_FILE, [h.name for h in FLEET if h.reports]))


if __name__ == "__main__":
    main()
