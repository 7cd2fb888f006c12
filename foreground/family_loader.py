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


def load_family(checkpoint: str | Path | None, preset: str) -> ModelFamily:
    if checkpoint and is_moshi_folder(checkpoint):
        from foreground.moshi.family import MoshiFamily

        log.info("checkpoint %s: Moshi family", checkpoint)
        return MoshiFamily.from_folder(Path(checkpoint))
    from foreground.model.checkpoint import ensure_seeded_checkpoint, load_checkpoint
    from foreground.model.family import ReferenceFamily

    model = load_checkpoint(checkpoint or ensure_seeded_checkpoint(preset))
    return ReferenceFamily(model)
