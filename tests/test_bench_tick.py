"""`microturn bench tick`: the report's invariants on a small run (timing targets stay in the bench)."""

from __future__ import annotations

import json

import pytest
import torch

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
    # The products alone take less than the tick (which runs them and more), at most its floor rate.
    assert 0 < result["gemm_replay_ms"] < result["tick_ms_p50"] and result["gemm_calls_per_tick"] > 0
    assert result["gemm_gflop"] >= result["tick_gflop"]  # the counted FLOPs, and padding rows
    # ... and their ratio to the floor is at the reference rate timed in turns with them.
    assert result["gemm_replay_floor_ratio"] == pytest.approx(
        result["gemm_replay_ms"] * result["gemm_replay_matmul_gflops"] / (result["tick_gflop"] * 1e3), rel=2e-2)
    assert {"engine.vad", "backbone.attention", "backbone.moe"} <= result["stages"].keys()
    # Every product ran inside a stage, and the stages' replays add up to the tick's.
    for key in ("gemm_replay_ms", "gemm_in_tick_ms"):
        by_stage = {s: row[key] for s, row in result["stages"].items() if key in row}
        assert "unstaged" not in by_stage and by_stage["backbone.moe"] > 0
        assert sum(by_stage.values()) == pytest.approx(result[key], abs=0.1)
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


def test_the_gemm_replay_counts_each_product_with_its_layout_and_flops():
    from cluster.bench.gemm_replay import UNSTAGED, record_matmuls, replay

    x, w = torch.randn(64, 32), torch.randn(48, 32)
    out, scores = torch.empty(64, 48), torch.empty(4, 8, 16)
    q, k = torch.randn(4, 8, 5), torch.randn(4, 16, 5)

    def tick():
        for _ in range(3):
            torch.mm(x, w.t(), out=out)  # a transposed weight, as `linear` passes it
        torch.bmm(q, k.transpose(1, 2), out=scores)
        torch.addmm(out[:1, :1].view(1), x[:1], w[:1].t())  # an addmm through a view

    recording = record_matmuls(tick, ticks=2)
    assert sorted(recording.calls.values()) == [2, 2, 6]
    mm = next(c for _, c in recording.calls if c.op.overloadpacket is torch.ops.aten.mm)
    assert [a.stride for a in mm.args] == [(32, 1), (1, 32)]  # the layout, not only the shape
    result = replay(recording, rounds=2, repeats=3)
    assert result.calls == 5 and result.distinct == 3  # per tick
    assert result.replay_by_stage_ms.keys() == result.in_tick_by_stage_ms.keys() == {UNSTAGED}
    assert result.gflop * 1e9 == 3 * 2 * 64 * 32 * 48 + 2 * 4 * 8 * 5 * 16 + 2 * 1 * 32 * 1
    assert result.replay_ms > 0 and result.in_tick_ms > 0


def test_the_gemm_replay_puts_each_product_in_the_stage_it_ran_in():
    from cluster.bench.gemm_replay import record_matmuls
    from foreground.engine.stage_clock import STAGES

    a = torch.randn(8, 8)

    def tick():
        STAGES.start()
        torch.mm(a, a)
        STAGES.lap("first")
        torch.mm(a, a)
        torch.bmm(a[None], a[None])
        STAGES.lap("second")

    recording = record_matmuls(tick)
    by_stage = {}
    for (stage, _), n in recording.calls.items():
        by_stage[stage] = by_stage.get(stage, 0) + n
    assert by_stage == {"first": 1, "second": 2}
    assert recording.in_tick_ms.keys() == {"first", "second"}
    assert not STAGES.enabled and STAGES.on_lap is None  # the clock is off again, as in serving
