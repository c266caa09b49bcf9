"""Frames to the browser never exceed MAX_FRAME_BYTES, and together they carry everything.

(Frame shapes against registry.wire: tests/registry/test_wire_contract.py, on real frames.)"""

from __future__ import annotations

import json

from dashboard.frames import snapshot_frames, update_frames


def row(i: int, status: str = "healthy", models: int = 10) -> dict:
    return {
        "id": i,
        "host": f"127.0.{i // 250}.{i % 250 + 1}",
        "port": 11434,
        "status": status,
        "revision": 1,
        "models": [{"name": f"model-{k}:7b", "digest": "sha256:" + "a" * 64} for k in range(models)],
    }


def resources(host: str) -> dict:
    return {"host": host, "cpu_percent": 5.0, "gpus": [{"index": g, "name": "A100"} for g in range(4)]}


def test_a_large_snapshot_is_cut_into_frames_that_fit_in_the_dashboard_order():
    rows = [row(i, "unhealthy" if i % 50 == 7 else "healthy") for i in range(1200)]
    snapshot = {
        "server_time": "2026-01-01T00:00:00+00:00",
        "stale_after_seconds": 90,
        "total": len(rows),
        "endpoints": rows,
        "resources": {r["host"]: resources(r["host"]) for r in rows} | {"no-endpoint": resources("no-endpoint")},
        "fleet_models": {"model-0:7b": 1200},
        "fleet_loaded": {},
    }
    texts = snapshot_frames(snapshot, limit=64 * 1024)
    frames = [json.loads(t) for t in texts]
    assert len(texts) > 10 and max(len(t.encode()) for t in texts) <= 64 * 1024
    assert frames[0]["type"] == "snapshot" and {f["type"] for f in frames[1:]} == {"snapshot_part"}
    assert [f["complete"] for f in frames] == [False] * (len(frames) - 1) + [True]
    seen = [r["id"] for f in frames for r in f["endpoints"]]
    assert sorted(seen) == list(range(1200))
    assert {rows[i]["status"] for i in seen[:24]} == {"unhealthy"}  # problems first
    for f in frames:  # each row's host resources travel with it
        assert {r["host"] for r in f["endpoints"]} <= set(f["resources"])
    assert "no-endpoint" in frames[-1]["resources"]


def test_a_large_update_is_cut_into_frames_and_the_fleet_summary_rides_on_the_last():
    update = {
        "type": "llm_registry_update",
        "server_time": "2026-01-01T00:00:00+00:00",
        "endpoints": [row(i) for i in range(800)],
        "removed": list(range(900, 1400)),
        "resources": {f"h{i}": resources(f"h{i}") for i in range(300)} | {"gone": None},
        "checked": {str(i): "2026-01-01T00:00:00+00:00" for i in range(3000)},
        "fleet_models": {"a": 1},
        "fleet_loaded": {},
    }
    texts = update_frames(update, limit=32 * 1024)
    frames = [json.loads(t) for t in texts]
    assert max(len(t.encode()) for t in texts) <= 32 * 1024
    assert {f["type"] for f in frames} == {"llm_registry_update"}
    assert sum(len(f["endpoints"]) for f in frames) == 800
    assert sum(len(f["removed"]) for f in frames) == 500
    assert sum(len(f["checked"]) for f in frames) == 3000
    assert sum(len(f["resources"]) for f in frames) == 301
    assert [("fleet_models" in f) for f in frames] == [False] * (len(frames) - 1) + [True]


def test_a_small_update_is_one_frame():
    texts = update_frames({"server_time": "2026-01-01T00:00:00+00:00", "endpoints": [row(1)], "removed": []})
    assert len(texts) == 1 and json.loads(texts[0])["endpoints"][0]["id"] == 1
