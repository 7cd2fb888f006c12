"""Checkpoints: a folder of `model.safetensors`, `config.json` (a Hugging Face MixtralConfig,
so `transformers` and vLLM load the backbone from the same folder) and `microturn.json` (the
full model config, streams and heads included).

No trained interaction-model weights exist in public; `write_seeded_checkpoint` writes a tiny
seeded one: real compute, meaningless content.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from foreground.model.config import ModelConfig, mixtral_config, preset
from foreground.model.interaction_model import InteractionModel

log = logging.getLogger(__name__)

WEIGHTS, HF_CONFIG, MICROTURN_CONFIG = "model.safetensors", "config.json", "microturn.json"
INIT_STD = 0.02
SILENT_LOG_MEL = -4.0  # where the seeded audio head's output sits before training


class CheckpointError(ValueError):
    """A checkpoint folder is incomplete or does not fit its config; names the file or tensor."""


def init_seeded(model: InteractionModel, seed: int) -> None:
    """Deterministic initialisation: N(0, 0.02) weights, unit norms, zero biases."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * INIT_STD)
        model.interaction.audio_head.out.bias.fill_(SILENT_LOG_MEL)


def write_seeded_checkpoint(out_dir: Path, preset_name: str = "tiny", seed: int = 0) -> Path:
    cfg = preset(preset_name)
    model = InteractionModel(cfg)
    init_seeded(model, seed)
    save_checkpoint(model, out_dir)
    log.info("wrote seeded %s checkpoint (seed %d) to %s", preset_name, seed, out_dir)
    return out_dir


def save_checkpoint(model: InteractionModel, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out_dir / WEIGHTS), metadata={"format": "pt"})
    (out_dir / HF_CONFIG).write_text(json.dumps(mixtral_config(model.cfg), indent=2) + "\n")
    model.cfg.save(out_dir / MICROTURN_CONFIG)


def load_checkpoint(path: Path) -> InteractionModel:
    """Build the model from `path`; every tensor must be present with the config's shape."""
    path = Path(path)
    for name in (WEIGHTS, MICROTURN_CONFIG):
        if not (path / name).exists():
            raise CheckpointError(f"checkpoint {path}: missing {name}")
    cfg = ModelConfig.from_json(json.loads((path / MICROTURN_CONFIG).read_text()))
    model = InteractionModel(cfg)
    tensors = load_file(str(path / WEIGHTS))
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in tensors:
            raise CheckpointError(f"checkpoint {path}: tensor `{name}` is missing")
        if tensors[name].shape != tensor.shape:
            raise CheckpointError(f"checkpoint {path}: tensor `{name}` has shape "
                                  f"{tuple(tensors[name].shape)}, the config needs {tuple(tensor.shape)}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        log.warning("checkpoint %s: ignoring %d unknown tensors, e.g. %s", path, len(extra), extra[0])
    model.load_state_dict({k: tensors[k].float() for k in expected}, strict=True)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def cache_root() -> Path:
    return Path(os.environ.get("MICROTURN_CACHE", Path.home() / ".cache" / "microturn"))


def ensure_seeded_checkpoint(preset_name: str = "tiny", seed: int = 0) -> Path:
    """The seeded checkpoint for (preset, seed), written once into the cache folder."""
    out_dir = cache_root() / "checkpoints" / f"seeded-{preset_name}-{seed}"
    if not (out_dir / WEIGHTS).exists():
        tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
        write_seeded_checkpoint(tmp, preset_name, seed)
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    return out_dir
