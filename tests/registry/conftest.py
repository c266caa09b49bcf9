"""Fixtures shared by the registry tests."""

from __future__ import annotations

import httpx
import pytest


@pytest.fixture
async def hub():
    """The hub's whole ASGI application (lean report route, report socket, Django) in-process."""
    from agentcom_site.asgi import application

    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client
