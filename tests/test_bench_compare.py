"""`microturn bench compare` and the checkpoint's byte-level tokenizer (what lets vLLM serve
our checkpoint folder as it is).

The slow test runs the whole comparison (a real vLLM engine on CPU, ~15-60 s to start) with
two small session counts and checks that both sides report numbers, that vLLM computed the
same greedy token as our backbone in one forward a tick, on microturn's thread count, that both
sides were profiled op by op, and that vLLM's host process is gone.
"""

from __future__ import annotations

import json
import math
import os

import psutil
import pytest
import torch
from transformers import AutoTokenizer

from foreground.model.checkpoint import write_seeded_checkpoint
from foreground.model.config import BOS_ID, EMPTY_ID, EOS_ID, PAD_ID, TEXT_VOCAB
from foreground.model.tokenizer import _bytes_to_unicode

ENV_KEYS = ("VLLM_CPU_KVCACHE_SPACE", "HF_HUB_OFFLINE", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR",
            "VLLM_WORKER_MULTIPROC_METHOD", "VLLM_CPU_OMP_THREADS_BIND")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_seeded_checkpoint(tmp_path_factory.mktemp("compare"), "tiny", seed=0)


def test_checkpoint_tokenizer_maps_ids_0_to_255_to_single_bytes(checkpoint):
    tok = AutoTokenizer.from_pretrained(str(checkpoint))
    assert len(tok) == TEXT_VOCAB
    to_byte = {ch: b for b, ch in _bytes_to_unicode().items()}
    for i in range(256):
        (piece,) = tok.convert_ids_to_tokens([i])
        assert to_byte[piece] == i, f"id {i} is {piece!r}"
        assert tok.convert_tokens_to_ids(piece) == i
        if i < 128:
            assert tok.decode([i]) == chr(i)
    assert [tok.convert_tokens_to_ids(t) for t in ("<pad>", "<s>", "</s>", "<empty>")] == [
        PAD_ID, BOS_ID, EOS_ID, EMPTY_ID]
    assert tok.pad_token_id == PAD_ID and tok.bos_token_id == BOS_ID and tok.eos_token_id == EOS_ID


def test_checkpoint_folder_is_what_vllm_loads(checkpoint):
    """vLLM refuses unknown tensors and reads every *.safetensors unless the index names some."""
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {"model.safetensors"}
    assert all(not k.startswith("interaction.") for k in index["weight_map"])
    assert "lm_head.weight" in index["weight_map"] and (checkpoint / "interaction.safetensors").exists()


def check_round_trip(folder) -> None:
    tok = AutoTokenizer.from_pretrained(str(folder))
    text = "héllo, wörld ✓ \n\t{\"a\": 1}"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_checkpoint_tokenizer_round_trips_utf8(checkpoint):
    check_round_trip(checkpoint)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compare_reports_both_sides_and_stops_vllm(checkpoint, tmp_path):
    from cluster.bench.compare import run_compare

    saved = {key: os.environ.get(key) for key in ENV_KEYS}  # the vLLM side sets them (setdefault)
    os.environ["VLLM_CACHE_ROOT"] = str(tmp_path / "vllm")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    threads = torch.get_num_threads()
    try:
        result = run_compare([1, 2], ticks=3, checkpoint=checkpoint, warmup=2)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    check_round_trip(result["checkpoint"])
    assert result["bench"] == "compare" and result["sessions"] == [1, 2]
    assert result["microturn_threads"] == 1 and torch.get_num_threads() == threads  # restored
    assert result["vllm"]["compute_threads"] == 1  # vLLM on as many threads as microturn
    assert [r["sessions"] for r in result["results"]] == [1, 2]
    for row in result["results"]:
        for key in ("microturn_tick_ms_p50", "microturn_tick_ms_p99", "microturn_backbone_ms_p50",
                    "vllm_tick_ms_p50", "vllm_tick_ms_p99", "ratio_p50"):
            assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, key
        assert row["microturn_backbone_ms_p50"] <= row["microturn_tick_ms_p50"]
        # Floors: what each side must compute at this process's matmul rate; nobody beats theirs.
        assert row["matmul_gflops"] > 0 and row["microturn_floor_ratio"] > 1 and row["vllm_floor_ratio"] > 1
        assert row["ratio_at_microturn_floor"] == pytest.approx(
            row["vllm_tick_ms_p50"] / row["microturn_flop_floor_ms"], rel=0.02)
        # microturn's products alone: less than its tick, which runs them and more.
        assert 0 < row["microturn_gemm_replay_ms"] < row["microturn_tick_ms_p50"]
        assert row["ratio_at_microturn_gemm_replay"] == pytest.approx(
            row["vllm_tick_ms_p50"] / row["microturn_gemm_replay_ms"], rel=0.02)
        assert row["vllm_context_tokens_mean"] == 12 * (2 + 2)  # ticks 3..5 of 5: 36, 48, 60
        # Every session's request of a tick in one engine forward, as microturn's one batched tick.
        assert row["vllm_forwards_per_tick"] == 1.0
        for side, profile in row["profile"].items():
            ops = profile["top_ops"]
            assert profile["ticks"] == 3 and ops, side
            assert [op["self_ms_per_tick"] for op in ops] == sorted((op["self_ms_per_tick"] for op in ops),
                                                                    reverse=True), side
            assert 0 < ops[0]["self_ms_per_tick"] <= profile["ops_self_ms_per_tick"] <= profile["wall_ms_per_tick"]
        # microturn's tick is mostly products (ATen's mm/bmm); vLLM's model ran in its host,
        # where it was profiled: its MoE and attention kernels are there.
        assert 0 < row["profile"]["microturn"]["products_self_ms_per_tick"] < row["profile"]["microturn"][
            "ops_self_ms_per_tick"]
        assert {"_C::cpu_fused_moe", "_C::cpu_attention_with_kv_cache"} <= {
            op["op"] for op in row["profile"]["vllm"]["top_ops"]}
    assert result["results"][1]["vllm_prefix_cached_fraction"] > 0  # 48 and 60 reuse a block
    assert result["vllm_greedy_check"]["same_next_token_as_microturn_backbone"]
    assert result["vllm_processes_left"] == []
    json.dumps(result)  # the CLI prints it as one line
    after = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    engines = [p for p in after if not any("resource_tracker" in c for c in _cmdline(p))]
    assert engines == [], [(p.pid, _cmdline(p)) for p in engines]


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []
