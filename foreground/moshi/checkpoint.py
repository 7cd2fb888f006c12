"""A Moshi-family checkpoint folder in Kyutai's published layout, read and written.

The layout (`kyutai/moshiko-pytorch-bf16` and the models built on it): `config.json` holds
the LM settings plus `moshi_name`, `mimi_name`, `tokenizer_name` and, when Mimi's settings
are not the defaults, `mimi_config_name` (a JSON of them); the LM and Mimi weights are
safetensors under those names; the text tokenizer is a SentencePiece model. A folder without
`config.json` is a Moshi 7B with the default names. Nothing is downloaded: a missing file is
an error that names it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from foreground.moshi.presets import LM_WEIGHTS_NAME, MIMI_WEIGHTS_NAME, TOKENIZER_NAME

log = logging.getLogger(__name__)

# keys of config.json that are not LM settings (moshi.models.loaders.CheckpointInfo pops them)
NON_LM_KEYS = ("moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name", "lora_name", "model_type",
               "lm_gen_config", "tts_config", "stt_config", "model_id")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be served; the message names the file or tensor."""


@dataclass(frozen=True)
class MoshiFolder:
    folder: Path
    lm_config: dict | None  # the LM settings (None: Moshi 7B's)
    mimi_config: dict | None  # Mimi's settings (None: the defaults)
    lm_weights: Path
    mimi_weights: Path
    tokenizer: Path
    lm_gen_config: dict = field(default_factory=dict)  # default sampling settings, if the folder has them
    model_type: str = "moshi"

    @property
    def num_codebooks(self) -> int:
        """How many Mimi codebooks the LM reads and writes (as moshi's get_mimi computes it)."""
        if self.lm_config is None:
            return 8
        return max(self.lm_config["dep_q"], self.lm_config["n_q"] - self.lm_config["dep_q"])


def looks_like_moshi_folder(folder: Path) -> bool:
    config = folder / "config.json"
    if config.is_file():
        try:
            raw = json.loads(config.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return isinstance(raw, dict) and ("moshi_name" in raw or "dep_q" in raw)
    return (folder / LM_WEIGHTS_NAME).is_file() and (folder / MIMI_WEIGHTS_NAME).is_file()


def read_moshi_folder(folder: str | Path) -> MoshiFolder:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    names = {"moshi_name": LM_WEIGHTS_NAME, "mimi_name": MIMI_WEIGHTS_NAME, "tokenizer_name": TOKENIZER_NAME}
    lm_config, mimi_config, gen, model_type = None, None, {}, "moshi"
    config_path = folder / "config.json"
    if config_path.is_file():
        raw = _read_json(config_path)
        names.update({k: raw[k] for k in names if k in raw})
        lm_config = {k: v for k, v in raw.items() if k not in NON_LM_KEYS}
        gen, model_type = raw.get("lm_gen_config", {}), raw.get("model_type", "moshi")
        if raw.get("mimi_config_name"):
            mimi_config = _read_json(_existing(folder, raw["mimi_config_name"], "mimi_config_name"))
        if raw.get("lora_name"):
            raise CheckpointError(f"{config_path}: LoRA checkpoints (`lora_name`) are not supported; "
                                  "fuse the LoRA into model.safetensors first")
    else:
        log.warning("%s has no config.json: assuming Moshi 7B settings", folder)
    if model_type != "moshi":
        raise CheckpointError(f"{config_path}: model_type {model_type!r} is not a duplex conversation model")
    return MoshiFolder(folder, lm_config, mimi_config,
                       lm_weights=_existing(folder, names["moshi_name"], "moshi_name"),
                       mimi_weights=_existing(folder, names["mimi_name"], "mimi_name"),
                       tokenizer=_existing(folder, names["tokenizer_name"], "tokenizer_name"),
                       lm_gen_config=gen, model_type=model_type)


def load_weights(path: Path, dtype: torch.dtype, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file as `dtype` on `device` (bf16 files load as fp32 for CPU work, and back)."""
    state = load_file(str(path), device=str(device))
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}


def write_moshi_folder(folder: str | Path, lm_config: dict, mimi_config: dict | None,
                       lm_state: dict[str, torch.Tensor], mimi_state: dict[str, torch.Tensor],
                       tokenizer_model: bytes, dtype: torch.dtype = torch.float32) -> Path:
    """Write a folder that both microturn and `moshi`'s own loaders read."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(lm_config, moshi_name=LM_WEIGHTS_NAME, mimi_name=MIMI_WEIGHTS_NAME,
                  tokenizer_name=TOKENIZER_NAME)
    if mimi_config is not None:
        (folder / "mimi_config.json").write_text(json.dumps(mimi_config, indent=1))
        config["mimi_config_name"] = "mimi_config.json"
    save_file({k: v.to(dtype).contiguous() for k, v in lm_state.items()}, str(folder / LM_WEIGHTS_NAME))
    save_file({k: v.float().contiguous() for k, v in mimi_state.items()}, str(folder / MIMI_WEIGHTS_NAME))
    (folder / TOKENIZER_NAME).write_bytes(tokenizer_model)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return folder


def _existing(folder: Path, name: str, key: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"{folder}: missing {name} (named by `{key}`; nothing is downloaded)")
    return path


def _read_json(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return raw
