"""Which model family a checkpoint folder holds, and the family built from it.

A folder in Kyutai's layout (a `config.json` naming `moshi_name`, or the default Moshi weight
file names) holds the Moshi family; anything else is a reference-model checkpoint. No folder:
the seeded reference checkpoint of `preset` (written on first use).
"""

from __future__ import annotations

import logging
from pathlib import Path

from foreground.engine.model_family import ModelFamily

log = logging.getLogger(__name__)


def is_moshi_folder(folder: str | Path) -> bool:
    from foreground.moshi.checkpoint import looks_like_moshi_folder

    return looks_like_moshi_folder(Path(folder))


def load_family(checkpoint: str | Path | None, preset: str, device: str = "cpu",
                dtype: str = "float32") -> ModelFamily:
    """`device` and `dtype` apply to the Moshi family (the reference model runs in float32 on
    the CPU, its Triton kernels being the GPU path)."""
    if checkpoint and is_moshi_folder(checkpoint):
        import torch

        from foreground.moshi.family import MoshiFamily

        log.info("checkpoint %s: Moshi family on %s in %s", checkpoint, device, dtype)
        return MoshiFamily.from_folder(Path(checkpoint), dtype=getattr(torch, dtype), device=torch.device(device))
    from foreground.model.checkpoint import ensure_seeded_checkpoint, load_checkpoint
    from foreground.model.family import ReferenceFamily

    model = load_checkpoint(checkpoint or ensure_seeded_checkpoint(preset))
    return ReferenceFamily(model)
