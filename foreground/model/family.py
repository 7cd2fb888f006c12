"""The reference model as a model family of the tick engine (200 ms ticks, 16 kHz in).

Each tick: the user's audio becomes dMel codes, log-mel and pitch-salience frames; the model's
own previous output is fed back as dMel codes; one batched forward gives text, the next 200 ms
of audio as log-mel frames, the turn head, the delegate head and the end-of-turn detector; a
turn policy per session decides who holds the floor; the channel vocoder voices the frames
where the model speaks (silence elsewhere), and what was voiced is next tick's feedback.
"""

from __future__ import annotations

import codecs
import re
import torch

from foreground.engine.input_validation import InvalidInput
from foreground.engine.stage_clock import STAGES
from foreground.model.kv_ring import RingKVCache
from foreground.engine.model_family import FamilyShape
from foreground.engine.session_state import SessionState
from foreground.engine.turn_policy import TickDecision, TurnPolicy, TurnPolicyConfig
from foreground.model.audio_features import DMelFeaturizer
from foreground.model.config import PAD_ID
from foreground.model.interaction_model import InteractionModel
from foreground.model.pitch_salience import PitchSalience
from foreground.model.tick_flops import reference_tick_flops
from foreground.model.runner import NOISE_PAGES, ModelRunner, TickInputs, TickOutputs
from foreground.model.vision import decode_frame
from foreground.model.vocoder import ChannelVocoder

POLICIES = ("model", "vad", "hybrid")


