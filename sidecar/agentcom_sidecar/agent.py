"""Sidecar agent: report this host's resources and its local Ollama to the hub.

Runs on GPU hosts with only httpx + websockets + psutil + pydantic (+ nvidia-ml-py when present);
imports no Django.

    AGENTCOM_TOKEN=... agentcom-sidecar --hub https://hub.example:8000
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import ipaddress
import json
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
from pydantic import ValidationError

from agentcom_sidecar.report import DEFAULT_OLLAMA_PORT, SidecarReport, check_ollama_url, host_for_url, split_host

logger = logging.getLogger(__name__)

REPORT_PATH = "/api/v1/sidecar/report"
SOCKET_PATH = "/ws/sidecar/"
HUB_TIMEOUT_SECONDS = 10.0
# Ollama runs on this very host: if it takes longer than this, it is not answering.
OLLAMA_TIMEOUT_SECONDS = 2.0
TOKEN_ENV = "AGENTCOM_TOKEN"
GPU_NAME_MAX_CHARS = 200
# Backoff while the hub is unreachable: full jitter up to this many seconds (--max-backoff).
DEFAULT_MAX_BACKOFF_SECONDS = 60.0
# A Retry-After from the hub is honoured up to this: a misconfigured hub must not silence a fleet for hours.
RETRY_AFTER_MAX_SECONDS = 300.0

EXIT_OK = 0
EXIT_HUB_UNREACHABLE = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_REJECTED = 4


# --- resources -------------------------------------------------------------------------------


def _import_nvml() -> Any:
    """Import and return the pynvml module (tests monkeypatch this)."""
    import pynvml

    return pynvml


def _nvml_errors(nvml: Any) -> tuple[type[BaseException], ...]:
    # pynvml raises subclasses of NVMLError (NotSupported, DriverNotLoaded, GpuIsLost, ...).
    return (getattr(nvml, "NVMLError", OSError), OSError)


def init_nvml(importer: Callable[[], Any] | None = None) -> Any | None:
    """Return an initialised NVML module, or None when there is no NVIDIA driver."""
    try:
        nvml = (importer or _import_nvml)()
    except ImportError as exc:
        logger.info("nvidia-ml-py not installed (%s); VRAM reported as unknown", exc)
        return None
    try:
        nvml.nvmlInit()
    except _nvml_errors(nvml) as exc:  # no driver, library not found, ...
        logger.info("no NVIDIA driver answers (%s); VRAM reported as unknown", exc)
        return None
    return nvml


def _gpu_name(nvml: Any, handle: Any) -> str:
    name = nvml.nvmlDeviceGetName(handle)
    if isinstance(name, bytes):  # older nvidia-ml-py returns bytes
        name = name.decode("utf-8", "replace")
    return str(name)[:GPU_NAME_MAX_CHARS]


def _gpu_utilization(nvml: Any, handle: Any) -> float | None:
    try:
        return float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except _nvml_errors(nvml):  # NotSupported on some boards and MIG slices
        return None


def read_gpus(nvml: Any) -> list[dict[str, Any]]:
    """Read every GPU's memory and utilization; raise if NVML cannot list the devices."""
    gpus = []
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        gpus.append(
            {
                "index": index,
                "name": _gpu_name(nvml, handle),
                "memory_used_bytes": int(memory.used),
                "memory_total_bytes": int(memory.total),
                "utilization_percent": _gpu_utilization(nvml, handle),
            }
        )
    return gpus


def collect_resources(nvml: Any | None = None) -> dict[str, Any]:
    """Return CPU, RAM and (when `nvml` is given and answers) VRAM figures as report fields."""
    memory = psutil.virtual_memory()
    resources: dict[str, Any] = {
        "cpu_percent": min(max(float(psutil.cpu_percent(interval=None)), 0.0), 100.0),
        "ram_used_bytes": max(int(memory.total - memory.available), 0),
        "ram_total_bytes": int(memory.total),
        "vram_used_bytes": None,
        "vram_total_bytes": None,
        "gpus": [],
    }
    if nvml is None:
        return resources
    try:
        gpus = read_gpus(nvml)
    except _nvml_errors(nvml) as exc:  # driver unloaded or GPU lost: VRAM is unknown
        logger.debug("NVML read failed: %s", exc)
        return resources
    if gpus:
        resources["vram_used_bytes"] = sum(gpu["memory_used_bytes"] for gpu in gpus)
        resources["vram_total_bytes"] = sum(gpu["memory_total_bytes"] for gpu in gpus)
        resources["gpus"] = gpus
    return resources


