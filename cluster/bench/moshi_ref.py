"""`microturn bench moshi-ref`: the `moshi` package served the way its own server serves it.

Kyutai's `moshi.server` holds a lock around one batch-1 conversation per process: to serve N
people one runs N processes. This bench starts N processes (the machine's threads split among
them), each running one conversation on the same checkpoint: Mimi encode, one `LMGen` step
(sampling as the server does), Mimi decode, every 80 ms frame, timed back to back. The numbers
sit beside `microturn bench tick --checkpoint DIR` (all sessions in one batched step).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from pathlib import Path

import torch

from foreground.engine.percentiles import percentile

log = logging.getLogger(__name__)

WARMUP_FRAMES = 3
FRAME_MS = 80.0


def run_moshi_ref(checkpoint: Path, sessions: int = 1, frames: int = 50) -> dict:
    cpus = len(os.sched_getaffinity(0))
    threads = max(1, cpus // sessions)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(sessions) as pool:
        results = pool.starmap(_one_conversation, [(str(checkpoint), frames, threads, i) for i in range(sessions)])
    per_session_p99 = [percentile(ms, 99) for ms in results]
    every = [m for ms in results for m in ms]
    return {
        "bench": "moshi-ref",
        "checkpoint": str(checkpoint),
        "sessions": sessions,
        "processes": sessions,
        "threads_per_process": threads,
        "frames": frames,
        "frame_ms_p50": round(percentile(every, 50), 2),
        "frame_ms_p99": round(percentile(every, 99), 2),
        "realtime_sessions": sum(p < FRAME_MS for p in per_session_p99),
        "realtime": all(p < FRAME_MS for p in per_session_p99),
    }


@torch.no_grad()
def _one_conversation(checkpoint: str, frames: int, threads: int, index: int) -> list[float]:
    from moshi.models.lm import LMGen
    from moshi.models.loaders import CheckpointInfo

    from foreground.moshi.checkpoint import read_moshi_folder
    from foreground.moshi.presets import SAMPLES_PER_FRAME

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    info = read_moshi_folder(checkpoint)
    ck = CheckpointInfo(moshi_weights=info.lm_weights, mimi_weights=info.mimi_weights, tokenizer=info.tokenizer,
                        lm_config=info.lm_config, mimi_config=info.mimi_config)
    mimi, lm = ck.get_mimi(), ck.get_moshi(dtype=torch.float32)
    torch.manual_seed(index)
    gen = LMGen(lm)  # sampling with the server's defaults
    gen_audio = torch.Generator().manual_seed(index)
    timings = []
    with mimi.streaming(1), gen.streaming(1):
        for f in range(WARMUP_FRAMES + frames):
            pcm = 0.05 * torch.randn(1, 1, SAMPLES_PER_FRAME, generator=gen_audio)
            started = time.perf_counter()
            tokens = gen.step(mimi.encode(pcm))
            if tokens is not None:
                mimi.decode(tokens[:, 1:])
            if f >= WARMUP_FRAMES:
                timings.append((time.perf_counter() - started) * 1000)
    return timings
