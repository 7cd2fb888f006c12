"""The Moshi family as a model family of the tick engine: one 80 ms frame per tick.

Each tick, for every live session at once: Mimi encodes the user's 1920 samples into codes,
the LM steps once (temporal transformer, then the depth transformer codebook after codebook)
and samples the model's text token and audio codes, and Mimi decodes those codes into the
model's next 80 ms of audio. The model takes turns by itself; `ObservedTurns` derives the turn
events from its text stream and the VAD. Text that enters (a woven background result, the
client's text) is forced into the model's text stream, its inner monologue, which its voice
follows: Moshi has no other text input.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from foreground.engine.input_validation import InvalidInput
from foreground.engine.model_family import FamilyShape
from foreground.engine.stage_clock import STAGES
from foreground.engine.session_state import SessionState
from foreground.engine.turn_policy import TickDecision, TurnPolicyConfig
from foreground.moshi.checkpoint import MoshiFolder, load_weights, read_moshi_folder
from foreground.moshi.lm import MoshiLM, MoshiStreams, SamplingConfig
from foreground.moshi.lm_config import LMConfig
from foreground.moshi.mimi import MimiCodec, MimiStreams
from foreground.moshi.mimi_config import MimiConfig
from foreground.moshi.observed_turns import ObservedTurns, ObservedTurnsConfig
from foreground.moshi.presets import FRAME_RATE, SAMPLE_RATE
from foreground.moshi.text_tokenizer import CONTROL_IDS, PieceTextDecoder, load_tokenizer
from foreground.moshi.tick_flops import lm_flops_per_session, mimi_flops_per_session

log = logging.getLogger(__name__)

FRAME_MS = int(1000 / FRAME_RATE)  # 80
NO_FORCED_TEXT = -1


class MoshiFamily:
    def __init__(self, lm: MoshiLM, codec: MimiCodec, tokenizer, sampling: SamplingConfig | None = None,
                 device: torch.device = torch.device("cpu")) -> None:
        self.lm, self.codec, self.tokenizer, self.device = lm, codec, tokenizer, device
        self.sampling = sampling or SamplingConfig()
        self.shape = FamilyShape(name="moshi", tick_ms=FRAME_MS, model_rate=SAMPLE_RATE, output_rate=SAMPLE_RATE,
                                 text_slots_per_tick=1, pad_token=NO_FORCED_TEXT)
        self.head_calibrated = True  # the model takes turns by itself

    @classmethod
    def from_folder(cls, folder: Path, dtype: torch.dtype = torch.float32,
                    device: torch.device = torch.device("cpu")) -> MoshiFamily:
        info = read_moshi_folder(folder)
        with device:
            models = load_models(info, dtype, device)
        return cls(*models, load_tokenizer(info.tokenizer), SamplingConfig.from_lm_gen_config(info.lm_gen_config),
                   device=device)

    def allocate(self, max_slots: int) -> None:
        """Every per-slot buffer on the family's device; the engine's audio rows stay on the
        CPU and cross once each way per tick (`audio_in`, `pcm`)."""
        cfg, samples = self.lm.cfg, self.shape.samples(SAMPLE_RATE)
        with self.device:
            self.mimi = MimiStreams(self.codec, max_slots)
            self.streams = MoshiStreams(self.lm, max_slots)
            self.user_codes = torch.zeros(max_slots, cfg.n_q - cfg.dep_q, dtype=torch.int64)
            self.text = torch.zeros(max_slots, dtype=torch.int64)
            self.audio = torch.zeros(max_slots, cfg.dep_q, dtype=torch.int64)
            self.valid = torch.zeros(max_slots, dtype=torch.bool)
            self.forced = torch.full((max_slots,), NO_FORCED_TEXT, dtype=torch.int64)
            self.audio_in = torch.zeros(max_slots, samples)
            self.pcm = torch.zeros(max_slots, samples)
        self._words: list[bool] = []
        self._mimi_flops: tuple[int, int] | None = None

    def slot_parts(self) -> list:
        return [self.mimi, self.streams]

    def open_slot(self, slot: int, seed: int) -> None:
        self.streams.set_sampling(slot, self.sampling.with_seed(seed))

    def turn_policy(self, config: TurnPolicyConfig, requested: bool = False) -> ObservedTurns:
        if requested and config.policy != "model":
            raise InvalidInput("open.turn_policy", f"a Moshi-family model takes turns by itself: "
                                                   f"only `model` applies, not {config.policy!r}")
        return ObservedTurns(ObservedTurnsConfig(tick_ms=FRAME_MS, vad_threshold=config.vad_threshold,
                                                 backchannel_max_ms=config.backchannel_max_ms))

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def text_decoder(self) -> PieceTextDecoder:
        return PieceTextDecoder(self.tokenizer)

    def decode_video(self, jpeg, raw_rgb, width: int, height: int) -> torch.Tensor:
        raise InvalidInput("video", "this model (Moshi family) takes no video input")

    def store_video(self, slot: int, frame: torch.Tensor) -> None:
        raise InvalidInput("video", "this model (Moshi family) takes no video input")

    def forward(self, batch: int, audio: torch.Tensor, text_ids: torch.Tensor) -> None:
        """audio: [batch, 1920] at 24 kHz; text_ids: [batch, 1] tokens to force (-1: none)."""
        b = batch
        self.audio_in[:b].copy_(audio)
        self.mimi.encode(self.audio_in[:b], out=self.user_codes[:b])
        STAGES.lap("model.mimi_encode")
        self.forced[:b].copy_(text_ids[:, 0])
        self.streams.step(self.user_codes[:b], self.text[:b], self.audio[:b], self.valid[:b],
                          forced_text=self.forced[:b])
        STAGES.lap("model.lm")
        self._words = [bool(v) and t not in CONTROL_IDS
                       for t, v in zip(self.text[:b].tolist(), self.valid[:b].tolist(), strict=True)]

    def decide(self, states: list[SessionState], tick: int, vad: list[list[float]]) -> list[TickDecision]:
        return [s.policy.decide(s.turn, tick, vad[i], self._words[i]) for i, s in enumerate(states)]

    def voice(self, batch: int, speaking: torch.Tensor, pcm_out: torch.Tensor) -> None:
        """The model's audio goes out whatever the turn state (it is full duplex); before its
        first frame of codes (the streams' delay) a session hears silence."""
        self.mimi.decode(self.audio[:batch], out=self.pcm[:batch], active=self.valid[:batch])
        pcm_out.copy_(self.pcm[:batch])

    def output_text_ids(self, batch: int) -> list[list[int]]:
        return [[t] if v else [] for t, v in zip(self.text[:batch].tolist(), self.valid[:batch].tolist(), strict=True)]

    def output_rows(self, slot: int) -> list[torch.Tensor]:
        """What a session got this tick, for invariance checks."""
        return [self.text[slot], self.audio[slot], self.streams.text_logits[slot], self.streams.audio_logits[slot]]

    def end_tick(self, batch: int) -> None:
        pass

    def tick_flops(self, batch: int) -> dict[str, int]:
        """Matmul FLOPs of one frame for `batch` sessions (`foreground.moshi.tick_flops`)."""
        if self._mimi_flops is None:
            self._mimi_flops = mimi_flops_per_session(self.codec)
        encode, decode = self._mimi_flops
        return {"model.mimi_encode": batch * encode, "model.lm": batch * lm_flops_per_session(self.lm.cfg),
                "model.voice": batch * decode}


def load_models(info: MoshiFolder, dtype: torch.dtype = torch.float32,
                device: torch.device = torch.device("cpu")) -> tuple[MoshiLM, MimiCodec]:
    lm_cfg = LMConfig.from_kyutai(info.lm_config)
    mimi_cfg = MimiConfig.from_kyutai(info.mimi_config, num_codebooks=info.num_codebooks)
    lm = MoshiLM.from_state_dict(lm_cfg, load_weights(info.lm_weights, dtype, device), dtype=dtype)
    codec = MimiCodec.from_state_dict(mimi_cfg, load_weights(info.mimi_weights, torch.float32, device))
    log.info("Moshi family from %s: LM dim %d x %d layers, Mimi %d codebooks", info.folder, lm_cfg.dim,
             lm_cfg.num_layers, mimi_cfg.num_codebooks)
    return lm, codec
