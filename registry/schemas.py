"""Wire schemas of the hub (no Django imports here).

The sidecar report schema lives in the sidecar's own distribution (`agentcom_sidecar.report`) and is
re-exported here, so the hub validates exactly what the sidecar builds. The host and name patterns
live there too: the registration body publishes and enforces the same ones.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    SecretStr,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from agentcom_sidecar.report import (
    DEFAULT_OLLAMA_PORT,
    HOST_PATTERN,
    NAME_PATTERN,
    PORT_TEXT,
    GpuReport,
    SidecarReport,
    check_host,
    host_for_url,
    plain_text,
    split_host,
    split_url,
)

__all__ = [
    "DEFAULT_OLLAMA_PORT",
    "MAX_BODY_BYTES",
    "EndpointIn",
    "EndpointsIn",
    "HOST_PATTERN",
    "NAME_PATTERN",
    "PORT_TEXT",
    "GpuReport",
    "SidecarReport",
    "host_for_url",
    "plain_text",
    "split_host",
    "split_url",
]

MAX_BODY_BYTES = 64 * 1024

SCHEMES = ("http", "https")
# An Authorization header value the probe may send: visible ASCII with inner spaces, no CR/LF
# (which would end the header and start another), at most AUTHORIZATION_MAX_LENGTH characters.
AUTHORIZATION_PATTERN = "^(?:[!-~](?:[ -~]*[!-~])?)?$"
AUTHORIZATION_MAX_LENGTH = 2048
_AUTHORIZATION_RE = re.compile(AUTHORIZATION_PATTERN)


def check_authorization(value: str) -> str:
    """Refuse a header value that could not be sent as one header line (never quoting the value)."""
    if len(value) > AUTHORIZATION_MAX_LENGTH:
        raise ValueError(f"authorization must be at most {AUTHORIZATION_MAX_LENGTH} characters")
    if not _AUTHORIZATION_RE.fullmatch(value):
        raise ValueError(
            "authorization must be one header value: visible ASCII characters and inner spaces, "
            "no line breaks, no leading or trailing spaces"
        )
    return value


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
        "http://gpu-01:11434/ (a port in it wins over `port`); https://gpu-02:11434 probes over TLS "
        "(a bare host is probed over plain HTTP)",
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

    authorization: SecretStr | None = Field(
        default=None,
        description="Optional value of an Authorization header sent with every probe (e.g. `Bearer abc`), "
        "for an Ollama behind an authenticating proxy; write-only: never shown again (rows say `has_auth`)",
        json_schema_extra={"pattern": AUTHORIZATION_PATTERN, "maxLength": AUTHORIZATION_MAX_LENGTH},
    )
    _scheme: str | None = PrivateAttr(default=None)

    @field_validator("authorization", mode="before")
    @classmethod
    def _authorization_text(cls, value):
        if value is None or isinstance(value, SecretStr):
            return value
        if not isinstance(value, str):
            raise ValueError("authorization must be text")
        return check_authorization(value)

    @property
    def scheme(self) -> str | None:
        """ "http" or "https" when `host` was a URL, else None (the caller's default applies)."""
        return self._scheme

    @property
    def authorization_value(self) -> str | None:
        """The Authorization header value, None when not given ("" when given empty)."""
        return None if self.authorization is None else self.authorization.get_secret_value()

    @field_validator("address", mode="before")
    @classmethod
    def _host_text(cls, value):
        if not isinstance(value, str):
            raise ValueError("host must be text")
        return check_host(value)  # the readable reason first, e.g. "host must not contain spaces"

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
        scheme, address, port = split_url(self.address, self.port)
        self._scheme = scheme
        self.address = address
        self.port = port or DEFAULT_OLLAMA_PORT
        self.name = (self.name or "").strip()
        return self


_PORT_RE = re.compile(f"^{PORT_TEXT}$")


def _one_or_many(value: object) -> str:
    return "many" if isinstance(value, list) else "one"


# The registration body: one endpoint, or a list of them (errors name only the shape sent).
EndpointsIn = Annotated[
    Annotated[EndpointIn, Tag("one")] | Annotated[list[EndpointIn], Tag("many"), Field(min_length=1, max_length=1000)],
    Discriminator(_one_or_many),
]
