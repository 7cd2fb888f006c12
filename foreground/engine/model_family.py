"""The one interface between the tick engine and a model family.

The engine owns what every family needs the same way: slots, jitter buffers, resampling, the
Silero VAD on the user's stream, text and background results waiting to enter, the output
level, delegation. A family owns its model and the per-slot state it needs, and each tick
the engine calls `allocate(max_slots)` once, then, for the live slots 0..batch-1:

    forward(batch, audio, text_ids)   the user's audio (at the family's rate) and text in
    decide(states, tick, vad)         who holds the floor, with turn events and causes
    voice(batch, speaking, pcm_out)   the model's audio for this tick
    output_text_ids(batch)            the text tokens it produced

Two families implement it: the reference model (`foreground.model.family`, 200 ms ticks)
and the Moshi family (`foreground.moshi.family`, 80 ms frames).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from foreground.engine.session_slots import SlotState
from foreground.engine.session_state import SessionState, TextDecoder
from foreground.engine.turn_policy import TickDecision


@dataclass(frozen=True)
class FamilyShape:
    """The streams a family reads and writes, per tick."""

    name: str  # "reference", "moshi"
    tick_ms: int  # 200 (reference), 80 (one Moshi frame)
    model_rate: int  # the sample rate its forward() reads the user's audio at
    output_rate: int  # the sample rate of its audio out
    text_slots_per_tick: int  # text tokens fed in per tick (client text, woven results)
    pad_token: int  # the text token meaning "no text this slot"

    def samples(self, rate: int) -> int:
        return rate * self.tick_ms // 1000


class ModelFamily(Protocol):
    shape: FamilyShape
    head_calibrated: bool  # its turn-taking is trained (resolves the `auto` policy)

    def allocate(self, max_slots: int) -> None: ...

    def slot_parts(self) -> list[SlotState]: ...

    def open_slot(self, slot: int, seed: int) -> None: ...

    def turn_policy(self, name: str | None): ...

    def encode_text(self, text: str) -> list[int]: ...

    def text_decoder(self) -> TextDecoder: ...

    def decode_video(self, jpeg: bytes | None, raw_rgb: bytes | None, width: int, height: int) -> torch.Tensor: ...

    def store_video(self, slot: int, frame: torch.Tensor) -> None: ...

    def forward(self, batch: int, audio: torch.Tensor, text_ids: torch.Tensor) -> None: ...

    def decide(self, states: list[SessionState], tick: int, vad: list[list[float]]) -> list[TickDecision]: ...

    def voice(self, batch: int, speaking: torch.Tensor, pcm_out: torch.Tensor) -> None: ...

    def output_text_ids(self, batch: int) -> list[list[int]]: ...

    def output_rows(self, slot: int) -> list[torch.Tensor]: ...

    def end_tick(self, batch: int) -> None: ...

    def tick_flops(self, batch: int) -> dict[str, int]:
        """Matmul FLOPs of one tick for `batch` sessions, by stage (what `bench tick`'s floor
        counts: the model's need from its config, not the padded work the engine does)."""
        ...
