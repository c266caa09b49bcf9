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
from pydantic import ValidationError

from dashboard import frames, resync
from dashboard.broadcast import GROUP
from dashboard.sessions import session_digest, session_state, user_group
from registry import metrics, services, wire

logger = logging.getLogger(__name__)

MAX_FRAME_CHARS = 64 * 1024
FIRST_ROWS = 200  # rows in the first snapshot frame: more than one screen, read in a few milliseconds
RECEIVE_RETRY_MIN_SECONDS = 0.1
RECEIVE_RETRY_MAX_SECONDS = 2.0  # longest wait between tries to receive from a channel layer that failed


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
        self.session_key = self.scope["session"].session_key
        self.perms: tuple[bool, bool] | None = None
        try:
            await self.join_groups()
        except Exception:  # Redis is down: refuse cleanly, the page retries with its backoff
            logger.warning("refusing a dashboard socket: the channel layer does not answer", exc_info=True)
            del self.user  # nothing to leave at disconnect
            await self.accept()  # a close before accept is an HTTP 403 without a code
            await self.close(code=wire.CLOSE_TRY_AGAIN)
            return
        self.watch = resync.watch_for(self.channel_layer)
        if self.watch is not None:
            self.watch.add(self)
        await self.accept()
        self.counted = True  # an open socket for /metrics, until disconnect
        metrics.socket_opened()
        self.check_task = asyncio.ensure_future(self._check_session_every())
        await self.send_snapshot()

    async def disconnect(self, code: int) -> None:
        if getattr(self, "counted", False):
            self.counted = False
            metrics.socket_closed()
        if getattr(self, "flush_handle", None):
            self.flush_handle.cancel()
        if getattr(self, "check_task", None):
            self.check_task.cancel()
        if getattr(self, "watch", None):
            self.watch.discard(self)
        if hasattr(self, "user"):
            try:
                await self.channel_layer.group_discard(GROUP, self.channel_name)
                await self.channel_layer.group_discard(user_group(self.user.pk), self.channel_name)
            except Exception:  # Redis is down: the memberships expire by themselves
                logger.info("could not leave the dashboard groups", exc_info=True)

    async def join_groups(self) -> None:
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.channel_layer.group_add(user_group(self.user.pk), self.channel_name)

    async def resync(self) -> None:
        """After Redis was lost: join the groups again (a restarted Redis forgot them), then send a
        snapshot built after joining, so it holds every change whose event this socket missed."""
        try:
            await self.join_groups()
        except Exception:  # Redis failed again: the watcher tries again after its next good look
            logger.warning("could not rejoin the dashboard groups", exc_info=True)
            if self.watch is not None:
                self.watch.receive_failed()
            return
        try:
            await self.send_snapshot()
        except Exception:  # the socket closed meanwhile
            logger.info("could not send a resync snapshot", exc_info=True)

    # Channels sets `channel_receive` to the layer's receive for this socket, and a receive that
    # raises (Redis stopped) would end the consumer: the socket died, or a connect got an HTTP 500.
    # Keep the layer's receive aside and hand Channels one that waits for Redis to come back.
    @property
    def channel_receive(self):
        return self._receive_from_layer

    @channel_receive.setter
    def channel_receive(self, receive) -> None:
        self._layer_receive = receive

    async def _receive_from_layer(self) -> dict:
        delay = RECEIVE_RETRY_MIN_SECONDS
        while True:
            try:
                return await self._layer_receive()
            except Exception:
                first = delay == RECEIVE_RETRY_MIN_SECONDS  # one traceback per outage, not one per try
                logger.log(
                    logging.INFO if first else logging.DEBUG, "receive from the channel layer failed", exc_info=first
                )
                if getattr(self, "watch", None) is not None:
                    self.watch.receive_failed()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECEIVE_RETRY_MAX_SECONDS)

    async def send_json(self, data: dict) -> None:
        await self.send(text_data=frames.dumps(data))

    async def send_error(self, message: str) -> None:
        await self.send_json({"type": "llm_endpoint_error", "error": message})

    async def send_snapshot(self) -> None:
        """The first screen at once, then the rest of the registry in parts (all frames <= 256 KiB).

        Built and cut into frames in a worker thread: thousands of rows must not stall the loop.
        """

        def opening() -> tuple[list[str], list[int], set[str]]:
            snapshot, rest = services.snapshot_in_order(FIRST_ROWS)
            return frames.snapshot_frames(snapshot, more=bool(rest)), rest, set(snapshot["resources"])

        texts, rest, sent_hosts = await database_sync_to_async(opening)()
        # A fresh snapshot supersedes anything queued before it.
        self.pending = None
        for text in texts:
            await self.send(text_data=text)
        if rest:
            texts = await database_sync_to_async(lambda: frames.part_frames(services.snapshot_rest(rest, sent_hosts)))()
            for text in texts:
                await self.send(text_data=text)

    # --- the session: logout anywhere, expiry, deactivation, permissions ----------------

    async def session_check(self, event: dict) -> None:
        """A login, logout or permission change of this user somewhere (dashboard.receivers)."""
        await self.check_session()

    async def session_ended(self, event: dict) -> None:
        """This user logged out somewhere; close if it was this session."""
        if self.session_key and event.get("session") == session_digest(self.session_key):
            await self.close(code=wire.CLOSE_SESSION_ENDED)

    async def check_session(self) -> None:
        state, can_add, can_delete = await database_sync_to_async(session_state)(self.session_key, self.user.pk)
        if state != "ok":
            code = wire.CLOSE_DEACTIVATED if state == "deactivated" else wire.CLOSE_SESSION_ENDED
            await self.close(code=code)
            return
        if self.perms is not None and self.perms != (can_add, can_delete):
            await self.send_json({"type": "llm_permissions", "can_add": can_add, "can_delete": can_delete})
        self.perms = (can_add, can_delete)

    async def _check_session_every(self) -> None:
        while True:
            try:
                await self.check_session()
            except Exception:  # a database hiccup: try again at the next tick
                logger.warning("could not check a dashboard session", exc_info=True)
            await asyncio.sleep(settings.DASHBOARD_SESSION_CHECK_SECONDS)

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
        endpoint = await database_sync_to_async(self._register)(frame, self.actor)
        await self.send_json({"type": "llm_endpoint_registered", "endpoint": endpoint})

    async def on_remove(self, frame: wire.RemoveEndpointFrame) -> None:
        removed = await database_sync_to_async(services.remove_endpoint)(frame.id, by=self.actor)
        await self.send_json({"type": "llm_endpoint_removed", "id": removed})

    # frame type -> (handler, permission needed, what a viewer may not do); shapes: wire.BROWSER_FRAMES
    COMMANDS = {
        "request_snapshot": (on_request_snapshot, None, ""),
        "register_llm_endpoint": (on_register, "registry.add_endpoint", "add endpoints"),
        "remove_llm_endpoint": (on_remove, "registry.delete_endpoint", "remove endpoints"),
    }

    @property
    def actor(self) -> str:
        """Who the events of this page's commands name."""
        return f"user {self.user.get_username()}"

    @staticmethod
    def _register(frame: wire.RegisterEndpointFrame, by: str) -> dict:
        endpoint, _ = services.register_endpoint(
            frame.address,
            frame.port,
            frame.name,
            by=by,
            scheme=frame.scheme,
            authorization=frame.authorization_value,
        )
        return services.endpoint_rows([endpoint.id])[0]

    async def has_perm(self, perm: str) -> bool:
        # Fresh from the database: a permission revoked, a user deactivated or a session ended
        # while the socket is open takes effect at once, not at the next connect.
        state, can_add, can_delete = await database_sync_to_async(session_state)(self.session_key, self.user.pk)
        return state == "ok" and {"registry.add_endpoint": can_add, "registry.delete_endpoint": can_delete}[perm]

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
                "fleet_loaded": None,
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
            pending["fleet_loaded"] = data.get("fleet_loaded", {})

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
            frame["fleet_loaded"] = pending["fleet_loaded"]
        if pending["checked"]:
            frame["checked"] = pending["checked"]
        try:
            for text in frames.update_frames(frame):
                await self.send(text_data=text)
        except Exception:  # the socket closed between scheduling and sending
            logger.debug("dropping an update for a closed dashboard socket")
