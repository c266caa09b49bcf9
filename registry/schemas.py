"""Wire schemas of the hub (no Django imports here).

The sidecar report schema lives in the sidecar's own distribution (`agentcom_sidecar.report`) and is
re-exported here, so the hub validates exactly what the sidecar builds.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, WithJsonSchema, field_validator, model_validator

from agentcom_sidecar.report import (
    DEFAULT_OLLAMA_PORT,
    GpuReport,
    SidecarReport,
    host_for_url,
    plain_text,
    split_host,
)

__all__ = [
    "DEFAULT_OLLAMA_PORT",
    "MAX_BODY_BYTES",
    "EndpointIn",
    "EndpointsIn",
    "GpuReport",
    "SidecarReport",
    "host_for_url",
    "plain_text",
    "split_host",
]

MAX_BODY_BYTES = 64 * 1024


# What the registration body's fields accept, as regular expressions that the OpenAPI description
# publishes and validation enforces first (the same text): a generated client cannot send a value the
# description allows and the hub refuses. Narrower than split_host alone (no zone ids, no IPv4-in-IPv6).
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
HOST_PATTERN = (
    f"^(?:https?://(?:{_NAME}|\\[(?:{_IPV6})\\]){_PORT}/?"  # a URL: scheme, host, port, at most a slash
    f"|(?:{_NAME}|\\[(?:{_IPV6})\\]){_PORT}/*"  # a host, [IPv6] or either with :port
    f"|(?:{_IPV6}))$"  # a bare IPv6 literal
)
NAME_PATTERN = "^[^\\x00-\\x1f\\x7f]*$"  # no control characters (NUL breaks PostgreSQL text)


_PORT_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 1, "maximum": 65535},
        {"type": "string", "pattern": f"^(?:{PORT_TEXT})?$"},  # form fields send text; "" is the default
        {"type": "null"},
    ]
}


class EndpointIn(BaseModel):
    """An endpoint to register: its address (host name, IP or URL), port, optional name.

    On the wire the address is called `host` (the registration frame and REST body). Each field's
    validator gives a readable reason first, then holds the value to the published pattern.
    """

    model_config = ConfigDict(extra="forbid")

    address: str = Field(
        alias="host",
        max_length=253,
        description="Host name, IP address (IPv6 bare or in brackets), `host:port`, or a URL such as "
        "http://gpu-01:11434/ (a port in it wins over `port`)",
        json_schema_extra={"pattern": HOST_PATTERN},
    )
    port: Annotated[int | str | None, WithJsonSchema(_PORT_SCHEMA)] = Field(
        default=None, description="TCP port, 1..65535 (default 11434)"
    )
    name: str | None = Field(
        default="",
        max_length=100,
        description="Optional display name (no control characters)",
        json_schema_extra={"pattern": NAME_PATTERN},
    )

    @field_validator("address", mode="before")
    @classmethod
    def _host_text(cls, value):
        if not isinstance(value, str):
            raise ValueError("host must be text")
        split_host(value)  # the readable reason, e.g. "host must not contain spaces"
        if not _HOST_RE.match(value):
            raise ValueError("host must be a host name, an IP address or a URL such as http://gpu-01:11434/")
        return value

    @field_validator("port", mode="before")
    @classmethod
    def _port_number(cls, value):
        if value is None or value == "":
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON Schema counts 11434.0 as an integer, so the hub does too
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
            return value
        if isinstance(value, str) and _PORT_RE.match(value):
            return int(value)
        raise ValueError("port must be a number from 1 to 65535")

    @field_validator("name", mode="before")
    @classmethod
    def _name_text(cls, value):
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError("name must be text")
        return plain_text(value, "name")

    @model_validator(mode="after")
    def _normalise(self) -> EndpointIn:
        address, port = split_host(self.address, self.port)
        self.address = address
        self.port = port or DEFAULT_OLLAMA_PORT
        self.name = (self.name or "").strip()
        return self


_HOST_RE = re.compile(HOST_PATTERN)
_PORT_RE = re.compile(f"^{PORT_TEXT}$")


def _one_or_many(value: object) -> str:
    return "many" if isinstance(value, list) else "one"


# The registration body: one endpoint, or a list of them (errors name only the shape sent).
EndpointsIn = Annotated[
    Annotated[EndpointIn, Tag("one")] | Annotated[list[EndpointIn], Tag("many"), Field(min_length=1, max_length=1000)],
    Discriminator(_one_or_many),
]
