"""Moshi-family checkpoints made by `moshi`'s own classes (the reference), for parity runs.

`microturn checkpoint init --family moshi --made-by moshi` builds the LM and Mimi with
`moshi.models.loaders` at a preset's shape, initialised by moshi's own code from a seed, and
writes them in Kyutai's layout: a folder microturn has never written, to check it reads what
the reference writes. A fresh moshi Mimi has all-zero codebooks (every code would be 0), so
distinct codebook vectors are drawn, with usage counts other than 1 (the codec divides by them).
"""

from __future__ import annotations

from pathlib import Path

import torch

from foreground.moshi.checkpoint import write_moshi_folder
from foreground.moshi.presets import lm_preset, mimi_preset
from foreground.moshi.seeded import PRESETS, TEXT_VOCAB
from foreground.moshi.text_tokenizer import train_tokenizer


def random_codebooks(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = dict(state)
    for name in [n for n in state if n.endswith("_codebook.cluster_usage")]:
        prefix = name.removesuffix("cluster_usage")
        usage = 0.5 + 1.5 * torch.rand(state[name].shape, generator=g)
        vectors = torch.randn(state[prefix + "embedding_sum"].shape, generator=g)
        vectors = 0.1 * vectors / vectors.norm(dim=-1, keepdim=True)
        state[name], state[prefix + "embedding_sum"] = usage, vectors * usage[:, None]
    return state


def write_reference_checkpoint(folder: str | Path, preset: str = "small", seed: int = 0) -> Path:
    from moshi.models.loaders import get_mimi, get_moshi_lm

    if preset not in PRESETS:
        raise ValueError(f"unknown Moshi preset {preset!r}: choose one of {', '.join(PRESETS)}")
    lm_dict, mimi_dict = lm_preset(preset, text_card=TEXT_VOCAB[preset]), mimi_preset(preset)
    torch.manual_seed(seed)
    lm = get_moshi_lm(None, lm_kwargs=lm_dict, dtype=torch.float32)
    codebooks = max(lm_dict["dep_q"], lm_dict["n_q"] - lm_dict["dep_q"])
    mimi = get_mimi(None, mimi_dict, num_codebooks=codebooks)
    return write_moshi_folder(folder, lm_dict, mimi_dict, lm.state_dict(),
                              random_codebooks(mimi.state_dict(), seed + 1), train_tokenizer(TEXT_VOCAB[preset]))
