"""Sessions per GPU for a Moshi-family LM, computed from its config (FLOPs and bytes), not measured.

Decoding one 80 ms frame for N sessions reads every weight once (the batch shares them) and
each session's KV cache once, and computes about 2 FLOPs per weight per session plus the
attention over the cache. On an H100/H200 the frame is bound by memory bandwidth long before
compute, and the session count by memory capacity (the KV cache of a full 3000-frame context is
1.5 GiB a session for Moshi 7B in bf16). So: sessions = (GPU memory - weights - reserve) / KV per
session, and the frame time at that load = bytes read / bandwidth, checked against 80 ms.
Run: `python -m cluster.moshi_capacity [--context FRAMES]`.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass

from foreground.moshi.lm_config import LMConfig
from foreground.moshi.lm_weights import tensor_shapes
from foreground.moshi.presets import MOSHI_7B_LM

GIB = 2**30
# Mimi at its default settings, counted on `moshi`'s own model (parameters; torch's
# FlopCounterMode over one streaming encode + decode of a frame): 79.3 M, 0.86 GFLOP
MIMI_PARAMS = 79_308_609
MIMI_GFLOP_PER_FRAME = 0.86


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    bandwidth_tb_s: float  # HBM, published
    bf16_tflops: float  # dense, published
    reserve_gib: float = 6.0  # CUDA context, activations, Mimi state, fragmentation


GPUS = (Gpu("H100 SXM 80 GB", 80.0, 3.35, 989.0), Gpu("H200 141 GB", 141.0, 4.8, 989.0))


def lm_counts(cfg: LMConfig, context: int) -> dict:
    params = sum(math.prod(s) for s in tensor_shapes(cfg).values())
    embeddings = sum(math.prod(s) for n, s in tensor_shapes(cfg).items() if "emb" in n)
    kv_bytes_per_frame = 2 * cfg.num_layers * cfg.dim * 2  # K and V, every layer, bf16
    depformer_kv = 2 * cfg.depformer_num_layers * cfg.depformer_dim * 2 * cfg.dep_q
    attention_flop = 4 * cfg.num_layers * cfg.dim * context  # QK^T and AV over the whole context
    return {
        "params": params,
        "weight_gib": (params * 2 + MIMI_PARAMS * 4) / GIB,  # LM in bf16, Mimi in fp32
        "kv_gib_per_session": (kv_bytes_per_frame * context + depformer_kv) / GIB,
        "gflop_per_session_frame": (2 * (params - embeddings) + attention_flop) / 1e9 + MIMI_GFLOP_PER_FRAME,
    }


def capacity(cfg: LMConfig, gpu: Gpu, context: int, frame_ms: float = 80.0) -> dict:
    c = lm_counts(cfg, context)
    sessions = int((gpu.memory_gib - c["weight_gib"] - gpu.reserve_gib) // c["kv_gib_per_session"])
    read_gb = (c["weight_gib"] + sessions * c["kv_gib_per_session"]) * GIB / 1e9
    memory_ms = read_gb / gpu.bandwidth_tb_s
    compute_ms = sessions * c["gflop_per_session_frame"] / (gpu.bf16_tflops * 1e3) * 1e3
    return {
        "gpu": gpu.name, "context_frames": context, "sessions_by_memory": sessions,
        "weights_gib": round(c["weight_gib"], 1), "kv_gib_per_session": round(c["kv_gib_per_session"], 3),
        "frame_ms_memory_bound": round(memory_ms, 1), "frame_ms_compute_at_peak": round(compute_ms, 2),
        "realtime_at_that_load": max(memory_ms, compute_ms) < frame_ms,
        "gflop_per_session_frame": round(c["gflop_per_session_frame"], 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--context", type=int, nargs="*", default=[3000, 375], help="frames of context (3000: 4 min)")
    args = parser.parse_args(argv)
    cfg = LMConfig.from_kyutai(MOSHI_7B_LM)
    for context in args.context:
        for gpu in GPUS:
            print(json.dumps(capacity(cfg, gpu, context)))


if __name__ == "__main__":
    main()
