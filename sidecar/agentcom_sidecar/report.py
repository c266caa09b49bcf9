"""The report wire schema: what a sidecar posts to the hub, validated the same way at both ends.

The hub imports this module (registry/schemas.py) so the sidecar and the hub cannot drift apart.
No Django here: it runs on GPU hosts with only pydantic.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_OLLAMA_PORT = 11434

# A DNS name: labels of letters, digits, hyphens and underscores separated by dots.
_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")


@lru_cache(maxsize=4096)  # pure; the hub calls it several times per report
def split_host(raw: str, port: int | None = None) -> tuple[str, int | None]:
    """Normalise `raw` (a host, an IP literal or a URL) into (host, port-from-URL-or-`port`)."""
    text = (raw or "").strip()
    if not text:
        raise ValueError("host is required")
    if any(ch.isspace() for ch in text):
        raise ValueError("host must not contain spaces")
    url_port: int | None = None
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https"):
            raise ValueError("host URL must start with http:// or https://")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("host must not contain a path; give only the host and port")
        if parts.username is not None or parts.password is not None:
            raise ValueError("host URL must not contain a user name or password")
        try:
            url_port = parts.port
        except ValueError:
            raise ValueError("port in the host URL must be a number from 1 to 65535") from None
        if url_port == 0:
            raise ValueError("port in the host URL must be a number from 1 to 65535")
        text = parts.hostname or ""
        if not text:
            raise ValueError("host is required")
    else:
        text = text.rstrip("/")
        if "/" in text or "?" in text or "#" in text:
            raise ValueError("host must not contain a path; give only the host and port")
        if text.startswith("[") and "]" in text:
            inner, _, rest = text[1:].partition("]")
            if rest.startswith(":"):
                url_port = _port_from_text(rest[1:])
            text = inner
        elif text.count(":") == 1:
            text, _, port_text = text.partition(":")
            url_port = _port_from_text(port_text)
    host = _validate_hostname(text)
    return host, url_port if url_port is not None else port


def _port_from_text(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError("port must be a number from 1 to 65535")
    return int(text)


def _validate_hostname(text: str) -> str:
    try:
        return ipaddress.ip_address(text.strip("[]")).compressed
    except ValueError:
        pass
    if not _HOSTNAME_RE.match(text):
        raise ValueError("host must be a host name or an IP address (letters, digits, '-', '.')")
    return text.rstrip(".").lower()


def plain_text(value: str, field: str) -> str:
    """Refuse control characters (NUL breaks PostgreSQL text; none belongs in a name)."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError(f"{field} must not contain control characters")
    return value


def host_for_url(host: str) -> str:
    """Bracket IPv6 literals so that `host` can be put in a URL."""
    return f"[{host}]" if ":" in host else host


Percent = Annotated[float, Field(ge=0, le=100)]
Bytes = Annotated[int, Field(ge=0, le=2**63 - 1)]  # the database's BIGINT


class GpuReport(BaseModel):
    """One GPU as seen by NVML on the sidecar's host."""

    model_config = ConfigDict(extra="ignore")

    index: int = Field(ge=0)
    name: str = Field(default="", max_length=200)
    memory_used_bytes: Bytes
    memory_total_bytes: Bytes
    utilization_percent: Percent | None = None

    @field_validator("name")
    @classmethod
    def _name_is_plain(cls, value: str) -> str:
        return plain_text(value, "name")

    @model_validator(mode="after")
    def _used_within_total(self) -> GpuReport:
        if self.memory_used_bytes > self.memory_total_bytes:
            raise ValueError("memory_used_bytes must not exceed memory_total_bytes")
        return self


class SidecarReport(BaseModel):
    """What a sidecar posts to /api/v1/sidecar/report."""

    model_config = ConfigDict(extra="ignore")

    host: str | None = Field(default=None, max_length=253)
    hostname: str = Field(min_length=1, max_length=253)
    ollama_url: str | None = Field(default=None, max_length=300)
    cpu_percent: Percent
    ram_used_bytes: Bytes
    ram_total_bytes: Bytes
    vram_used_bytes: Bytes | None = None
    vram_total_bytes: Bytes | None = None
    gpus: list[GpuReport] = Field(default_factory=list, max_length=64)

    @field_validator("hostname")
    @classmethod
    def _hostname_is_plain(cls, value: str) -> str:
        return plain_text(value, "hostname")

    @model_validator(mode="after")
    def _consistent(self) -> SidecarReport:
        if self.ram_used_bytes > self.ram_total_bytes:
            raise ValueError("ram_used_bytes must not exceed ram_total_bytes")
        if (self.vram_used_bytes is None) != (self.vram_total_bytes is None):
            raise ValueError("vram_used_bytes and vram_total_bytes are both set or both null")
        if self.vram_used_bytes is not None and self.vram_used_bytes > self.vram_total_bytes:
            raise ValueError("vram_used_bytes must not exceed vram_total_bytes")
        if self.ollama_url:
            split_host(self.ollama_url)  # raises a readable ValueError
        name = self.host or (split_host(self.ollama_url)[0] if self.ollama_url else self.hostname)
        self.host = split_host(name)[0]
        return self

    def ollama_host_port(self) -> tuple[str, int] | None:
        """Return (host, port) of the advertised Ollama, or None."""
        if not self.ollama_url:
            return None
        host, port = split_host(self.ollama_url)
        return host, port or DEFAULT_OLLAMA_PORT
