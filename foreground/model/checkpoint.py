"""Checkpoints: a folder of `model.safetensors` (the backbone under Mixtral names),
`interaction.safetensors` (the streams and heads), `config.json` (a Hugging Face MixtralConfig),
a byte-level tokenizer (`tokenizer.py`) and `microturn.json` (the full model config).

Why two weight files and an index: `transformers` ignores tensors it does not know, but vLLM
refuses them ("no module or parameter named 'interaction'"), and it loads every `*.safetensors`
in a folder unless `model.safetensors.index.json` names the ones to use. The index names the
backbone file only, so `transformers`, vLLM and microturn all load the same folder as it is.
Older folders with everything in `model.safetensors` still load here.

No trained interaction-model weights exist in public; `write_seeded_checkpoint` writes a tiny
seeded one: real compute, meaningless content, except for the end-of-turn detector, which is
small enough to train here on synthesised speech (`microturn train turns`): its trained weights
ship in `foreground/model/trained/` and are merged into every seeded checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from foreground.model.config import AudioConfig, ModelConfig, TurnDetectorConfig, mixtral_config, preset
from foreground.model.interaction_model import InteractionModel
from foreground.model.tokenizer import save_byte_tokenizer
from foreground.model.turn_detector import TurnDetector

log = logging.getLogger(__name__)

WEIGHTS, HF_CONFIG, MICROTURN_CONFIG = "model.safetensors", "config.json", "microturn.json"
INTERACTION_WEIGHTS, WEIGHTS_INDEX = "interaction.safetensors", "model.safetensors.index.json"
BACKBONE_PREFIXES = ("model.", "lm_head.")
INIT_STD = 0.02
SILENT_LOG_MEL = -4.0  # where the seeded audio head's output sits before training
DETECTOR_PREFIX = "interaction.turn_detector."
TRAINED_DETECTOR = Path(__file__).parent / "trained" / "turn_detector.safetensors"
# v2: trained end-of-turn detector; v3: split weights + tokenizer; v4: the detector reads pitch
# salience and has two outputs (a v2/v3 folder written while it was built holds the old shape)
SEEDED_CACHE_VERSION = "v4"


class CheckpointError(ValueError):
    """A checkpoint folder is incomplete or does not fit its config; names the file or tensor."""


def init_seeded(model: InteractionModel, seed: int) -> None:
    """Deterministic initialisation: N(0, 0.02) weights, unit norms, zero biases. The detector
    draws from its own generator, so the rest is what it was before the detector existed."""
    gen = torch.Generator().manual_seed(seed)
    init_turn_detector(model.interaction.turn_detector, seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.startswith(DETECTOR_PREFIX):
                continue
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * INIT_STD)
        model.interaction.audio_head.out.bias.fill_(SILENT_LOG_MEL)


def init_turn_detector(detector: TurnDetector, seed: int) -> None:
    """He-scaled normal weights (the ReLU layers learn from here), zero biases."""
    gen = torch.Generator().manual_seed(10_007 + seed)
    with torch.no_grad():
        for name, param in sorted(detector.named_parameters()):
            if name.endswith(".bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * (2.0 / param.shape[1]) ** 0.5)


def write_seeded_checkpoint(out_dir: Path, preset_name: str = "tiny", seed: int = 0,
                            trained_turns: bool = True, turn_detector: TurnDetectorConfig | None = None) -> Path:
    """Seeded weights; with `trained_turns`, the shipped trained end-of-turn detector in them
    (and `turn_head_calibrated: true`) when it fits the preset. `turn_detector` replaces the
    preset's detector settings (a training that tries other ones)."""
    cfg = preset(preset_name)
    if turn_detector is not None:
        cfg = replace(cfg, turn_detector=turn_detector)
    trained = load_trained_detector(cfg) if trained_turns else None
    model = InteractionModel(replace(cfg, turn_head_calibrated=trained is not None))
    init_seeded(model, seed)
    if trained is not None:
        model.interaction.turn_detector.load_state_dict(trained, strict=True)
    save_checkpoint(model, out_dir)
    log.info("wrote seeded %s checkpoint (seed %d%s) to %s", preset_name, seed,
             ", trained turn detector" if trained is not None else "", out_dir)
    return out_dir


