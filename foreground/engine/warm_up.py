"""One throwaway tick before a replica serves.

First-use costs (the matmul kernels' check of each weight shape, `kernels.matmul`, and any
buffer made lazily) would otherwise land in the first live sessions' ticks: on a loaded replica
that delayed ticks past their boundaries and made clients' chunks late. A scratch session with a
tone and, where the family takes video, a frame runs every path a live tick runs.
"""

from __future__ import annotations

import contextlib

import torch

from foreground.engine.delegation import CollectingJobSink
from foreground.engine.input_validation import InvalidInput
from foreground.engine.tick_scheduler import TickScheduler

SCRATCH_SESSION = "warm-up"


def warm_up(engine: TickScheduler) -> None:
    """Tick once on a scratch session, then leave: no session, no job and tick count 0 remain."""
    samples = engine.shape.samples(16_000)
    tone = (8000 * torch.sin(torch.arange(samples) * 0.1)).to(torch.int16).numpy().tobytes()
    jobs, engine.jobs = engine.jobs, CollectingJobSink()  # a job it might delegate goes nowhere
    engine.join(SCRATCH_SESSION, input_rate=16_000, seed=0)
    try:
        engine.submit_audio(SCRATCH_SESSION, tone, sample_rate=16_000)
        with contextlib.suppress(InvalidInput):  # a family without video refuses it by name
            engine.submit_video(SCRATCH_SESSION, raw_rgb=bytes(16 * 16 * 3), width=16, height=16)
        engine.tick()
    finally:
        engine.leave(SCRATCH_SESSION)
        engine.jobs = jobs
    engine.tick_count = 0
