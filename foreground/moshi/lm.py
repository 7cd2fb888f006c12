"""Moshi's LM stepped for many sessions at once: `moshi.models.lm.LMGen.step`, batched.

One `step()` is one 80 ms frame for the live slots 0..b-1: read each slot's model input from
its delayed token streams, run the temporal transformer, sample the text token, run the
depformer codebook by codebook (sampling each audio token before the next codebook), store
the generated tokens and read back each slot's undelayed frame.

A session's tokens and logits do not depend on the other sessions in the batch: each slot has
its own KV ring, frame counter and sampling noise, the matmuls use microturn's row-tiled
kernels, and every buffer is allocated in the constructor. The per-session tensors have a
leading `max_slots` dimension (`state_tensors()`), so `SessionSlots` can compact them.
"""

from __future__ import annotations

import torch

from foreground.kernels import pad_rows
from foreground.moshi.delays import DelayedStreams
from foreground.moshi.depformer import Depformer
from foreground.moshi.lm_config import LMConfig
from foreground.moshi.lm_weights import MoshiLM
from foreground.moshi.sampling import GumbelTopK, SamplingConfig, StreamSampling, seed_key
from foreground.moshi.temporal import TemporalTransformer

__all__ = ["LMConfig", "MoshiLM", "MoshiStreams", "SamplingConfig"]

TEXT_STREAM = 0  # sampling stream ids: text, then 1 + k for audio codebook k


class MoshiStreams:
    """Per-slot streaming state of one Moshi LM for up to `max_slots` sessions
    (the `SlotState` protocol of `foreground.engine.session_slots`).

    After each `step`, `text_logits[:b]` ([max_slots, text_card]) and `audio_logits[:b]`
    ([max_slots, dep_q, card]) hold that step's logits in float32.
    """

    def __init__(self, lm: MoshiLM, max_slots: int, *, max_top_k: int = 250) -> None:
        self.lm, self.cfg, self.max_slots = lm, lm.cfg, max_slots
        with torch.device(lm.device):  # every buffer lives where the weights do
            self._allocate(max_top_k)
        for slot in range(max_slots):
            self.set_sampling(slot, SamplingConfig())

    def _allocate(self, max_top_k: int) -> None:
        cfg, max_slots = self.cfg, self.max_slots
        rows = pad_rows(max_slots)
        self.streams = DelayedStreams(cfg, max_slots)
        self.temporal = TemporalTransformer(self.lm, max_slots)
        self.depformer = Depformer(self.lm, max_slots)
        self.text_sampling = StreamSampling(rows, cfg.text_card, max_top_k)
        self.audio_sampling = StreamSampling(rows, cfg.card, max_top_k)
        self.seed_keys = torch.zeros(rows, dtype=torch.int64)
        self._text_sampler = GumbelTopK(rows, cfg.text_card, max_top_k)
        self._audio_sampler = GumbelTopK(rows, cfg.card, max_top_k)
        self.text_logits = torch.zeros(max_slots, cfg.text_card)
        self.audio_logits = torch.zeros(max_slots, cfg.dep_q, cfg.card)
        self._logits32 = torch.zeros(max_slots * max(cfg.text_card, cfg.card))  # when weights are not fp32
        self._text = torch.zeros(max_slots, dtype=torch.int64)
        self._is_forced = torch.zeros(max_slots, dtype=torch.bool)
        self._audio = torch.zeros(cfg.dep_q, max_slots, dtype=torch.int64)  # codebook-major

    # SlotState protocol.
    def state_tensors(self) -> list[torch.Tensor]:
        return [*self.streams.state_tensors(), *self.temporal.state_tensors(),
                *self.text_sampling.state_tensors(self.max_slots),
                *self.audio_sampling.state_tensors(self.max_slots), self.seed_keys[: self.max_slots]]

    def reset(self, slot: int) -> None:
        """A new session in `slot`: empty streams and KV ring, default sampling."""
        self.streams.reset(slot)
        self.temporal.reset(slot)
        self.set_sampling(slot, SamplingConfig())

    def set_sampling(self, slot: int, sampling: SamplingConfig) -> None:
        self.text_sampling.set(slot, sampling.use_sampling, sampling.temp_text, sampling.top_k_text)
        self.audio_sampling.set(slot, sampling.use_sampling, sampling.temp, sampling.top_k)
        self.seed_keys[slot] = seed_key(sampling.seed)

    @torch.no_grad()
    def step(self, user_codes: torch.Tensor, out_text: torch.Tensor, out_audio: torch.Tensor,
             out_valid: torch.Tensor, forced_text: torch.Tensor | None = None) -> None:
        """One frame for slots 0..b-1. user_codes: [b, n_q - dep_q] int64, the Mimi codes of
        each user's audio this frame. Writes out_text [b], out_audio [b, dep_q] (LMGen.step's
        [text, audio...] frame) and out_valid [b] (False where LMGen.step returns None).

        forced_text: optional [b] int64; where >= 0 it replaces the sampled text token of this
        step (the token the depformer and the next frames then see), like a teacher-forced
        inner monologue; -1 leaves the model's own choice."""
        cfg, b = self.cfg, user_codes.shape[0]
        if user_codes.shape != (b, cfg.user_streams) or not 0 < b <= self.max_slots \
                or user_codes.dtype != torch.int64:
            raise ValueError(f"user_codes: {user_codes.dtype} of shape {tuple(user_codes.shape)}, expected "
                             f"int64 of shape [1..{self.max_slots}, {cfg.user_streams}]")
        if forced_text is not None and forced_text.shape != (b,):
            raise ValueError(f"forced_text of shape {tuple(forced_text.shape)}, expected [{b}]")
        frames = self.streams.frame[:b]  # each slot's frame index, until push_generated advances it
        inputs = self.streams.model_inputs(user_codes)
        text_logits = self._float32(self.temporal.step(inputs, frames))
        self.text_logits[:b].copy_(text_logits)
        text = self._text[:b]
        self._text_sampler.sample(text_logits, self.text_sampling, self.seed_keys[:b], frames, TEXT_STREAM, text)
        if forced_text is not None:
            is_forced = self._is_forced[:b]
            torch.ge(forced_text, 0, out=is_forced)
            torch.where(is_forced, forced_text, text, out=text)

        rows = pad_rows(b)
        self.depformer.begin_frame(b)
        previous = text
        for k in range(cfg.dep_q):
            logits = self._float32(self.depformer.step(k, self.temporal.out[:rows], previous))
            self.audio_logits[:b, k].copy_(logits)
            token = self._audio[k, :b]
            self._audio_sampler.sample(logits, self.audio_sampling, self.seed_keys[:b], frames, 1 + k, token)
            previous = token

        self.streams.push_generated(text, self._audio[:, :b].t())
        self.streams.outputs(out_text, out_audio, out_valid)

    def _float32(self, logits: torch.Tensor) -> torch.Tensor:
        """Sampling reads float32 logits (LMGen: `logits.float()`)."""
        if logits.dtype == torch.float32:
            return logits
        b, vocab = logits.shape
        return self._logits32[: b * vocab].view(b, vocab).copy_(logits)
