"""The dashboard WebSocket: snapshot on connect, coalesced deltas after, add/remove commands."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth import get_user_model
from pydantic import ValidationError

from dashboard.broadcast import GROUP
from registry import services, wire

logger = logging.getLogger(__name__)

MAX_FRAME_CHARS = 64 * 1024


class DashboardConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.user = user
        self.pending: dict | None = None
        self.removed_ids: set[int] = set()  # a late row for one of these must not resurrect it
        self.last_flush = 0.0
        self.flush_handle: asyncio.TimerHandle | None = None
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()
        await self.send_snapshot()

    async def disconnect(self, code: int) -> None:
        if getattr(self, "flush_handle", None):
            self.flush_handle.cancel()
        if hasattr(self, "user"):
            await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def send_json(self, data: dict) -> None:
        await self.send(text_data=json.dumps(data, separators=(",", ":")))

    async def send_error(self, message: str) -> None:
        await self.send_json({"type": "llm_endpoint_error", "error": message})

    async def send_snapshot(self) -> None:
        snapshot = await database_sync_to_async(services.build_snapshot)()
        # A fresh snapshot supersedes anything queued before it.
        self.pending = None
        await self.send_json({"type": "snapshot", **snapshot})

    # --- commands from the browser ---------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            await self.send_error("Frames must be JSON text.")
            return
        if len(text_data) > MAX_FRAME_CHARS:
            await self.send_error("Frame too large (64 KiB at most).")
            return
        try:
            frame = json.loads(text_data)
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
            await self.send_error("Frame is not valid JSON.")
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            await self.send_error('Frame must be a JSON object with a "type".')
            return
        command = self.COMMANDS.get(frame["type"])
        if command is None:
            await self.send_error(f"Unknown frame type {frame['type'][:50]!r}.")
            return
        handler, perm, action = command
        if perm is not None and not await self.has_perm(perm):
            await self.send_error(f"You may watch the registry but not {action} (needs {perm}).")
            return
        try:
            parsed = wire.BROWSER_FRAMES[frame["type"]].model_validate(frame)
        except ValidationError as exc:
            await self.send_error(services.validation_message(exc))
            return
        try:
            await handler(self, parsed)
        except services.RegistryError as exc:
            await self.send_error(exc.detail)
        except Exception:  # keep the connection alive whatever one command did
            logger.exception("dashboard command %s failed", frame["type"])
            await self.send_error("The hub could not carry out that command; see its log.")

    async def on_request_snapshot(self, frame: wire.RequestSnapshotFrame) -> None:
        await self.send_snapshot()

    async def on_register(self, frame: wire.RegisterEndpointFrame) -> None:
        endpoint = await database_sync_to_async(self._register)(frame.address, frame.port, frame.name)
        await self.send_json({"type": "llm_endpoint_registered", "endpoint": endpoint})

    async def on_remove(self, frame: wire.RemoveEndpointFrame) -> None:
        removed = await database_sync_to_async(services.remove_endpoint)(frame.id)
        await self.send_json({"type": "llm_endpoint_removed", "id": removed})

    # frame type -> (handler, permission needed, what a viewer may not do); shapes: wire.BROWSER_FRAMES
    COMMANDS = {
        "request_snapshot": (on_request_snapshot, None, ""),
        "register_llm_endpoint": (on_register, "registry.add_endpoint", "add endpoints"),
        "remove_llm_endpoint": (on_remove, "registry.delete_endpoint", "remove endpoints"),
    }

    @staticmethod
    def _register(address: str, port: int, name: str) -> dict:
        endpoint, _ = services.register_endpoint(address, port, name)
        return services.endpoint_rows([endpoint.id])[0]

    @database_sync_to_async
    def has_perm(self, perm: str) -> bool:
        # Fresh from the database: a permission revoked (or a user deactivated) while the
        # socket is open takes effect at once, not at the next connect.
        user = get_user_model().objects.filter(pk=self.user.pk, is_active=True).first()
        return user is not None and user.has_perm(perm)

    # --- events from the channel layer, coalesced -------------------------------------

    async def registry_changed(self, event: dict) -> None:
        """Merge an event into the pending delta; flush at most DASHBOARD_MAX_FRAMES_PER_SECOND."""
        self.merge(event["data"])
        if self.flush_handle is None:
            interval = 1.0 / settings.DASHBOARD_MAX_FRAMES_PER_SECOND
            delay = max(0.0, self.last_flush + interval - time.monotonic())
            loop = asyncio.get_running_loop()
            self.flush_handle = loop.call_later(delay, lambda: asyncio.ensure_future(self.flush()))

    def merge(self, data: dict) -> None:
        pending = self.pending
        if pending is None:
            pending = self.pending = {
                "endpoints": {},
                "removed": set(),
                "resources": {},
                "fleet_models": None,
                "checked": {},
            }
        for endpoint_id in data.get("removed", ()):
            pending["endpoints"].pop(endpoint_id, None)
            pending["checked"].pop(str(endpoint_id), None)
            pending["removed"].add(endpoint_id)
            self.removed_ids.add(endpoint_id)
        for row in data.get("endpoints", ()):
            held = pending["endpoints"].get(row["id"])
            # Events from several processes may cross: keep the newer version of a row.
            if row["id"] not in self.removed_ids and (held is None or row["revision"] >= held["revision"]):
                pending["endpoints"][row["id"]] = row
        for key, at in data.get("checked", {}).items():
            if int(key) not in self.removed_ids:
                pending["checked"][key] = at
        pending["resources"].update(data.get("resources", {}))
        if data.get("fleet_models") is not None:
            pending["fleet_models"] = data["fleet_models"]

    async def flush(self) -> None:
        self.flush_handle = None
        pending, self.pending = self.pending, None
        if pending is None:
            return
        self.last_flush = time.monotonic()
        frame = {
            "type": "llm_registry_update",
            "server_time": datetime.now(UTC).isoformat(),
            "endpoints": list(pending["endpoints"].values()),
            "removed": sorted(pending["removed"]),
            "resources": pending["resources"],
        }
        if pending["fleet_models"] is not None:
            frame["fleet_models"] = pending["fleet_models"]
        if pending["checked"]:
            frame["checked"] = pending["checked"]
        try:
            await self.send_json(frame)
        except Exception:  # the socket closed between scheduling and sending
            logger.debug("dropping an update for a closed dashboard socket")