def load_trained_detector(cfg: ModelConfig, path: Path = TRAINED_DETECTOR) -> dict[str, torch.Tensor] | None:
    """The shipped detector weights, if present and trained for this config's audio and shape."""
    if not path.exists():
        log.warning("no trained turn detector at %s: the seeded detector stays uncalibrated", path)
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    wanted = {"turn_detector": cfg.turn_detector, "audio": cfg.audio}
    try:  # settings added since the file was written take their defaults
        found = {"turn_detector": TurnDetectorConfig(**json.loads(meta["turn_detector"])),
                 "audio": AudioConfig(**json.loads(meta["audio"]))}
    except (KeyError, TypeError, ValueError):
        found = None
    if found != wanted:
        log.warning("trained turn detector %s was trained for %s, not %s: not merged", path, found, wanted)
        return None
    return tensors


def save_checkpoint(model: InteractionModel, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    backbone = {k: v for k, v in tensors.items() if k.startswith(BACKBONE_PREFIXES)}
    save_file(backbone, str(out_dir / WEIGHTS), metadata={"format": "pt"})
    save_file({k: v for k, v in tensors.items() if k not in backbone}, str(out_dir / INTERACTION_WEIGHTS),
              metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in backbone.values())},
             "weight_map": {k: WEIGHTS for k in backbone}}
    (out_dir / WEIGHTS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (out_dir / HF_CONFIG).write_text(json.dumps(mixtral_config(model.cfg), indent=2) + "\n")
    model.cfg.save(out_dir / MICROTURN_CONFIG)
    save_byte_tokenizer(out_dir, model.cfg.vocab_size)  # so vLLM serves the folder as it is


def load_checkpoint(path: Path) -> InteractionModel:
    """Build the model from `path`; every tensor must be present with the config's shape."""
    path = Path(path)
    for name in (WEIGHTS, MICROTURN_CONFIG):
        if not (path / name).exists():
            raise CheckpointError(f"checkpoint {path}: missing {name}")
    cfg = ModelConfig.from_json(json.loads((path / MICROTURN_CONFIG).read_text()))
    tensors = load_file(str(path / INTERACTION_WEIGHTS)) if (path / INTERACTION_WEIGHTS).exists() else {}
    tensors.update(load_file(str(path / WEIGHTS)))  # older folders: everything in this one
    if not any(name.startswith(DETECTOR_PREFIX) for name in tensors):
        log.warning("checkpoint %s has no turn detector (written before it existed): a seeded, "
                    "uncalibrated one stands in", path)
        cfg = replace(cfg, turn_head_calibrated=False)
        stand_in = TurnDetector(cfg)
        init_turn_detector(stand_in, 0)
        tensors.update({DETECTOR_PREFIX + k: v for k, v in stand_in.state_dict().items()})
    model = InteractionModel(cfg)
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


def head_calibrated(path: Path) -> bool:
    """Whether the checkpoint's end-of-turn detector was trained (what `turn_policy: auto` reads),
    without loading its weights."""
    return bool(json.loads((Path(path) / MICROTURN_CONFIG).read_text()).get("turn_head_calibrated", False))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def cache_root() -> Path:
    return Path(os.environ.get("MICROTURN_CACHE", Path.home() / ".cache" / "microturn"))


def ensure_seeded_checkpoint(preset_name: str = "tiny", seed: int = 0) -> Path:
    """The seeded checkpoint for (preset, seed), written once into the cache folder. The folder
    name carries a digest of what goes into it (the preset's config, the shipped detector), so
    a changed model never loads a stale cache."""
    digest = hashlib.sha256(json.dumps(preset(preset_name).to_json(), sort_keys=True).encode())
    if TRAINED_DETECTOR.exists():
        digest.update(TRAINED_DETECTOR.read_bytes())
    name = f"seeded-{preset_name}-{seed}-{SEEDED_CACHE_VERSION}-{digest.hexdigest()[:12]}"
    out_dir = cache_root() / "checkpoints" / name
    if not (out_dir / WEIGHTS).exists():
        tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
        write_seeded_checkpoint(tmp, preset_name, seed)
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    return out_dir
