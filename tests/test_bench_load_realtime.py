"""`microturn bench load` over the OpenAI Realtime WebSocket and from several client processes:
the bridge names the append each tick used, samples from every process are merged before any
percentile is taken, and a tiny load against a live cluster measures chunks with no errors and
leaves no client process behind."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import pickle
import struct
import threading
import time

import pytest

from cluster import event_loop
from cluster.bench.load import run_load
from cluster.bench.load_processes import _reply
from cluster.bench.load_tally import LoadTally
from cluster.config import load_config
from cluster.realtime.audio import AudioSource, InputBuffer
from cluster.runtime import LocalCluster
from foreground.engine.percentiles import percentile

CHUNK = 9_600  # bytes: 200 ms of 24 kHz PCM16
KEYS = ("chunks_measured", "chunk_overhead_ms_p50", "chunk_overhead_ms_p99", "inbound_ms_p50", "inbound_ms_p99",
        "outbound_ms_p50", "outbound_ms_p99", "round_trip_ms_p50", "round_trip_ms_p99", "chunks_sent",
        "late_chunks", "bg_results_published", "bg_results_woven", "bg_result_to_tick_ms_p99", "errors",
        "error_samples", "client_processes", "tick_ms_p50")


def test_the_input_buffer_names_the_append_that_carried_each_chunks_last_byte():
    buf = InputBuffer(CHUNK // 2)
    a, b, c, d, e = (AudioSource(name, i) for i, name in enumerate("abcde"))
    buf.append(bytes(CHUNK), a)
    buf.take()
    assert buf.last_source == a
    buf.append(bytes(5_760), b)  # 120 ms pieces, as the SDK test's microphone sends
    buf.append(bytes(5_760), c)
    buf.take()  # all of b and 3840 bytes of c
    assert buf.last_source == c
    buf.take()  # 1920 bytes of c wait, and c is not fresh any more: sent padded
    assert buf.last_source == c
    buf.append(bytes(5_760), d)
    buf.take()  # fresh and not whole: silence
    assert buf.last_source is None
    buf.clear()
    buf.append(bytes(CHUNK), e)
    buf.take()
    assert buf.last_source == e


@pytest.mark.timeout(30)
def test_a_client_processs_tally_that_arrives_in_pieces_is_read_whole_on_uvloop():
    """uvloop's add_reader leaves the pipe non-blocking; a tally that arrives in pieces (a 20 s
    run's samples are a few hundred kB) must still be read whole, not dropped as "sent no results"."""
    mine, theirs = multiprocessing.Pipe()
    tally = LoadTally(overhead_ms=[float(i) for i in range(10_000)])
    data = pickle.dumps(tally)
    assert 60_000 < len(data) < 120_000
    half = len(data) // 2

    def send_in_two_pieces() -> None:  # Connection.send's framing: a 4-byte length, then the bytes
        time.sleep(0.2)  # the reader waits on the event loop by then
        os.write(theirs.fileno(), struct.pack("!i", len(data)) + data[:half])
        time.sleep(0.3)  # the reader has been woken and is reading: the rest comes later
        os.write(theirs.fileno(), data[half:])

    sender = threading.Thread(target=send_in_two_pieces)
    sender.start()
    try:
        got = event_loop.run(_reply(mine, timeout_s=10))
    finally:
        sender.join()
    assert isinstance(got, LoadTally) and got.overhead_ms == tally.overhead_ms


def test_the_tally_takes_the_bridges_wait_out_and_merges_raw_samples_before_percentiles():
    one = LoadTally()
    ms = 1_000_000
    # sent at 0; the bridge had it at 2 and sent it at 102; the replica got it at 104, ticked 110..290; back at 295.
    one.add_chunk(0, 295 * ms, 104 * ms, 110 * ms, 290 * ms, bridge_wait_ns=100 * ms)
    assert one.overhead_ms == [9.0] and one.inbound_ms == [4.0] and one.outbound_ms == [5.0]
    assert one.bridge_wait_ms == [100.0] and one.late_chunks == 0
    one.add_hops(0, 2 * ms, 102 * ms, 104 * ms, 290 * ms, 293 * ms, 295 * ms)  # the bridge had the output at 293
    hops = one.report()
    assert (hops["client_to_bridge_ms_p50"], hops["bridge_to_replica_ms_p50"], hops["replica_to_bridge_ms_p50"],
            hops["bridge_to_client_ms_p50"]) == (2.0, 2.0, 3.0, 2.0)  # they add up to the overhead, 9
    assert "client_to_bridge_ms_p50" not in LoadTally().report()  # gRPC clients have no bridge
    fast, slow = LoadTally(overhead_ms=[1.0] * 99), LoadTally(overhead_ms=[50.0] * 3, errors=["x"], chunks_sent=3)
    merged = LoadTally()
    for tally in (fast, slow):
        merged.absorb(tally)
    assert merged.report()["chunk_overhead_ms_p99"] == percentile([1.0] * 99 + [50.0] * 3, 99) == 50.0
    assert merged.report()["errors"] == 1 and merged.chunks_sent == 3


def _check(result: dict, via: str) -> None:
    assert result["via"] == via and result["client_processes"] == 2
    assert set(KEYS) <= result.keys()
    assert result["errors"] == 0, result["error_samples"]
    assert result["chunks_measured"] > 0 and result["chunks_sent"] > 0
    for key in ("chunk_overhead_ms_p50", "chunk_overhead_ms_p99", "inbound_ms_p99", "outbound_ms_p99"):
        assert math.isfinite(result[key]) and result[key] > -1.0, (key, result[key])  # one clock: >= 0, to rounding
    assert result["chunk_overhead_ms_p99"] < result["round_trip_ms_p99"]
    assert result["bg_results_published"] > 0 and result["bg_results_woven"] >= 1
    assert result["transport_floor_messages"] > 0 and 0 < result["transport_floor_ms_p50"] <= result["transport_floor_ms_p99"]
    clients = [p for p in multiprocessing.active_children()
               if p.name.startswith(("microturn-bench-client", "microturn-transport-floor"))]
    assert not clients  # every client process was ended (other tests' processes, e.g. vLLM's, may live on)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_tiny_realtime_and_grpc_load_from_two_client_processes(ray_cluster, redis_server):
    config = load_config(redis__url=redis_server.url, ray__address=ray_cluster, serve__grpc_port=0,
                         foreground__num_cpus=0.25, foreground__max_sessions=4, foreground__threads=1)

    async def scenario() -> tuple[dict, dict]:
        async with LocalCluster(config) as cluster:
            endpoints = cluster.endpoints
            realtime = await run_load(config, sessions=2, seconds=4.0, via="realtime", address=endpoints.gateway,
                                      client_processes=2, realtime_url=endpoints.realtime)
            direct = await run_load(config, sessions=2, seconds=4.0, via="direct", address=endpoints.gateway,
                                    client_processes=2)
        return realtime, direct

    realtime, direct = asyncio.run(scenario())
    _check(realtime, "realtime")
    assert realtime["bridge_wait_ms_p50"] is not None and realtime["bridge_wait_ms_p50"] >= 0
    assert realtime["realtime_audio_deltas"] is not None
    assert all(realtime[f"{hop}_ms_p99"] > -1.0 for hop in ("client_to_bridge", "bridge_to_replica",
                                                            "replica_to_bridge", "bridge_to_client"))
    _check(direct, "direct")
    assert direct["bridge_wait_ms_p50"] is None
