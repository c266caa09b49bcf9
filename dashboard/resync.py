"""Notice that the channel layer's Redis went away or restarted, and make the sockets resync.

A restarted Redis (without persistence) has forgotten every group membership and every event
queued for a socket; a Redis that was only unreachable may have dropped events on the floor.
Either way the sockets of this process must join their groups again and send a fresh snapshot.
One watcher per event loop asks each Redis of the layer for its run_id (it changes at every
start) every WATCH_SECONDS; after a failed look or a new run_id, every socket it knows resyncs.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Protocol

logger = logging.getLogger(__name__)

WATCH_SECONDS = 1.0


class Resyncable(Protocol):
    async def resync(self) -> None: ...


class LayerWatch:
    def __init__(self, layer) -> None:
        self.layer = layer
        self.sockets: weakref.WeakSet = weakref.WeakSet()
        self.task: asyncio.Task | None = None
        self.run_ids: tuple | None = None  # the layer's Redis run_ids as last seen
        self.lost = False  # a look failed (or a socket's receive did) since the last good one
        self.down = False  # the last look failed

    def add(self, socket: Resyncable) -> None:
        self.sockets.add(socket)
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._watch())

    def discard(self, socket: Resyncable) -> None:
        self.sockets.discard(socket)

    def receive_failed(self) -> None:
        """A socket's receive from the layer raised: resync once Redis answers again."""
        self.lost = True

    async def _look(self) -> tuple:
        ids = []
        for index in range(self.layer.ring_size):
            info = await self.layer.connection(index).info("server")
            ids.append(info["run_id"])
        return tuple(ids)

    async def _watch(self) -> None:
        while self.sockets:
            try:
                run_ids = await asyncio.wait_for(self._look(), timeout=5)
            except Exception:  # Redis down or restarting: the sockets resync when it is back
                if not self.down:
                    logger.warning("the channel layer's Redis does not answer; dashboards resync when it does")
                self.lost = self.down = True
            else:
                if self.lost or (self.run_ids is not None and run_ids != self.run_ids):
                    logger.warning("the channel layer's Redis is back; %d dashboards resync", len(self.sockets))
                    for socket in list(self.sockets):
                        asyncio.ensure_future(socket.resync())
                self.run_ids, self.lost, self.down = run_ids, False, False
            await asyncio.sleep(WATCH_SECONDS)
        self.task, self.run_ids = None, None


_watches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> LayerWatch


def watch_for(layer) -> LayerWatch | None:
    """The running loop's watcher of `layer` (None for a layer without Redis, e.g. in memory)."""
    if not hasattr(layer, "connection") or not hasattr(layer, "ring_size"):
        return None
    loop = asyncio.get_running_loop()
    watch = _watches.get(loop)
    if watch is None or watch.layer is not layer:
        watch = _watches[loop] = LayerWatch(layer)
    return watch
