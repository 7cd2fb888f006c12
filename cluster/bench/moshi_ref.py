"""`microturn bench moshi-ref`: the `moshi` package served the way its own server serves it.

Kyutai's `moshi.server` holds a lock around one batch-1 conversation per process: to serve N
people one runs N processes. This bench starts N processes (the machine's threads split among
them; they start their timed frames together), each running one conversation on the same checkpoint: Mimi encode, one `LMGen` step
(sampling as the server does), Mimi decode, paced at one frame per 80 ms as live audio
arrives. A frame's time runs from its boundary to its decoded audio (so waiting for a core
counts); `realtime` means every process's p99 is under 80 ms. The numbers sit beside
`microturn bench tick --checkpoint DIR` (all sessions in one batched step).
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
    start_together, timings = ctx.Barrier(sessions), ctx.Queue()
    workers = [ctx.Process(target=_one_conversation, args=(str(checkpoint), frames, threads, i, start_together, timings))
               for i in range(sessions)]
    for worker in workers:
        worker.start()
    results = [timings.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
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
def _one_conversation(checkpoint: str, frames: int, threads: int, index: int, start_together, timings) -> None:
    """One process, one conversation; every process starts its frames at the same moment
    (after all have loaded), so that they compete for the cores as a server's would."""
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
    ms = []
    with mimi.streaming(1), gen.streaming(1):
        for f in range(WARMUP_FRAMES + frames):
            if f == WARMUP_FRAMES:
                start_together.wait()
                t0 = time.perf_counter()
            pcm = 0.05 * torch.randn(1, 1, SAMPLES_PER_FRAME, generator=gen_audio)
            if f >= WARMUP_FRAMES:
                boundary = t0 + (f - WARMUP_FRAMES) * FRAME_MS / 1000
                time.sleep(max(0.0, boundary - time.perf_counter()))
            started = time.perf_counter()
            tokens = gen.step(mimi.encode(pcm))
            if tokens is not None:
                mimi.decode(tokens[:, 1:])
            if f >= WARMUP_FRAMES:
                ms.append((time.perf_counter() - min(started, boundary)) * 1000)
    timings.put(ms)
