"""Wire schemas of the hub (no Django imports here).

The sidecar report schema lives in the sidecar's own distribution (`agentcom_sidecar.report`) and is
re-exported here, so the hub validates exactly what the sidecar builds.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

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


class EndpointIn(BaseModel):
    """An endpoint to register: its address (host name, IP or URL), port, optional name.

    On the wire the address is called `host` (the registration frame and REST body).
    """

    model_config = ConfigDict(extra="forbid")

    address: str = Field(alias="host", description="Host name, IP address or URL such as http://gpu-01:11434/")
    port: int | None = Field(default=None, description="TCP port, 1..65535 (default 11434)")
    name: str = Field(default="", max_length=100, description="Optional display name")

    @field_validator("port", mode="before")
    @classmethod
    def _port_is_int(cls, value):
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError("port must be a number from 1 to 65535")
        if isinstance(value, str):
            if not value.strip().isdigit():
                raise ValueError("port must be a number from 1 to 65535")
            value = int(value)
        if not 1 <= value <= 65535:
            raise ValueError("port must be a number from 1 to 65535")
        return value

    @field_validator("name", mode="before")
    @classmethod
    def _name_text(cls, value):
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ValueError("name must be text")
        return plain_text(value.strip(), "name")

    @model_validator(mode="after")
    def _normalise(self) -> EndpointIn:
        if not isinstance(self.address, str):
            raise ValueError("host must be text")
        address, port = split_host(self.address, self.port)
        self.address = address
        self.port = port or DEFAULT_OLLAMA_PORT
        return self


def _one_or_many(value: object) -> str:
    return "many" if isinstance(value, list) else "one"


# The registration body: one endpoint, or a list of them (errors name only the shape sent).
EndpointsIn = Annotated[
    Annotated[EndpointIn, Tag("one")] | Annotated[list[EndpointIn], Tag("many")],
    Discriminator(_one_or_many),
]
