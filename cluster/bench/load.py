"""`microturn bench load`: many concurrent sessions against one cluster, each streaming 200 ms
chunks of a steady tone at real-time pace, measuring what serving adds to each chunk.

Three ways in (`--via`):
- `direct`: the routed `OpenSession` call (Serve picks the replica), then gRPC straight to the
  replica's port, the designed path (`load_grpc_client`);
- `gateway`: the same session relayed by the gateway;
- `realtime`: the gateway's OpenAI Realtime WebSocket (`/v1/realtime`): `session.update`, then
  `input_audio_buffer.append` every 200 ms; the bridge relays to the replica through the
  gateway's gRPC port, so this is `gateway` plus the WebSocket and the bridge
  (`load_realtime_client`).

Every tick's output says which chunk it used and when (replica clock = client clock: one
machine): `AudioOut.timing` over gRPC; over the WebSocket the same timing on each audio delta
(`microturn_timing`) or, when the tick sent no delta, a `microturn.tick` event. So

    chunk overhead = (output received - chunk sent) - (tick ended - chunk received by replica)
                     [- (realtime: the bridge's pacer sent the chunk - the bridge received the append)]
                   = inbound transport + outbound transport and delivery,

i.e. client -> model -> client minus the wait for the tick boundary and the model step. A gRPC
client cuts its chunks a little before the replica's tick (`ClientSession.chunk_clock`); a
Realtime client appends at a phase of its own, and the bridge's pacer holds the audio until the
tick's chunk goes out: that hold is the same wait for the tick boundary, reported on its own as
`bridge_wait_ms_*` and not counted as overhead. Realtime "chunk sent" is when the client sent
the `input_audio_buffer.append` that carried the chunk's last byte.

Meanwhile a synthetic background result is published to every session's event stream every
2 s, as a pool worker would (`load_results`); `bg_result_to_tick_ms` is result published -> the
tick that took its first tokens started (from the replica's `Woven` messages, or the bridge's
`microturn.woven`), `bg_result_bus_ms` the part of it before the replica read the result.
Waiting for the next boundary is uniform over one tick, so p99 can be at most ~2 ms above
198 ms for the target (one tick) to hold.

Before the cluster starts, `transport_floor_ms_*` measures what bare grpc.aio takes on this
machine to write one tick's message to as many streams from one event loop, read by as many
client processes (`transport_floor`): the outbound (and so the overhead) cannot go below it.

The clients run in `--client-processes` spawned processes (default: one per 16 sessions;
`load_processes`), whose raw samples are merged before percentiles are taken (`load_tally`).
"""

from __future__ import annotations

import asyncio
import logging
import sys

from cluster.bench.load_processes import default_processes, run_clients
from cluster.bench.load_share import LoadTarget, plan_sessions
from cluster.bench.transport_floor import measure_transport_floor
from cluster.config import MicroturnConfig
from cluster.local_api_key import find_api_key
from cluster.runtime import LocalCluster

log = logging.getLogger(__name__)

VIAS = ("direct", "gateway", "realtime")


async def run_load(config: MicroturnConfig, sessions: int, seconds: float, via: str = "direct",
                   address: str | None = None, client_processes: int | None = None,
                   realtime_url: str | None = None) -> dict:
    if via not in VIAS:
        raise ValueError(f"via: one of {', '.join(VIAS)}, not {via!r}")
    processes = default_processes(sessions) if client_processes is None else client_processes
    sys.setswitchinterval(0.0005)  # this process may host Ray's driver threads: see deployment.py
    log.info("transport floor: bare gRPC to %d streams from %d client processes", sessions, processes)
    floor = await asyncio.to_thread(measure_transport_floor, sessions, processes)
    async with _cluster_or_address(config, address) as (gateway, cluster):
        target = LoadTarget(
            via=via, gateway=gateway, seconds=seconds,
            realtime_url=_realtime_url(config, gateway, cluster, realtime_url) if via == "realtime" else None,
            redis_url=cluster.endpoints.redis_url if cluster else config.redis.url,
            api_key=cluster.api_key if cluster else find_api_key(config.auth.key_file))
        log.info("%d sessions streaming for %.0f s (%s) from %d client processes", sessions, seconds, via, processes)
        tally = await run_clients(target, plan_sessions(sessions), processes)
        replica = await cluster.foreground.describe.remote() if cluster else {}
    return {
        "bench": "load",
        "sessions": sessions,
        "seconds": seconds,
        "via": via,
        "client_processes": processes,
        **tally.report(),
        **floor.report(),
        "realtime_audio_deltas": tally.audio_deltas if via == "realtime" else None,
        "tick_ms_p50": replica.get("tick_ms_p50"),
        "tick_ms_p99": replica.get("tick_ms_p99"),
        "tick_start_lag_ms_p99": replica.get("tick_start_lag_ms_p99"),
        "replica_niceness": replica.get("niceness"),
        "overruns": replica.get("overruns"),
    }


def _realtime_url(config: MicroturnConfig, gateway: str, cluster: LocalCluster | None, given: str | None) -> str:
    """The gateway's HTTP URL for /v1/realtime: given, the embedded cluster's, or next to the
    gRPC address's port (`serve.realtime_port_for`, as `microturn up` binds it)."""
    if given:
        return given
    if cluster:
        if not cluster.endpoints.realtime:
            raise ValueError("--via realtime: the cluster serves no realtime port (serve.realtime is off)")
        return cluster.endpoints.realtime
    host, _, port = gateway.rpartition(":")
    realtime_port = config.serve.realtime_port_for(int(port))
    if not realtime_port:
        raise ValueError("--via realtime: give --realtime-url (serve.realtime_port is 0: any free port)")
    return f"http://{host}:{realtime_port}"


class _cluster_or_address:
    """An embedded cluster sized for the run, or a running one's gateway address."""

    def __init__(self, config: MicroturnConfig, address: str | None) -> None:
        self.config, self.address = config, address
        self.cluster: LocalCluster | None = None

    async def __aenter__(self):
        if self.address:
            return self.address, None
        self.cluster = LocalCluster(self.config)
        await self.cluster.__aenter__()
        return self.cluster.endpoints.gateway, self.cluster

    async def __aexit__(self, *exc) -> None:
        if self.cluster:
            await self.cluster.__aexit__(*exc)
