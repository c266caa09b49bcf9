"""The words of alerts: titles and texts for groups of transitions. Pure functions, no database."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Item:
    """One endpoint's part in an alert."""

    endpoint_id: int | None
    label: str
    host: str
    status: str = ""
    reason: str = ""
    down_seconds: float | None = None
    transitions: int | None = None
    event_ids: list[int] = field(default_factory=list)

    def as_json(self) -> dict:
        data = {"id": self.endpoint_id, "label": self.label, "host": self.host, "status": self.status}
        if self.reason:
            data["reason"] = self.reason
        if self.down_seconds is not None:
            data["down_seconds"] = round(self.down_seconds)
        if self.transitions is not None:
            data["transitions"] = self.transitions
        return data


def duration(seconds: float) -> str:
    """A span as people say it: 45 s, 12 min, 3 h 5 min, 2 d 4 h."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _down_part(item: Item) -> str:
    return f"{item.label} ({item.reason})" if item.reason else item.label


def _up_part(item: Item) -> str:
    return f"{item.label} after {duration(item.down_seconds)} down" if item.down_seconds is not None else item.label


def compose(kind: str, host: str, items: list[Item], *, whole_host: bool, flap_window: float) -> tuple[str, str]:
    """Title and text of one alert about `items` (all on `host`, all of `kind`)."""
    one = items[0]
    on_host = f" on {host}" if host else ""
    if kind == "down":
        if len(items) == 1:
            reason = f": {one.reason}" if one.reason else ""
            return f"Unhealthy: {one.label}", f"{one.label}{on_host} is unhealthy{reason}."
        parts = ", ".join(_down_part(i) for i in items)
        if whole_host:
            return f"Host {host} is down", f"All {len(items)} endpoints on {host} are unhealthy: {parts}."
        return f"{len(items)} endpoints unhealthy{on_host}", f"{len(items)} endpoints{on_host} are unhealthy: {parts}."
    if kind == "up":
        if len(items) == 1:
            after = f" after {duration(one.down_seconds)} down" if one.down_seconds is not None else ""
            return f"Recovered: {one.label}", f"{one.label}{on_host} is healthy again{after}."
        parts = ", ".join(_up_part(i) for i in items)
        if whole_host:
            return f"Host {host} is back", f"All {len(items)} endpoints on {host} are healthy again: {parts}."
        return (
            f"{len(items)} endpoints recovered{on_host}",
            f"{len(items)} endpoints{on_host} are healthy again: {parts}.",
        )
    window = duration(flap_window)
    names = ", ".join(i.label for i in items)
    if kind == "flapping":
        counts = ", ".join(f"{i.label}: {i.transitions} changes" for i in items)
        return (
            f"Flapping: {names}",
            f"{names}{on_host} keeps changing status ({counts} in {window}). "
            f"Further changes are not reported until it has been stable for {window}.",
        )
    if kind == "stable":
        states = ", ".join(f"{i.label} is {i.status}" for i in items)
        return f"Stable again: {names}", f"{names}{on_host} stopped flapping (no change for {window}): {states}."
    raise ValueError(f"unknown alert kind {kind!r}")
