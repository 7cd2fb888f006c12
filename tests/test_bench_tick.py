"""`microturn bench tick`: the report's invariants on a small run (timing targets stay in the bench)."""

from __future__ import annotations

import json

import pytest

from cluster.bench import tick as tick_bench
from foreground.kernels.matmul import invariant_kernels


@pytest.mark.timeout(300)
def test_a_small_run_reports_invariance_allocations_floor_and_paired_ratio():
    result = tick_bench.run_tick_bench(sessions=3, ticks=6)
    assert result["invariant"] is True and result["hot_path_allocations"] == 0
    assert invariant_kernels()  # the paired phase leaves the default kernels on
    assert result["tick_ms_p50"] <= result["tick_ms_p99"] <= result["tick_ms_max"]
    # The ratio is the paired phase's: its invariant p50 over its fast p50.
    assert result["invariant_overhead_ratio"] == pytest.approx(
        result["paired_invariant_tick_ms_p50"] / result["fast_tick_ms_p50"], abs=2e-3)
    assert result["flop_floor_ms"] > 0 and result["floor_ratio"] > 1
    assert {"engine.vad", "backbone.attention", "backbone.moe"} <= result["stages"].keys()
    json.dumps(result)


def test_the_paired_phase_takes_turns_and_restores_the_kernels():
    seen: list[bool] = []

    class Driver:
        def tick(self) -> float:
            seen.append(invariant_kernels())
            return 1.0 if seen[-1] else 2.0

    ms = tick_bench._paired_kernel_ticks(Driver(), ticks=7)
    assert ms[True] == [1.0] * 7 and ms[False] == [2.0] * 7
    block = tick_bench.PAIR_BLOCK
    assert seen[:4 * block] == ([True] * block + [False] * block) * 2  # turns of PAIR_BLOCK ticks
    assert invariant_kernels()


@pytest.mark.timeout(300)
def test_replay_alone_catches_a_session_whose_batched_outputs_differ():
    names = ["a", "b"]
    chunks = tick_bench.synthetic_chunks(2, 3200, seed=0)
    engine = tick_bench._new_engine(None, "tiny", 2, "hybrid")
    for i, name in enumerate(names):
        engine.join(name, seed=i)
    digests: dict[str, list[str]] = {}
    driver = tick_bench._Driver(engine, names, chunks)
    for _ in range(3):
        driver.tick(digests)
    assert tick_bench._replay_alone(None, "tiny", names, chunks, digests, 3, "hybrid")
    digests["b"][1] = "0" * 32  # as if session b's second tick had come out otherwise in the batch
    assert not tick_bench._replay_alone(None, "tiny", names, chunks, digests, 3, "hybrid")
