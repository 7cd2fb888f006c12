"""How much arithmetic one tick of the reference model needs, counted from its config.

`bench tick` divides this by the matmul rate it measures to get the tick's floor: the time
the work would take if every multiply-add ran at the machine's matmul speed. Only products are
counted (2 FLOPs per multiply-add of a matmul, a convolution as its im2col matmul, attention's
QK^T and AV over the whole cache window); element-wise ops, norms, FFTs and gathers are left
out, as the floor's "nothing but matmuls" assumption says. What the engine computes beyond the
model's need (rows padded to whole tiles, masked cache entries) is not counted either: it is
part of what the floor ratio measures.
"""

from __future__ import annotations

from foreground.model.config import ModelConfig
from foreground.model.pitch_salience import pitch_bins
from foreground.model.turn_detector import conv_positions


def _mm(rows: int, k: int, n: int) -> int:
    return 2 * rows * k * n


def reference_tick_flops(cfg: ModelConfig, batch: int) -> dict[str, int]:
    """FLOPs per stage of one tick for `batch` sessions (stage names as `STAGES` laps)."""
    a, d, det = cfg.audio, cfg.hidden_size, cfg.turn_detector
    frames = batch * a.frames_per_tick
    tokens = batch * cfg.tokens_per_tick
    layers = cfg.num_hidden_layers
    first, second = conv_positions(det)
    # Every query attends over every entry of the window (sinks + ring).
    attention, moe = decoder_layer_flops(cfg, tokens, attended=tokens * cfg.cache_len)
    flow = _mm(frames, d, cfg.flow_hidden) + a.flow_steps * (
        _mm(frames, a.n_mels, cfg.flow_hidden) + _mm(frames, cfg.flow_hidden, cfg.flow_hidden)
        + _mm(frames, cfg.flow_hidden, a.n_mels))
    return {
        "model.featuriser": _mm(frames, a.n_fft_in // 2 + 1, a.n_mels),
        "model.pitch_salience": _mm(frames, pitch_bins(a, det), det.pitch_candidates),
        "backbone.attention": layers * attention,
        "backbone.moe": layers * moe,
        "model.text_head": _mm(frames, d, cfg.vocab_size),
        "model.audio_head": flow,
        "model.act_heads": _mm(batch, d, cfg.turn_classes + 1),
        "model.turn_detector": (_mm(batch * det.window_frames, det.frame_features, det.frame_dim)
                                + _mm(batch * first, det.frame_dim * det.conv_kernel, det.conv_channels)
                                + _mm(batch * second, det.conv_channels * det.conv_kernel, det.conv_channels)
                                + _mm(batch, det.conv_channels * second + det.context_features, det.hidden)
                                + _mm(batch, det.hidden, det.outputs)),
        # The vocoder: amplitudes at frames_per_tick + 1 knots times a [knots * n_mels, samples] basis.
        "model.voice": _mm(batch, (a.frames_per_tick + 1) * a.n_mels, a.output_samples_per_tick),
    }


def decoder_layer_flops(cfg: ModelConfig, tokens: int, attended: int) -> tuple[int, int]:
    """One decoder layer for `tokens` new tokens: (attention half, MoE half). `attended` is
    the number of (query, key) pairs the attention scores, summed over the tokens."""
    d, h, kvh, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    projections = _mm(tokens, d, (h + 2 * kvh) * hd) + _mm(tokens, h * hd, d)
    scores_and_values = 2 * 2 * attended * h * hd  # QK^T and AV
    router = _mm(tokens, d, cfg.num_local_experts)
    experts = cfg.num_experts_per_tok * (_mm(tokens, d, 2 * cfg.intermediate_size)
                                         + _mm(tokens, cfg.intermediate_size, d))
    return projections + scores_and_values, router + experts


def prefill_flops(cfg: ModelConfig, computed: int, context: int) -> int:
    """What a text LLM server (vLLM in `bench compare`) must compute for one request: the last
    `computed` of its `context` tokens through the decoder (token at position p attends to the
    p + 1 tokens up to itself), then the LM head for the one sampled position."""
    attended = sum(range(context - computed + 1, context + 1))
    attention, moe = decoder_layer_flops(cfg, computed, attended)
    return cfg.num_hidden_layers * (attention + moe) + _mm(1, cfg.hidden_size, cfg.vocab_size)