# --- local Ollama ----------------------------------------------------------------------------


def is_local_name(host: str) -> bool:
    """Tell whether `host` names this machine only (localhost, loopback or unspecified IP)."""
    name = host.strip("[]").rstrip(".").lower()
    if not name or name == "localhost" or name.startswith("localhost.") or name.endswith(".localhost"):
        return True
    if name in ("ip6-localhost", "ip6-loopback"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def ollama_port(ollama_url: str) -> int:
    """Return the TCP port of the local Ollama URL (default 11434)."""
    return urlsplit(ollama_url).port or DEFAULT_OLLAMA_PORT


def advertised_ollama_url(ollama_url: str, advertise_url: str | None, fqdn: str) -> str | None:
    """Return the URL at which the hub can reach this Ollama, or None if there is no such name."""
    if advertise_url:
        return advertise_url
    if is_local_name(fqdn):
        return None
    scheme = urlsplit(ollama_url).scheme or "http"
    return f"{scheme}://{host_for_url(fqdn)}:{ollama_port(ollama_url)}"


def detect_ollama(client: httpx.Client, ollama_url: str) -> str | None:
    """Return Ollama's version when it answers GET /api/version, else None."""
    try:
        response = client.get(f"{ollama_url}/api/version", timeout=OLLAMA_TIMEOUT_SECONDS)
        response.raise_for_status()
        version = response.json().get("version")
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return str(version) if version else "unknown"


# --- report ----------------------------------------------------------------------------------


def build_report(
    resources: dict[str, Any],
    *,
    hostname: str,
    host: str | None = None,
    ollama_url: str | None = None,
) -> dict[str, Any]:
    """Assemble the report body and validate it with SidecarReport (raises ValidationError)."""
    report: dict[str, Any] = {"hostname": hostname}
    if host:
        report["host"] = host
    if ollama_url:
        report["ollama_url"] = ollama_url
    report.update(resources)
    SidecarReport.model_validate(report)
    return report


@dataclass(frozen=True)
class SendResult:
    """What the hub made of one report: ok, busy or down (retry later), auth or rejected."""

    outcome: str
    detail: str = ""
    retry_after: float | None = None  # seconds the hub asked us to wait (busy only)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Return the wait a Retry-After header asks for (delay-seconds or HTTP-date), capped; None if unusable."""
    text = (value or "").strip()
    if text.isdigit():
        seconds = float(text)
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_SECONDS)


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("detail"):
        return str(body["detail"])[:500]
    return response.text.strip()[:200] or response.reason_phrase


def send_report(client: httpx.Client, hub: str, token: str, report: dict[str, Any]) -> SendResult:
    """POST one report to the hub and classify the answer."""
    try:
        response = client.post(
            f"{hub}{REPORT_PATH}",
            json=report,
            headers={"Authorization": f"Bearer {token}"},
            timeout=HUB_TIMEOUT_SECONDS,
        )
    except httpx.HTTPError as exc:
        return SendResult("down", f"{type(exc).__name__}: {exc}".rstrip(": "))
    status = response.status_code
    detail = "" if 200 <= status < 300 else _error_detail(response)
    # 503/429 with Retry-After: the hub is up but over capacity and said when to come back.
    return _classify(status, detail, parse_retry_after(response.headers.get("Retry-After")))


def _classify(status: int, detail: str, retry_after: float | None) -> SendResult:
    """SendResult for the hub's answer `status` (an HTTP status, or a socket reply's `status`)."""
    if 200 <= status < 300:
        return SendResult("ok")
    if status in (401, 403):
        return SendResult("auth", f"HTTP {status}: {detail}")
    if status in (429, 503) and retry_after is not None:
        return SendResult("busy", f"HTTP {status}: {detail}", retry_after)
    if status >= 500 or status in (408, 429):
        return SendResult("down", f"HTTP {status}")
    return SendResult("rejected", f"HTTP {status}: {detail}")


