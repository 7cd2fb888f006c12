"""`bench load`'s transport floor: bare gRPC streams between spawned processes, every message
counted once, and no process left behind."""

from __future__ import annotations

import multiprocessing

import pytest

from cluster.bench.transport_floor import SETTLE_TICKS, measure_transport_floor


@pytest.mark.timeout(120)
def test_every_stream_gets_every_measured_tick_and_every_process_ends():
    floor = measure_transport_floor(streams=5, client_processes=2, ticks=SETTLE_TICKS + 4)

    assert floor.client_processes == 2
    assert len(floor.samples_ms) == 5 * 4  # 3 + 2 streams, 4 ticks after the settling ones
    assert all(0 < ms < 1000 for ms in floor.samples_ms)
    report = floor.report()
    assert report["transport_floor_messages"] == 20
    assert 0 < report["transport_floor_ms_p50"] <= report["transport_floor_ms_p99"]
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("microturn-transport-floor")]


@pytest.mark.timeout(120)
def test_more_client_processes_than_streams_start_one_per_stream():
    floor = measure_transport_floor(streams=1, client_processes=4, ticks=SETTLE_TICKS + 1)

    assert floor.client_processes == 1
    assert len(floor.samples_ms) == 1
