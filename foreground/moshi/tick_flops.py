"""How much arithmetic one 80 ms frame of a Moshi-family model needs, for `bench tick`'s floor.

The LM is counted from its config: 2 FLOPs per weight per session (every weight but the
embeddings is used once a frame: the temporal transformer once, each depformer step its own
weights) plus the temporal attention over the whole context window. Mimi's streaming encode and
decode of one frame is counted by torch's `FlopCounterMode` over a single slot (no batch, no
padding), once per codec.
"""

from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from foreground.moshi.lm_config import LMConfig
from foreground.moshi.lm_weights import tensor_shapes
from foreground.moshi.mimi import MimiCodec, MimiStreams


def lm_flops_per_session(cfg: LMConfig) -> int:
    shapes = tensor_shapes(cfg)
    weights = sum(math.prod(s) for name, s in shapes.items() if "emb" not in name)
    attention = 4 * cfg.num_layers * cfg.dim * cfg.context  # QK^T and AV over the window
    return 2 * weights + attention


def mimi_flops_per_session(codec: MimiCodec) -> tuple[int, int]:
    """(encode, decode): one frame each way through a fresh single-slot stream."""
    streams = MimiStreams(codec, 1)
    pcm = torch.zeros(1, codec.cfg.samples_per_frame)
    codes = torch.zeros(1, codec.cfg.num_codebooks, dtype=torch.int64)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as encode:
            streams.encode(pcm, out=codes)
        with FlopCounterMode(display=False) as decode:
            streams.decode(codes, out=pcm)
    return encode.get_total_flops(), decode.get_total_flops()
