"""The model runner: one forward of the interaction model for every live session of a tick.

Each session's tick block is [video patches | text slots | audio frames | act]; all blocks
are embedded into one preallocated [B*T, d] buffer, run through the backbone in one batched
step, and the heads read the audio-frame and act positions; the end-of-turn detector reads the
user's log-mel and pitch-salience frames (its own 2 s window per slot). Inputs and outputs live in
`TickInputs` / `TickOutputs`, allocated once for `max_slots` sessions (slot i is row i), so a
tick allocates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from foreground.engine.stage_clock import STAGES
from foreground.kernels import linear, rms_norm
from foreground.kernels.matmul import pad_rows
from foreground.model.audio_head import FlowHeadWorkspace
from foreground.model.backbone import Backbone, BackboneWorkspace, KVCache
from foreground.model.config import ModelConfig
from foreground.model.interaction_model import InteractionModel
from foreground.model.turn_detector import TurnDetectorRunner

NOISE_PAGES = 4096  # the audio head's noise table: pages of one tick's frames


@dataclass
class TickInputs:
    user_bins: torch.Tensor  # [S, F, C] int64: dMel codes of the user's audio
    user_log_mel: torch.Tensor  # [S, F, C] float32: the log-mel frames those codes quantise
    user_pitch: torch.Tensor  # [S, F, P] float32: pitch-salience maps of the same frames
    self_bins: torch.Tensor  # [S, F, C] int64: dMel codes of the model's own previous output
    text_ids: torch.Tensor  # [S, text_slots] int64 (PAD_ID when no text)
    video: torch.Tensor  # [S, 3, H, W] float32 in [0, 1]
    has_video: torch.Tensor  # [S] bool
    noise_page: torch.Tensor  # [S] int64: which page of the noise table this tick uses

    @classmethod
    def allocate(cls, cfg: ModelConfig, slots: int) -> TickInputs:
        a, v = cfg.audio, cfg.vision
        return cls(
            user_bins=torch.zeros(slots, a.frames_per_tick, a.n_mels, dtype=torch.int64),
            user_log_mel=torch.zeros(slots, a.frames_per_tick, a.n_mels),
            user_pitch=torch.zeros(slots, a.frames_per_tick, cfg.turn_detector.pitch_candidates),
            self_bins=torch.zeros(slots, a.frames_per_tick, a.n_mels, dtype=torch.int64),
            text_ids=torch.zeros(slots, cfg.text_slots_per_tick, dtype=torch.int64),
            video=torch.zeros(slots, 3, v.image_size, v.image_size),
            has_video=torch.zeros(slots, dtype=torch.bool),
            noise_page=torch.zeros(slots, dtype=torch.int64),
        )


@dataclass
class TickOutputs:
    text_ids: torch.Tensor  # [S, F] int64: greedy text token per audio frame
    log_mel: torch.Tensor  # [S, F, C]: the next 200 ms of audio as log-mel frames
    turn_logits: torch.Tensor  # [S, turn_classes]
    delegate_logit: torch.Tensor  # [S, 1]
    turn_detector_logits: torch.Tensor  # [S, 2]: user speaking (vs silent), turn ended (vs pausing)

    @classmethod
    def allocate(cls, cfg: ModelConfig, slots: int) -> TickOutputs:
        f, c = cfg.audio.frames_per_tick, cfg.audio.n_mels
        return cls(
            text_ids=torch.zeros(slots, f, dtype=torch.int64),
            log_mel=torch.zeros(slots, f, c),
            turn_logits=torch.zeros(slots, cfg.turn_classes),
            delegate_logit=torch.zeros(slots, 1),
            turn_detector_logits=torch.zeros(slots, cfg.turn_detector.outputs),
        )


class ModelRunner:
    def __init__(self, model: InteractionModel, max_slots: int, noise_seed: int = 0) -> None:
        cfg = self.cfg = model.cfg
        # Softmax and exp tails produce denormal floats, which x86 handles ~50x slower
        # (measured: 3.8 s instead of 63 ms for a 64-session tick). Flush them to zero.
        torch.set_flush_denormal(True)
        self.model, self.parts = model, model.interaction
        self.max_slots = max_slots
        self.backbone = Backbone(cfg, model.model)
        self.parts.vision.prepare(max_slots)
        self.parts.audio_head.prepare()
        self.turn_detector = TurnDetectorRunner(self.parts.turn_detector, cfg, max_slots)  # slot state
        a, d = cfg.audio, cfg.hidden_size
        f, c, p = a.frames_per_tick, a.n_mels, cfg.vision.patches_per_frame
        self.layout = BlockLayout(cfg)
        self.ws = BackboneWorkspace(cfg, max_slots, cfg.tokens_per_tick)
        self.video = torch.zeros(max_slots, p, d)
        self.any_video = torch.zeros((), dtype=torch.bool)
        self.text_emb = torch.zeros(max_slots * cfg.text_slots_per_tick, d)
        codes = a.n_mels * a.dmel_bins
        self.code_offset = torch.arange(c, dtype=torch.int64) * a.dmel_bins
        self.code_index = torch.zeros(max_slots * f, 2 * c, dtype=torch.int64)
        # Matmul inputs and outputs hold whole row tiles (see kernels.matmul).
        self.one_hot = torch.zeros(pad_rows(max_slots * f), 2 * codes)
        self.frame_emb = torch.zeros(pad_rows(max_slots * f), d)
        self.head_in = torch.zeros(max_slots, f + 1, d)
        self.head_normed = torch.zeros(max_slots * (f + 1), d)
        self.head_scratch = torch.zeros(max_slots * (f + 1), 1)
        self.frame_h = torch.zeros(pad_rows(max_slots * f), d)
        self.act_h = torch.zeros(pad_rows(max_slots), d)
        self.text_logits = torch.zeros(pad_rows(max_slots * f), cfg.vocab_size)
        self.turn_logits = torch.zeros(pad_rows(max_slots), cfg.turn_classes)
        self.delegate_logit = torch.zeros(pad_rows(max_slots), 1)
        self.noise = torch.zeros(max_slots, f * c)
        self.flow_ws = FlowHeadWorkspace(max_slots * f, cfg.flow_hidden, c)
        gen = torch.Generator().manual_seed(noise_seed)
        self.noise_table = torch.randn(NOISE_PAGES, f * c, generator=gen)

    @torch.inference_mode()
    def step(self, inputs: TickInputs, cache: KVCache, batch: int, out: TickOutputs) -> None:
        """One tick for slots 0..batch-1; the cache must be planned for this tick."""
        self._embed(inputs, batch)
        STAGES.lap("model.embed")
        x = self.backbone.step(self.ws, cache, batch)
        self._heads(x, inputs, batch, out)
        self.turn_detector.step(inputs.user_log_mel[:batch], inputs.user_pitch[:batch], batch,
                                out.turn_detector_logits[:batch])
        STAGES.lap("model.turn_detector")

    def _embed(self, inputs: TickInputs, b: int) -> None:
        cfg, lay, parts = self.cfg, self.layout, self.parts
        f, c = cfg.audio.frames_per_tick, cfg.audio.n_mels
        x = self.ws.hidden[: b * cfg.tokens_per_tick].view(b, cfg.tokens_per_tick, -1)
        has_video = inputs.has_video[:b]
        if bool(torch.any(has_video, out=self.any_video)):
            parts.vision.embed(inputs.video[:b], out=self.video[:b])
            torch.where(has_video.view(b, 1, 1), self.video[:b], parts.no_video, out=x[:, lay.video])
        else:
            x[:, lay.video].copy_(parts.no_video)
        text = self.text_emb[: b * cfg.text_slots_per_tick]
        torch.index_select(self.model.model.embed_tokens.weight, 0, inputs.text_ids[:b].view(-1), out=text)
        x[:, lay.text].copy_(text.view(b, cfg.text_slots_per_tick, -1))
        codes = self.code_index[: b * f].view(b, f, 2 * c)
        torch.add(inputs.user_bins[:b], self.code_offset, out=codes[..., :c])
        torch.add(inputs.self_bins[:b], self.code_offset, out=codes[..., c:])
        codes[..., c:].add_(c * cfg.audio.dmel_bins)
        one_hot = self.one_hot[: b * f].zero_()
        one_hot.scatter_(1, codes.view(b * f, 2 * c), 1.0)
        rows = pad_rows(b * f)
        frames = linear(self.one_hot[:rows], parts.audio_in.weight, self.frame_emb[:rows])[: b * f]
        x[:, lay.frames].copy_(frames.view(b, f, -1))
        x[:, lay.act].copy_(parts.act)

    def _heads(self, x: torch.Tensor, inputs: TickInputs, b: int, out: TickOutputs) -> None:
        cfg, lay, parts = self.cfg, self.layout, self.parts
        f, c = cfg.audio.frames_per_tick, cfg.audio.n_mels
        head_in = self.head_in[:b]
        head_in.copy_(x.view(b, cfg.tokens_per_tick, -1)[:, lay.frames.start :])
        normed = rms_norm(head_in.view(b * (f + 1), -1), self.model.model.norm.weight, cfg.rms_norm_eps,
                          self.head_normed[: b * (f + 1)], self.head_scratch[: b * (f + 1)]).view(b, f + 1, -1)
        self.frame_h[: b * f].view(b, f, -1).copy_(normed[:, :f])
        self.act_h[:b].copy_(normed[:, f])
        frame_rows, act_rows = pad_rows(b * f), pad_rows(b)
        frame_h, act_h = self.frame_h[:frame_rows], self.act_h[:act_rows]
        logits = linear(frame_h, self.model.lm_head.weight, self.text_logits[:frame_rows])[: b * f]
        torch.argmax(logits, dim=-1, out=out.text_ids[:b].view(b * f))
        STAGES.lap("model.text_head")
        noise = torch.index_select(self.noise_table, 0, inputs.noise_page[:b], out=self.noise[:b])
        parts.audio_head.sample(frame_h, b * f, noise.view(b * f, c), self.flow_ws,
                                out=out.log_mel[:b].view(b * f, c))
        STAGES.lap("model.audio_head")
        turn = linear(act_h, parts.turn_head.weight, self.turn_logits[:act_rows], bias=parts.turn_head.bias)
        out.turn_logits[:b].copy_(turn[:b])
        delegate = linear(act_h, parts.delegate_head.weight, self.delegate_logit[:act_rows],
                          bias=parts.delegate_head.bias)
        out.delegate_logit[:b].copy_(delegate[:b])
        STAGES.lap("model.act_heads")


class BlockLayout:
    """Where each stream sits in a session's tick block."""

    def __init__(self, cfg: ModelConfig) -> None:
        p, t, f = cfg.vision.patches_per_frame, cfg.text_slots_per_tick, cfg.audio.frames_per_tick
        self.video = slice(0, p)
        self.text = slice(p, p + t)
        self.frames = slice(p + t, p + t + f)
        self.act = p + t + f
