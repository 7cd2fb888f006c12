"""`microturn demo` (what `make run` runs): start a cluster, exercise it, write runs/<stamp>/.

It checks that every part answers (gateway and replica health over gRPC, the foreground
deployment over its handle, an event round trip through the Redis stream a session's events
use), writes `summary.json` and `events.jsonl`, prints the summary and stops everything.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import redis.asyncio as aioredis
from google.protobuf.json_format import MessageToDict

from cluster.config import MicroturnConfig
from cluster.health_probe import check_health
from cluster.runtime import LocalCluster
from protos.microturn.v1 import events_pb2

log = logging.getLogger(__name__)


def new_run_dir(root: Path = Path("runs")) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = root / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


async def run_demo(config: MicroturnConfig, run_dir: Path) -> dict:
    started = time.monotonic()
    async with LocalCluster(config) as cluster:
        ready_s = time.monotonic() - started
        endpoints = cluster.endpoints
        log.info("cluster ready in %.1f s", ready_s)
        replica = endpoints.replicas[0]
        summary = {
            "ready_s": round(ready_s, 2),
            "gateway": endpoints.gateway,
            "gateway_health": await check_health(endpoints.gateway),
            "replica": replica["address"],
            "replica_health": await check_health(replica["address"]),
            "slots": replica["max_sessions"],
        }
        events = await _event_round_trip(endpoints.redis_url, session_id="demo")
        summary["bus_round_trip_ms"] = events["round_trip_ms"]
        with (run_dir / "events.jsonl").open("w") as f:
            f.write(json.dumps(events["event"]) + "\n")
    summary["total_s"] = round(time.monotonic() - started, 2)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


async def _event_round_trip(redis_url: str, session_id: str) -> dict:
    """Publish one event to the session's stream and read it back, timing the trip."""
    event = events_pb2.Event(
        session_id=session_id,
        event_id="demo-1",
        created_unix_ms=int(time.time() * 1000),
        transcript=events_pb2.Transcript(role="assistant", text="hello from the bus", final=True),
    )
    stream = f"mt:session:{session_id}:events"
    client = aioredis.Redis.from_url(redis_url)
    try:
        t0 = time.perf_counter()
        entry_id = await client.xadd(stream, {"event": event.SerializeToString()}, maxlen=1000)
        [(_, fields)] = await client.xrange(stream, min=entry_id, max=entry_id)
        round_trip_ms = (time.perf_counter() - t0) * 1000
    finally:
        await client.aclose()
    echoed = events_pb2.Event.FromString(fields[b"event"])
    if echoed != event:
        raise RuntimeError("event bus round trip changed the event")
    return {"round_trip_ms": round(round_trip_ms, 3), "event": MessageToDict(echoed)}
