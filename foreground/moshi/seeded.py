"""Seeded Moshi-family checkpoints: real compute, meaningless content, in Kyutai's layout.

No small trained Moshi exists to ship; like the reference model's seeded default, these let
everything (serving, batching, parity, benchmarks) run without downloading anything.
"""

from __future__ import annotations

from pathlib import Path

from foreground.moshi.checkpoint import write_moshi_folder
from foreground.moshi.lm import MoshiLM
from foreground.moshi.lm_config import LMConfig
from foreground.moshi.mimi import MimiCodec
from foreground.moshi.mimi_config import MimiConfig
from foreground.moshi.presets import lm_preset, mimi_preset
from foreground.moshi.text_tokenizer import train_tokenizer

PRESETS = ("tiny", "small", "medium")
TEXT_VOCAB = {"tiny": 300, "small": 400, "medium": 500}


def write_seeded_moshi(folder: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    if preset not in PRESETS:
        raise ValueError(f"unknown Moshi preset {preset!r}: choose one of {', '.join(PRESETS)}")
    lm_dict, mimi_dict = lm_preset(preset, text_card=TEXT_VOCAB[preset]), mimi_preset(preset)
    lm_cfg = LMConfig.from_kyutai(lm_dict)
    num_codebooks = max(lm_cfg.dep_q, lm_cfg.n_q - lm_cfg.dep_q)
    mimi_cfg = MimiConfig.from_kyutai(mimi_dict, num_codebooks=num_codebooks)
    return write_moshi_folder(folder, lm_dict, mimi_dict, MoshiLM.seeded_state_dict(lm_cfg, seed),
                              MimiCodec.seeded_state_dict(mimi_cfg, seed + 1),
                              train_tokenizer(TEXT_VOCAB[preset]))
