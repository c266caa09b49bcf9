"""Server -> browser frames as JSON text, each at most wire.MAX_FRAME_BYTES.

A snapshot of 5,000 endpoints is ~15 MB of JSON and one sweep may change every row: the
WebSocket server refuses messages over 1 MiB, and a browser freezes while it parses a huge
one. So every frame is packed from the JSON of single rows until the next would not fit;
rows are independent (each carries its revision), so a reader may apply each frame alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import orjson

from registry import wire
from registry.rows import problems_first

logger = logging.getLogger(__name__)

SLACK = 64  # commas and closing brackets not counted piece by piece


def dumps(data: object) -> str:
    return orjson.dumps(data).decode()


class _Packer:
    """Fill frames with pieces (an element of a list field or a "key":value of a map field)."""

    def __init__(self, fields: dict[str, str], limit: int) -> None:
        self.fields = fields  # field name -> "list" or "map", in the order they are written
        self.limit = limit
        self.frames: list[dict[str, list[str]]] = []
        self.sizes: list[int] = []
        self._new()

    def _new(self) -> None:
        self.frames.append({name: [] for name in self.fields})
        self.sizes.append(sum(len(name) + 6 for name in self.fields))

    def add(self, pieces: list[tuple[str, str]], *, head: int) -> None:
        """Add pieces that belong together (a row and its host's resources) to one frame."""
        size = sum(len(piece) + 1 for _, piece in pieces)
        if self.sizes[-1] + size + head + SLACK > self.limit and any(self.frames[-1].values()):
            self._new()
        if self.sizes[-1] + size + head + SLACK > self.limit:
            logger.warning("%d bytes of %s do not fit a %d-byte frame", size, pieces[0][0], self.limit)
        for field, piece in pieces:
            self.frames[-1][field].append(piece)
        self.sizes[-1] += size

    def render(self, heads: list[str], tails: list[str]) -> list[str]:
        """Frame i is {heads[i], the fields, tails[i]}; heads and tails are JSON object bodies."""
        out = []
        for frame, head, tail in zip(self.frames, heads, tails, strict=True):
            parts = [head] if head else []
            for name, kind in self.fields.items():
                body = ",".join(frame[name])
                parts.append(f'"{name}":[{body}]' if kind == "list" else f'"{name}":{{{body}}}')
            if tail:
                parts.append(tail)
            out.append("{" + ",".join(parts) + "}")
        return out


def _body(data: dict) -> str:
    """The inside of a JSON object, without its braces ("" for an empty dict)."""
    return dumps(data)[1:-1]


def _entry(key: str, value: object) -> str:
    return f"{dumps(key)}:{dumps(value)}"


def snapshot_frames(snapshot: dict, limit: int | None = None, *, more: bool = False) -> list[str]:
    """A build_snapshot() as a `snapshot` frame and as many `snapshot_part` frames as needed
    (`more`: further parts follow from part_frames, so none of these is complete).

    Rows go in the dashboard's default order, each with its host's resources in the same
    frame, so the first frame alone paints the first screen.
    """
    limit = limit or wire.MAX_FRAME_BYTES
    head = _body(
        {
            "type": "snapshot",
            "server_time": snapshot["server_time"],
            "stale_after_seconds": snapshot["stale_after_seconds"],
            "total": snapshot["total"],
            "fleet_models": snapshot["fleet_models"],
            "fleet_loaded": snapshot["fleet_loaded"],
        }
    )
    return _rows_frames(problems_first(snapshot["endpoints"]), snapshot["resources"], head, limit, last=not more)


def part_frames(part: dict, limit: int | None = None) -> list[str]:
    """The rest of a snapshot (services.snapshot_rest: rows in order, resources) as `snapshot_part` frames."""
    return _rows_frames(part["endpoints"], part["resources"], None, limit or wire.MAX_FRAME_BYTES, last=True)


def _rows_frames(rows: list[dict], resources: dict, head: str | None, limit: int, *, last: bool) -> list[str]:
    part_head = '"type":"snapshot_part"'
    packer = _Packer({"endpoints": "list", "resources": "map"}, limit)
    resources = dict(resources)
    frame_head = max(len(head or ""), len(part_head))
    for row in rows:
        res = resources.pop(row["host"], None)
        pieces = [("endpoints", dumps(row))]
        if res is not None:
            pieces.append(("resources", _entry(row["host"], res)))
        packer.add(pieces, head=frame_head)
    for host, res in resources.items():  # hosts that report but have no endpoint
        packer.add([("resources", _entry(host, res))], head=frame_head)
    n = len(packer.frames)
    heads = ([head] if head else [part_head]) + [part_head] * (n - 1)
    tails = ['"complete":%s' % ("true" if last and i == n - 1 else "false") for i in range(n)]
    return packer.render(heads, tails)


def update_frames(update: dict, limit: int | None = None) -> list[str]:
    """An `llm_registry_update` (endpoints, removed, resources, checked, fleet_*) as frames
    that each fit; the fleet summary rides on the last one."""
    limit = limit or wire.MAX_FRAME_BYTES
    head = _body({"type": "llm_registry_update", "server_time": update["server_time"]})
    packer = _Packer({"endpoints": "list", "removed": "list", "resources": "map", "checked": "map"}, limit)
    tail = _body({k: update[k] for k in ("fleet_models", "fleet_loaded") if update.get(k) is not None})
    reserve = len(head) + len(tail)  # the last frame carries the tail; keep room in every frame
    pieces: Iterable[tuple[str, str]] = [
        *(("endpoints", dumps(row)) for row in update.get("endpoints", ())),
        *(("removed", dumps(i)) for i in update.get("removed", ())),
        *(("resources", _entry(k, v)) for k, v in update.get("resources", {}).items()),
        *(("checked", _entry(k, v)) for k, v in (update.get("checked") or {}).items()),
    ]
    for field, piece in pieces:
        packer.add([(field, piece)], head=reserve)
    n = len(packer.frames)
    return packer.render([head] * n, [""] * (n - 1) + [tail])
