"""`op_profile`: the per-tick op table `bench compare` prints for each side."""

from __future__ import annotations

import pytest
import torch

from cluster.bench.op_profile import TOP_OPS, op_table, profile_ticks


def test_op_table_is_per_tick_largest_first_and_counts_products():
    ops = [("aten::add_", 30, 3.0), ("aten::mm", 20, 12.0), ("_C::onednn_mm", 10, 6.0),
           ("_C::cpu_fused_moe", 4, 9.0)]
    table = op_table(ops, ticks=2, wall_ms=40.0)
    assert [op.op for op in table.top_ops] == ["aten::mm", "_C::cpu_fused_moe", "_C::onednn_mm", "aten::add_"]
    assert table.top_ops[0].calls_per_tick == 10 and table.top_ops[0].self_ms_per_tick == 6.0
    assert table.top_ops[0].share == pytest.approx(12 / 30, abs=1e-3)
    assert table.ops_self_ms_per_tick == 15.0 and table.wall_ms_per_tick == 20.0
    assert table.products_self_ms_per_tick == 9.0  # mm and oneDNN's; the fused MoE is not split
    many = op_table([(f"op{i}", 1, float(i)) for i in range(TOP_OPS + 5)], ticks=1, wall_ms=1.0)
    assert len(many.top_ops) == TOP_OPS and many.top_ops[0].op == f"op{TOP_OPS + 4}"


def test_profile_ticks_finds_the_products_a_tick_runs():
    a, b, out = torch.randn(64, 64), torch.randn(64, 64), torch.empty(64, 64)

    def ticks(n: int) -> None:
        for _ in range(n):
            torch.mm(a, b, out=out)
            out.add_(1.0)

    table = profile_ticks(ticks, 3)
    by_op = {op.op: op for op in table.top_ops}
    assert by_op["aten::mm"].calls_per_tick == 1 and by_op["aten::add_"].calls_per_tick == 1
    assert 0 < table.products_self_ms_per_tick < table.ops_self_ms_per_tick <= table.wall_ms_per_tick
    assert table.to_json()["top_ops"][0]["op"] in by_op
