"""The reference model's shape, as one typed config with named presets.

The backbone fields mirror a Hugging Face `MixtralConfig`, so the same numbers describe the
checkpoint to `transformers` and vLLM. `head_dim` stays >= 32 in every preset: vLLM's CPU
attention accepts head sizes 32, 64, 80, ... only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

# Byte-level text: ids 0..255 are bytes; the specials follow.
PAD_ID, BOS_ID, EOS_ID, EMPTY_ID = 256, 257, 258, 259
TEXT_VOCAB = 272  # 256 bytes + 16 specials (room to grow)


class ModelConfigError(ValueError):
    """A model config value is invalid; the message names the field."""


@dataclass(frozen=True, slots=True)
class AudioConfig:
    """Audio in (dMel features of the user's 16 kHz stream) and out (24 kHz PCM)."""

    input_rate: int = 16_000
    output_rate: int = 24_000
    tick_ms: int = 200
    frames_per_tick: int = 5  # 40 ms frames
    n_fft_in: int = 1024
    n_mels: int = 40
    dmel_bins: int = 16  # each log-mel channel quantised into this many bins
    # Natural-log mel power (|rfft|^2 of a Hann-windowed n_fft_in frame, no normalisation):
    # a full-scale sine at a channel centre gives ln(3 * 1024**2 / 32) = 11.5, speech at RMS
    # 0.1 spans about -8.6 (1%) .. 8.2 (max), PCM16 dither noise stays below -8.5 (bin 0).
    log_mel_floor: float = -6.5  # mapped to bin 0 (and below it: silence) ...
    log_mel_ceil: float = 11.5  # ... and to the last bin: 16 bins of 1.125 nats (4.9 dB)
    flow_steps: int = 4  # Euler steps of the flow-matching audio head

    @property
    def input_samples_per_tick(self) -> int:
        return self.input_rate * self.tick_ms // 1000

    @property
    def output_samples_per_tick(self) -> int:
        return self.output_rate * self.tick_ms // 1000

    @property
    def hop_in(self) -> int:
        return self.input_samples_per_tick // self.frames_per_tick

    @property
    def hop_out(self) -> int:
        return self.output_samples_per_tick // self.frames_per_tick


@dataclass(frozen=True, slots=True)
class VisionConfig:
    """At most one frame per tick, resized to `image_size`, cut into 40x40 patches."""

    image_size: int = 80
    patch_size: int = 40
    sub_patch: int = 8  # the hMLP stem's first level works on 8x8 pixel sub-patches

    @property
    def patches_per_frame(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True, slots=True)
class TurnDetectorConfig:
    """The end-of-turn detector: a small conv net over the last `window_frames` frames (2 s) of
    the user's audio, run once per tick. Two logits: the user speaks (vs is silent), and the
    turn has ended (vs a mid-turn pause, given silence).

    Per frame it reads a pitch-salience map (harmonic sums over the featuriser's own power
    spectrum: 40 log-mel channels do not resolve pitch) plus the frame's energy and lowest
    log-mel channels."""

    window_frames: int = 50
    pitch_candidates: int = 64  # log-spaced F0 candidates from pitch_min_hz
    pitch_min_hz: float = 60.0
    pitch_steps_per_octave: int = 20
    pitch_harmonics: int = 8
    pitch_max_hz: float = 2000.0  # harmonics above this are not summed
    pitch_sharpness: float = 4.0  # softmax temperature over the candidates' saliences
    pitch_scale: float = 4.0
    low_channels: int = 8  # log-mel channels (from the lowest) the detector reads
    frame_dim: int = 32  # per-frame projection
    conv_channels: int = 32
    conv_kernel: int = 4
    conv_stride: int = 2
    hidden: int = 64
    outputs: int = 2
    log_mel_min: float = -10.0  # input clamp (digital silence is ln(1e-10) = -23)
    log_mel_max: float = 12.0
    log_mel_centre: float = -2.0
    log_mel_scale: float = 6.0
    # Beyond the window: running means of the frame features (one per time constant, seconds),
    # carried per slot over the whole session, so that what came before the last 2 s counts
    # (the speaker's pitch range, the background's level). () = none.
    context_time_constants_s: tuple[float, ...] = (1.0, 5.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "context_time_constants_s", tuple(self.context_time_constants_s))

    @property
    def frame_features(self) -> int:
        return self.pitch_candidates + 1 + self.low_channels

    @property
    def context_features(self) -> int:
        return len(self.context_time_constants_s) * self.frame_features


@dataclass(frozen=True, slots=True)
class ModelConfig:
    # Backbone: Mixtral-style decoder (names as in transformers.MixtralConfig).
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 384
    num_local_experts: int = 4
    num_experts_per_tok: int = 2
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10_000.0
    vocab_size: int = TEXT_VOCAB
    # Streaming: each session's KV cache is `attention_sinks` fixed entries plus a ring window.
    attention_sinks: int = 4
    attention_window: int = 252
    # Per-tick input block: text slots, video patches, audio frames, one act token.
    text_slots_per_tick: int = 2
    audio: AudioConfig = field(default_factory=AudioConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    # Heads.
    turn_classes: int = 3  # listen, speak, backchannel
    turn_head_calibrated: bool = False  # seeded weights: fall back to the silence threshold
    turn_detector: TurnDetectorConfig = field(default_factory=TurnDetectorConfig)
    flow_hidden: int = 256

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, why: str) -> None:
            if not ok:
                raise ModelConfigError(f"model config `{name}` = {getattr(self, name)!r}: {why}")

        need(self.head_dim >= 32 and self.head_dim % 16 == 0, "head_dim",
             "must be a multiple of 16 and >= 32 (vLLM's CPU attention takes 32, 64, 80, ...)")
        need(self.num_attention_heads % self.num_key_value_heads == 0, "num_attention_heads",
             "must be a multiple of num_key_value_heads (grouped-query attention)")
        need(0 < self.num_experts_per_tok <= self.num_local_experts, "num_experts_per_tok",
             "must be between 1 and num_local_experts")
        need(self.attention_window >= self.tokens_per_tick, "attention_window",
             f"must hold at least one tick's block ({self.tokens_per_tick} tokens)")
        need(self.audio.input_samples_per_tick % self.audio.frames_per_tick == 0, "audio",
             "a tick's samples must split evenly into frames")

    @property
    def cache_len(self) -> int:
        return self.attention_sinks + self.attention_window

    @property
    def tokens_per_tick(self) -> int:
        return (self.text_slots_per_tick + self.vision.patches_per_frame
                + self.audio.frames_per_tick + 1)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelConfigError(f"model config has unknown keys {unknown}")
        data = dict(data)
        if "audio" in data:
            data["audio"] = AudioConfig(**data["audio"])
        if "vision" in data:
            data["vision"] = VisionConfig(**data["vision"])
        if "turn_detector" in data:
            data["turn_detector"] = TurnDetectorConfig(**data["turn_detector"])
        return cls(**data)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")


PRESETS: dict[str, ModelConfig] = {
    # The embedded default: many sessions per replica on 2 CPU cores.
    "tiny": ModelConfig(),
    # For benchmarks: a larger backbone with the same streams.
    "small": ModelConfig(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                         num_key_value_heads=2, head_dim=64, intermediate_size=1024,
                         num_local_experts=8, attention_window=508, flow_hidden=512),
}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ModelConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None


def mixtral_config(cfg: ModelConfig) -> dict:
    """The backbone as a Hugging Face `MixtralConfig` (what `config.json` holds)."""
    return {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "num_local_experts": cfg.num_local_experts,
        "num_experts_per_tok": cfg.num_experts_per_tok,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": 32768,
        "sliding_window": None,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "router_aux_loss_coef": 0.0,
        "output_router_logits": False,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "torch_dtype": "float32",
    }