class ReportSocket:
    """One WebSocket to the hub's /ws/sidecar/, a report per frame.

    Far cheaper for the hub than one HTTP request per report. `send` returns None when the socket
    cannot carry this report (no connection, or a hub or proxy without the socket route): the
    caller then sends it over REST. A hub that refuses the handshake is not asked again for a while.
    """

    RETRY_SOCKET_AFTER_SECONDS = 600.0

    def __init__(self, hub: str, token: str) -> None:
        self.url = ("wss" + hub[5:] if hub.startswith("https") else "ws" + hub[4:]) + SOCKET_PATH
        self.token = token
        self.conn: Any = None
        self.opened = contextlib.ExitStack()
        self.seq = 0
        self.refused_until = 0.0

    def close(self) -> None:
        if self.conn is not None:
            self.conn = None
            try:
                self.opened.close()
            except Exception:  # closing a broken socket: nothing left to do
                pass

    def send(self, report: dict[str, Any]) -> SendResult | None:
        if time.monotonic() < self.refused_until:
            return None
        from websockets.exceptions import InvalidHandshake, WebSocketException
        from websockets.sync.client import connect

        try:
            if self.conn is None:
                self.conn = self.opened.enter_context(
                    connect(
                        self.url,
                        additional_headers={"Authorization": f"Bearer {self.token}"},
                        open_timeout=HUB_TIMEOUT_SECONDS,
                        close_timeout=1,
                        max_size=2**20,
                    )
                )
            self.seq += 1
            self.conn.send(json.dumps({"seq": self.seq, "report": report}))
            reply = json.loads(self.conn.recv(timeout=HUB_TIMEOUT_SECONDS))
        except InvalidHandshake as exc:
            logger.info("the hub takes no report socket (%s); reporting over HTTP", exc)
            self.refused_until = time.monotonic() + self.RETRY_SOCKET_AFTER_SECONDS
            self.close()
            return None
        except (OSError, TimeoutError, WebSocketException, ValueError):
            self.close()  # reconnect next time; this report goes over HTTP
            return None
        if not isinstance(reply, dict) or not isinstance(reply.get("status"), int):
            self.close()
            return None
        detail = str(reply.get("detail", ""))[:500]
        retry_after = reply.get("retry_after")
        return _classify(reply["status"], detail, float(retry_after) if retry_after is not None else None)


