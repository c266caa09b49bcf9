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

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

DEFAULT_OLLAMA_PORT = 11434

# What the wire's host fields accept, as regular expressions that the OpenAPI description publishes
# and validation enforces after split_host's readable reason (the same text): a generated client
# cannot send a value the description allows and the hub refuses. Narrower than split_host alone
# (no zone ids, no IPv4-in-IPv6, lower-case scheme). The hub's registration body uses them too.
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}(?:\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*\.?"  # also IPv4
_H16 = "[0-9A-Fa-f]{1,4}"
_IPV6 = "|".join(
    [
        f"(?:{_H16}:){{7}}{_H16}",
        f"(?:{_H16}:){{1,7}}:",
        f"(?:{_H16}:){{1,6}}:{_H16}",
        f"(?:{_H16}:){{1,5}}(?::{_H16}){{1,2}}",
        f"(?:{_H16}:){{1,4}}(?::{_H16}){{1,3}}",
        f"(?:{_H16}:){{1,3}}(?::{_H16}){{1,4}}",
        f"(?:{_H16}:){{1,2}}(?::{_H16}){{1,5}}",
        f"{_H16}:(?::{_H16}){{1,6}}",
        f":(?:(?::{_H16}){{1,7}}|:)",
    ]
)
PORT_TEXT = "(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_PORT = f"(?::{PORT_TEXT})?"
_URL = f"https?://(?:{_NAME}|\\[(?:{_IPV6})\\]){_PORT}/?"  # scheme, host, port, at most a slash
HOST_PATTERN = (
    f"^(?:{_URL}"  # a URL
    f"|(?:{_NAME}|\\[(?:{_IPV6})\\]){_PORT}/*"  # a host, [IPv6] or either with :port
    f"|(?:{_IPV6}))$"  # a bare IPv6 literal
)
MACHINE_PATTERN = f"^$|{HOST_PATTERN}"  # a report's `host`: "" means not given, like null
OLLAMA_URL_PATTERN = f"^(?:{_URL})?$"  # "" means no Ollama, like null
NAME_PATTERN = "^[^\\x00-\\x1f\\x7f]*$"  # no control characters (NUL breaks PostgreSQL text)
# "http://" is the shortest prefix, so a URL this long has a host name within split_host's 253.
OLLAMA_URL_MAX_LENGTH = 7 + 253

# A DNS name: labels of letters, digits, hyphens and underscores separated by dots.
_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")


def split_host(raw: str, port: int | None = None) -> tuple[str, int | None]:
    """Normalise `raw` (a host, an IP literal or a URL) into (host, port-from-URL-or-`port`)."""
    return split_url(raw, port)[1:]


@lru_cache(maxsize=4096)  # pure; the hub calls it several times per report
def split_url(raw: str, port: int | None = None) -> tuple[str | None, str, int | None]:
    """Normalise `raw` into (scheme, host, port): the scheme is "http" or "https" when `raw` is a
    URL and None when it is a bare host (the caller's default applies); the port as split_host."""
    text = (raw or "").strip()
    scheme: str | None = None
    if not text:
        raise ValueError("host is required")
    if any(ch.isspace() for ch in text):
        raise ValueError("host must not contain spaces")
    url_port: int | None = None
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https"):
            raise ValueError("host URL must start with http:// or https://")
        scheme = parts.scheme
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
    return scheme, host, url_port if url_port is not None else port


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


_HOST_RE = re.compile(HOST_PATTERN)
_OLLAMA_URL_RE = re.compile(OLLAMA_URL_PATTERN)


def check_host(value: str) -> str:
    """Refuse what HOST_PATTERN refuses (so also ""), with split_host's readable reason when it has one."""
    split_host(value)  # e.g. "host must not contain spaces"
    if not _HOST_RE.fullmatch(value):
        raise ValueError("host must be a host name, an IP address or a URL such as http://gpu-01:11434/")
    return value


def check_ollama_url(value: str) -> str:
    """Refuse what OLLAMA_URL_PATTERN refuses, with split_host's readable reason when it has one."""
    if value:
        split_host(value)
    if not _OLLAMA_URL_RE.fullmatch(value):
        raise ValueError("ollama_url must be a URL such as http://gpu-01:11434 (http or https, a host, a port)")
    return value


def inconsistent(message: str) -> PydanticCustomError:
    """A rule between fields that no JSON schema can publish: the hub answers it with its own code."""
    return PydanticCustomError("inconsistent_report", message)


def _number(value: object) -> object:
    # JSON Schema's numbers are neither true/false nor text; pydantic's lax mode would take both.
    # Not strict=True: that refuses 5.0 for an integer, which JSON Schema counts as one.
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    if isinstance(value, str):
        raise ValueError("must be a number, not text")
    return value


def host_for_url(host: str) -> str:
    """Bracket IPv6 literals so that `host` can be put in a URL."""
    return f"[{host}]" if ":" in host else host


# Constraints before the validator: after it, pydantic publishes them as "ge"/"le", not "minimum".
Percent = Annotated[float, Field(ge=0, le=100), BeforeValidator(_number)]
Bytes = Annotated[int, Field(ge=0, le=2**63 - 1), BeforeValidator(_number)]  # the database's BIGINT
_NAME_SCHEMA = {"pattern": NAME_PATTERN}


class GpuReport(BaseModel):
    """One GPU as seen by NVML on the sidecar's host."""

    model_config = ConfigDict(extra="ignore")

    index: Annotated[int, Field(ge=0), BeforeValidator(_number)]
    name: str = Field(default="", max_length=200, json_schema_extra=_NAME_SCHEMA)
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
            raise inconsistent("memory_used_bytes must not exceed memory_total_bytes")
        return self


class SidecarReport(BaseModel):
    """What a sidecar posts to /api/v1/sidecar/report."""

    model_config = ConfigDict(extra="ignore")

    host: str | None = Field(
        default=None,
        max_length=253,
        description="The machine's name (default: the Ollama URL's host, else `hostname`)",
        json_schema_extra={"pattern": MACHINE_PATTERN},
    )
    hostname: str = Field(min_length=1, max_length=253, json_schema_extra=_NAME_SCHEMA)
    ollama_url: str | None = Field(
        default=None,
        max_length=OLLAMA_URL_MAX_LENGTH,
        description="Where the hub reaches this machine's Ollama, e.g. http://gpu-01:11434",
        json_schema_extra={"pattern": OLLAMA_URL_PATTERN},
    )
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

    @field_validator("host")
    @classmethod
    def _host_is_a_host(cls, value: str | None) -> str | None:
        return check_host(value) if value else value  # "" counts as not given

    @field_validator("ollama_url")
    @classmethod
    def _ollama_url_is_a_url(cls, value: str | None) -> str | None:
        return check_ollama_url(value) if value is not None else None

    @model_validator(mode="after")
    def _consistent(self) -> SidecarReport:
        if self.ram_used_bytes > self.ram_total_bytes:
            raise inconsistent("ram_used_bytes must not exceed ram_total_bytes")
        if (self.vram_used_bytes is None) != (self.vram_total_bytes is None):
            raise inconsistent("vram_used_bytes and vram_total_bytes are both set or both null")
        if self.vram_used_bytes is not None and self.vram_used_bytes > self.vram_total_bytes:
            raise inconsistent("vram_used_bytes must not exceed vram_total_bytes")
        if self.host:
            self.host = split_host(self.host)[0]
        elif self.ollama_url:
            self.host = split_host(self.ollama_url)[0]
        else:
            try:
                self.host = split_host(self.hostname)[0]
            except ValueError as exc:
                message = "hostname names the machine when host and ollama_url are not given, but {reason}: send host"
                raise PydanticCustomError("inconsistent_report", message, {"reason": str(exc)}) from None
        return self

    def ollama_host_port(self) -> tuple[str, int] | None:
        """Return (host, port) of the advertised Ollama, or None."""
        target = self.ollama_target()
        return None if target is None else target[1:]

    def ollama_target(self) -> tuple[str, str, int] | None:
        """Return (scheme, host, port) of the advertised Ollama ("https" probes it over TLS), or None."""
        if not self.ollama_url:
            return None
        scheme, host, port = split_url(self.ollama_url)
        return scheme or "http", host, port or DEFAULT_OLLAMA_PORT