class ByteTextDecoder:
    """Text tokens 0-255 are UTF-8 bytes (the rest are control tokens); a character split
    over ticks comes out whole."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, token_ids: list[int]) -> str:
        return self._utf8.decode(bytes(t for t in token_ids if t < 256))


class _MelStreams:
    """Per-slot log-mel rows: the user's frames, and the model's voiced output fed back."""

    def __init__(self, inputs: TickInputs, cfg, max_slots: int) -> None:
        a = cfg.audio
        self.user_log_mel = inputs.user_log_mel  # one tensor: dMel and the turn detector read it
        self.prev_out_mel = torch.full((max_slots, a.frames_per_tick, a.n_mels), a.log_mel_floor)
        self.gated_mel = torch.zeros(max_slots, a.frames_per_tick, a.n_mels)
        self.silence_mel = torch.full((a.frames_per_tick, a.n_mels), a.log_mel_floor)

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.prev_out_mel]

    def reset(self, slot: int) -> None:
        self.prev_out_mel[slot].copy_(self.silence_mel)


class _TensorsOf:
    """Adapts a dataclass of per-slot tensors (TickInputs) to the SlotState protocol."""

    def __init__(self, holder) -> None:
        self.holder = holder

    def state_tensors(self) -> list[torch.Tensor]:
        return list(vars(self.holder).values())

    def reset(self, slot: int) -> None:
        for t in self.state_tensors():
            t[slot].zero_()


class ReferenceFamily:
    def __init__(self, model: InteractionModel) -> None:
        cfg = self.cfg = model.cfg
        a = cfg.audio
        self.model = model
        self.shape = FamilyShape(name="reference", tick_ms=a.tick_ms, model_rate=a.input_rate,
                                 output_rate=a.output_rate, text_slots_per_tick=cfg.text_slots_per_tick,
                                 pad_token=PAD_ID)
        self.head_calibrated = cfg.turn_head_calibrated

    def allocate(self, max_slots: int) -> None:
        """Every per-slot buffer, once (the tick engine calls this when it is built)."""
        cfg, a, model = self.cfg, self.cfg.audio, self.model
        self.runner = ModelRunner(model, max_slots)
        self.cache = RingKVCache(cfg, max_slots, cfg.tokens_per_tick)
        self.inputs = TickInputs.allocate(cfg, max_slots)
        self.outputs = TickOutputs.allocate(cfg, max_slots)
        self.featurizer = DMelFeaturizer(a, max_slots)
        self.pitch = PitchSalience(a, cfg.turn_detector, max_slots * a.frames_per_tick)
        self.vocoder = ChannelVocoder(a, max_slots)
        self.mel = _MelStreams(self.inputs, cfg, max_slots)

    def slot_parts(self) -> list:
        return [self.cache, _TensorsOf(self.inputs), self.featurizer, self.vocoder, self.mel,
                self.runner.turn_detector]

    @property
    def restore_text_tokens(self) -> int:
        """How much text a restored session re-reads (`TickScheduler.restore`): what the KV
        ring window holds of text, `text_slots_per_tick` for each tick in the window."""
        return self.cfg.text_slots_per_tick * (self.cfg.attention_window // self.cfg.tokens_per_tick)

    def open_slot(self, slot: int, seed: int) -> None:
        self.inputs.noise_page[slot] = seed % NOISE_PAGES

    def turn_policy(self, config: TurnPolicyConfig, requested: bool = False) -> TurnPolicy:
        if config.policy not in POLICIES:
            raise InvalidInput("open.turn_policy", f"unknown turn policy {config.policy!r}")
        return TurnPolicy(config)

    def encode_text(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def text_decoder(self) -> ByteTextDecoder:
        return ByteTextDecoder()

    def decode_video(self, jpeg: bytes | None, raw_rgb: bytes | None, width: int, height: int) -> torch.Tensor:
        try:
            return decode_frame(jpeg, raw_rgb, width, height, self.cfg.vision.image_size)
        except ValueError as e:  # its message names the field in backticks
            named = re.search(r"`([\w.]+)`", str(e))
            raise InvalidInput(named.group(1) if named else "video", str(e)) from e

    def store_video(self, slot: int, frame: torch.Tensor) -> None:
        self.inputs.video[slot].copy_(frame)
        self.inputs.has_video[slot] = True

    def forward(self, batch: int, audio: torch.Tensor, text_ids: torch.Tensor) -> None:
        """audio: [batch, 3200] at 16 kHz; text_ids: [batch, text_slots]."""
        b, frames = batch, self.cfg.audio.frames_per_tick
        self.inputs.text_ids[:b].copy_(text_ids)
        self.featurizer.featurize(audio, self.mel.user_log_mel[:b], self.inputs.user_bins[:b])
        self.featurizer.quantize(self.mel.prev_out_mel[:b], self.inputs.self_bins[:b])
        STAGES.lap("model.featuriser")
        self.pitch.compute(self.featurizer.power_rows(), b * frames, out=self.inputs.user_pitch[:b])
        STAGES.lap("model.pitch_salience")
        self.cache.plan(b, self.cfg.tokens_per_tick)
        self.runner.step(self.inputs, self.cache, b, self.outputs)

    def decide(self, states: list[SessionState], tick: int, vad: list[list[float]]) -> list[TickDecision]:
        b = len(states)
        turn = self.outputs.turn_logits[:b].tolist()
        delegate = self.outputs.delegate_logit[:b, 0].tolist()
        detector = self.outputs.turn_detector_logits[:b].tolist()
        return [s.policy.decide(s.turn, tick, vad[i], turn[i], delegate[i], detector_logits=detector[i])
                for i, s in enumerate(states)]

    def voice(self, batch: int, speaking: torch.Tensor, pcm_out: torch.Tensor) -> None:
        """The frames where the model voices the floor, silence elsewhere; fed back next tick."""
        mel, b = self.mel, batch
        torch.where(speaking[:b], self.outputs.log_mel[:b], mel.silence_mel, out=mel.gated_mel[:b])
        mel.prev_out_mel[:b].copy_(mel.gated_mel[:b])
        self.vocoder.synthesize(mel.gated_mel[:b], out_pcm=pcm_out)

    def output_text_ids(self, batch: int) -> list[list[int]]:
        return self.outputs.text_ids[:batch].tolist()

    def output_rows(self, slot: int) -> list[torch.Tensor]:
        """What a session got this tick, for invariance checks."""
        o = self.outputs
        return [o.text_ids[slot], o.log_mel[slot], o.turn_logits[slot], o.delegate_logit[slot]]

    def tick_flops(self, batch: int) -> dict[str, int]:
        """Matmul FLOPs per stage of one tick for `batch` sessions (`bench tick`'s floor)."""
        return reference_tick_flops(self.cfg, batch)

    def end_tick(self, batch: int) -> None:
        self.inputs.has_video[:batch].zero_()
        self.inputs.noise_page[:batch].add_(1).remainder_(NOISE_PAGES)