class Backoff:
    """Capped exponential backoff with full jitter: uniform(0, min(cap, base * 2**n)).

    When the hub sent Retry-After, the delay is that wait plus the jitter, and the jitter window is at
    least half the wait: a fleet told "come back in 10 s" returns spread over 10-15 s, not in step.
    """

    def __init__(
        self,
        base: float = 1.0,
        cap: float = DEFAULT_MAX_BACKOFF_SECONDS,
        rng: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.base = base
        self.cap = cap
        self.rng = rng
        self.attempt = 0

    def ceiling(self) -> float:
        """Return the upper bound of the next delay."""
        # min() on the exponent keeps 2**n from growing without bound during a long outage.
        return min(self.cap, self.base * 2 ** min(self.attempt, 32))

    def next_delay(self, retry_after: float | None = None) -> float:
        """Return the next delay in seconds (at least `retry_after`) and move one step up."""
        if retry_after is None:
            delay = self.rng(0.0, self.ceiling())
        else:
            wait = min(max(retry_after, 0.0), RETRY_AFTER_MAX_SECONDS)
            delay = wait + self.rng(0.0, max(self.ceiling(), wait / 2))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Start again from the base delay."""
        self.attempt = 0


# --- main loop -------------------------------------------------------------------------------


class _Shutdown(Exception):
    """Raised by the SIGTERM/SIGINT handler to leave any blocking call at once."""


_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _install_signal_handlers() -> dict[int, Any]:
    """Turn SIGTERM/SIGINT into _Shutdown; return the previous handlers."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Shutdown(signal.Signals(signum).name)

    return {signum: signal.signal(signum, handler) for signum in _SIGNALS}


class Reporter:
    """Build and send reports, logging one line per change of state, not one per attempt."""

    def __init__(self, args: argparse.Namespace, token: str, nvml: Any | None) -> None:
        self.args = args
        self.token = token
        self.nvml = nvml
        self.hostname = socket.gethostname()
        self.fqdn = socket.getfqdn()  # resolved once: a DNS lookup per report would be wasteful
        self.ollama_client = httpx.Client(trust_env=False)
        self.hub_client = httpx.Client(timeout=HUB_TIMEOUT_SECONDS)
        self.hub_socket = ReportSocket(args.hub, token) if args.hub and args.transport != "http" else None
        self.hub_state = "starting"
        self.ollama_state = "unknown"
        self.warned_local_fqdn = False

    def close(self) -> None:
        """Close both HTTP clients and release NVML."""
        self.ollama_client.close()
        self.hub_client.close()
        if self.hub_socket is not None:
            self.hub_socket.close()
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except _nvml_errors(self.nvml) as exc:
                logger.debug("nvmlShutdown failed: %s", exc)

    def ollama_url(self) -> str | None:
        """Return the Ollama URL to report, or None when Ollama is down or has no public name."""
        version = detect_ollama(self.ollama_client, self.args.ollama_url)
        state = "up" if version else "down"
        if state != self.ollama_state:
            if version:
                logger.info("local Ollama %s answers (version %s)", self.args.ollama_url, version)
            elif self.ollama_state != "unknown":
                logger.warning("local Ollama %s stopped answering", self.args.ollama_url)
            else:
                logger.info("no local Ollama answers at %s", self.args.ollama_url)
            self.ollama_state = state
        if not version:
            return None
        url = advertised_ollama_url(self.args.ollama_url, self.args.advertise_url, self.fqdn)
        if url is None and not self.warned_local_fqdn:
            logger.warning(
                "this host's FQDN is %r, which the hub cannot reach; not reporting the local "
                "Ollama: pass --advertise-url http://<name-the-hub-can-reach>:%d",
                self.fqdn,
                ollama_port(self.args.ollama_url),
            )
            self.warned_local_fqdn = True
        return url

    def make_report(self) -> dict[str, Any]:
        """Collect everything and return a validated report body."""
        return build_report(
            collect_resources(self.nvml),
            hostname=self.hostname,
            host=self.args.host,
            ollama_url=self.ollama_url(),
        )

    def send(self, report: dict[str, Any]) -> SendResult:
        """Send `report` and log when the hub's state differs from the previous attempt."""
        result = self.hub_socket.send(report) if self.hub_socket is not None else None
        if result is None and self.args.transport == "socket":
            result = SendResult("down", "the report socket is not available")
        elif result is None:
            result = send_report(self.hub_client, self.args.hub, self.token, report)
        state = f"{result.outcome}:{result.detail}" if result.outcome == "rejected" else result.outcome
        if state != self.hub_state:
            self._log_transition(result)
        self.hub_state = state
        return result

    def _log_transition(self, result: SendResult) -> None:
        if result.outcome == "ok":
            if self.hub_state == "starting":
                logger.info("reporting to %s", self.args.hub)
            else:
                logger.info("hub accepts reports again")
        elif result.outcome == "down":
            retry = "" if self.args.once else " (retrying with backoff)"
            logger.warning("hub unreachable: %s%s", result.detail, retry)
        elif result.outcome == "busy":
            retry = "" if self.args.once else f" (retrying after at least {result.retry_after:g} s, as it asks)"
            logger.warning("hub overloaded: %s%s", result.detail, retry)
        elif result.outcome == "rejected":
            logger.error("hub rejected the report: %s", result.detail)
        else:
            logger.error(
                "hub refused the sidecar token (%s): the token is wrong or revoked; "
                "create a new one with `manage.py create_token --scope sidecar`",
                result.detail,
            )


def _exit_code(result: SendResult) -> int:
    return {
        "ok": EXIT_OK,
        "down": EXIT_HUB_UNREACHABLE,
        "busy": EXIT_HUB_UNREACHABLE,
        "auth": EXIT_AUTH,
        "rejected": EXIT_REJECTED,
    }[result.outcome]


def _loop(reporter: Reporter, args: argparse.Namespace, sleep: Callable[[float], None] = time.sleep) -> int:
    backoff = Backoff(cap=args.max_backoff)
    build_error = ""
    while True:
        started = time.monotonic()
        try:
            report = reporter.make_report()
        except ValidationError as exc:
            if str(exc) != build_error:
                logger.error("cannot build a valid report, skipping this round: %s", exc)
                build_error = str(exc)
            sleep(args.interval)
            continue
        build_error = ""
        result = reporter.send(report)
        if result.outcome == "auth":
            return EXIT_AUTH
        if result.outcome in ("down", "busy"):
            sleep(backoff.next_delay(result.retry_after))
            continue
        backoff.reset()
        sleep(max(0.0, args.interval - (time.monotonic() - started)))


def run(args: argparse.Namespace) -> int:
    """Report once, print once (--dry-run) or report forever; return the exit code."""
    previous_handlers = _install_signal_handlers()
    reporter: Reporter | None = None
    try:
        psutil.cpu_percent(interval=None)  # prime: the first call only starts measuring
        reporter = Reporter(args, args.token, init_nvml())
        if args.dry_run or args.once:
            time.sleep(0.2)  # give the primed CPU counter a short window to measure
            report = reporter.make_report()
            if args.dry_run:
                print(json.dumps(report, indent=2))
                return EXIT_OK
            return _exit_code(reporter.send(report))
        return _loop(reporter, args)
    except _Shutdown as exc:
        logger.info("received %s, stopping", exc)
        return EXIT_OK
    except ValidationError as exc:
        logger.error("cannot build a valid report: %s", exc)
        return EXIT_USAGE
    finally:
        # A second signal during cleanup must not interrupt it with a traceback.
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if reporter is not None:
            reporter.close()
        for signum, previous in previous_handlers.items():
            signal.signal(signum, previous)


# --- command line ----------------------------------------------------------------------------


def _http_url(value: str) -> str:
    text = value.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{value!r} is not an http:// or https:// URL")
    return text


def _advertise_url(value: str) -> str:
    text = value.strip().rstrip("/")
    if "://" not in text:
        text = f"http://{text}"
    try:
        return check_ollama_url(text)  # what the report's ollama_url accepts, so reports stay valid
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _host_name(value: str) -> str:
    try:
        return split_host(value)[0]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 < seconds <= 86400:
        raise argparse.ArgumentTypeError(f"{value!r} is not between 0 and 86400 seconds")
    return seconds


def _version() -> str:
    try:
        return version("agentcom-sidecar")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        prog="agentcom-sidecar",
        description="Report this host's CPU/RAM/VRAM and its local Ollama to the LLM registry hub. "
        f"The sidecar token comes from ${TOKEN_ENV} or --token-file.",
    )
    parser.add_argument("--hub", type=_http_url, help="hub base URL (required, except with --dry-run)")
    parser.add_argument(
        "--ollama-url",
        default="http://127.0.0.1:11434",
        type=_http_url,
        help="where this host's Ollama answers locally (default %(default)s)",
    )
    parser.add_argument(
        "--advertise-url",
        type=_advertise_url,
        help="URL at which the hub reaches this Ollama (default http://<FQDN>:<port>)",
    )
    parser.add_argument("--host", type=_host_name, help="name the hub shows for this machine")
    parser.add_argument("--interval", type=_positive_seconds, default=10.0, help="seconds between reports")
    parser.add_argument("--once", action="store_true", help="send one report and exit")
    parser.add_argument("--dry-run", action="store_true", help="print the report as JSON and exit (no token)")
    parser.add_argument("--token-file", help="file holding the sidecar token")
    parser.add_argument(
        "--transport",
        choices=["auto", "socket", "http"],
        default="auto",
        help="auto (default): one WebSocket to the hub, REST when the hub or a proxy takes no socket; "
        "socket: the WebSocket only; http: one POST per report",
    )
    parser.add_argument(
        "--max-backoff",
        type=_positive_seconds,
        default=DEFAULT_MAX_BACKOFF_SECONDS,
        help="longest random wait between retries while the hub is unreachable (default %(default)g s); "
        f"a Retry-After from the hub is waited out on top, up to {RETRY_AFTER_MAX_SECONDS:g} s",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def read_token(token_file: str | None, environ: Mapping[str, str]) -> str:
    """Return the token from --token-file, else from $AGENTCOM_TOKEN; '' when there is none."""
    if token_file:
        with open(token_file, encoding="utf-8") as handle:
            return handle.read().strip()
    return environ.get(TOKEN_ENV, "").strip()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, set up logging and run the sidecar."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.hub is None and not args.dry_run:
        parser.error("--hub is required (except with --dry-run)")
    # A loopback address means something to the hub only when the hub runs on this machine too.
    if args.hub and args.advertise_url and is_local_name(split_host(args.advertise_url)[0]):
        if not is_local_name(split_host(args.hub)[0]):
            parser.error(
                f"--advertise-url {args.advertise_url} names this machine only; give a name or address the hub can reach"
            )
    try:
        args.token = read_token(args.token_file, os.environ)
    except OSError as exc:
        logger.error("cannot read the token file %s: %s", args.token_file, exc.strerror or exc)
        return EXIT_USAGE
    if not args.token and not args.dry_run:
        logger.error(
            "no sidecar token: set %s or pass --token-file PATH "
            "(create one with `manage.py create_token --scope sidecar --label NAME`)",
            TOKEN_ENV,
        )
        return EXIT_USAGE
    return run(args)
