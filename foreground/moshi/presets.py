"""Configurations in Kyutai's own format (the dicts their `config.json` files hold).

`MOSHI_7B_LM` and `MIMI_DEFAULT` are what `moshi.models.loaders` uses when a folder has no
`config.json` / no `mimi_config_name`. The small presets keep every structural feature of the
real model (per-stream delays, per-codebook depformer weights, 8 of N codebooks, the SEANet
ratios that give 1920 samples a frame) at shapes that run on a CPU in tests.
"""

from __future__ import annotations

import copy

SAMPLE_RATE = 24_000
FRAME_RATE = 12.5
SAMPLES_PER_FRAME = 1920  # 80 ms at 24 kHz

LM_WEIGHTS_NAME = "model.safetensors"
MIMI_WEIGHTS_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
TOKENIZER_NAME = "tokenizer_spm_32k_3.model"

_SEANET = {
    "channels": 1, "dimension": 512, "causal": True, "n_filters": 64, "n_residual_layers": 1,
    "activation": "ELU", "compress": 2, "dilation_base": 2, "disable_norm_outer_blocks": 0,
    "kernel_size": 7, "residual_kernel_size": 3, "last_kernel_size": 3, "norm": "none",
    "pad_mode": "constant", "ratios": [8, 6, 5, 4], "true_skip": True,
}
MIMI_DEFAULT = {
    "sample_rate": SAMPLE_RATE, "channels": 1, "frame_rate": FRAME_RATE,
    "seanet": _SEANET,
    "quantizer": {"dimension": 256, "n_q": 32, "bins": 2048, "input_dimension": 512, "output_dimension": 512},
    "transformer": {
        "d_model": 512, "num_heads": 8, "num_layers": 8, "causal": True, "layer_scale": 0.01,
        "context": 250, "conv_layout": True, "max_period": 10000, "gating": "none", "norm": "layer_norm",
        "positional_embedding": "rope", "dim_feedforward": 2048, "input_dimension": 512,
        "output_dimensions": [512],
    },
}

MOSHI_7B_LM = {
    "dim": 4096, "text_card": 32000, "existing_text_padding_id": 3, "n_q": 16, "dep_q": 8, "card": 2048,
    "num_heads": 32, "num_layers": 32, "hidden_scale": 4.125, "causal": True, "layer_scale": None,
    "context": 3000, "max_period": 10000, "gating": "silu", "norm": "rms_norm_f32",
    "positional_embedding": "rope", "depformer_dim": 1024, "depformer_dim_feedforward": int(4.125 * 1024),
    "depformer_num_heads": 16, "depformer_num_layers": 6, "depformer_layer_scale": None,
    "depformer_multi_linear": True, "depformer_context": 8, "depformer_max_period": 10000,
    "depformer_gating": "silu", "depformer_pos_emb": "none", "depformer_weights_per_step": True,
    "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
}


def mimi_preset(name: str) -> dict:
    """Mimi settings for a preset: `default` (Moshi's), `tiny`, `small` or `medium`."""
    cfg = copy.deepcopy(MIMI_DEFAULT)
    if name == "default":
        return cfg
    dim, q_dim, bins, layers, heads, ff, filters, context = {
        "tiny": (32, 16, 64, 2, 2, 64, 4, 20),
        "small": (48, 24, 128, 2, 4, 96, 8, 40),
        "medium": (64, 32, 256, 3, 4, 128, 8, 50),
    }[name]
    cfg["seanet"].update(dimension=dim, n_filters=filters)
    cfg["quantizer"].update(dimension=q_dim, n_q=16, bins=bins, input_dimension=dim, output_dimension=dim)
    cfg["transformer"].update(d_model=dim, num_heads=heads, num_layers=layers, dim_feedforward=ff,
                              context=context, input_dimension=dim, output_dimensions=[dim])
    return cfg


def lm_preset(name: str, text_card: int = 32000) -> dict:
    """LM settings for a preset: `7b` (Moshi's), `tiny`, `small` or `medium`; `card` matches the
    Mimi preset. The tests use `tiny` and `small`; `medium` is for parity runs on a shape they
    never saw."""
    cfg = copy.deepcopy(MOSHI_7B_LM)
    if name == "7b":
        return cfg
    dim, layers, heads, card, dep_dim, dep_layers, dep_heads, context = {
        "tiny": (64, 2, 4, 64, 32, 1, 2, 40),
        "small": (96, 3, 4, 128, 48, 2, 4, 60),
        "medium": (128, 4, 8, 256, 64, 2, 4, 45),
    }[name]
    cfg.update(dim=dim, num_layers=layers, num_heads=heads, card=card, text_card=text_card, context=context,
               depformer_dim=dep_dim, depformer_num_layers=dep_layers, depformer_num_heads=dep_heads,
               depformer_dim_feedforward=int(4.125 * dep_dim))
    return cfg
