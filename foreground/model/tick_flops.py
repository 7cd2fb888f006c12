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
    h, kvh, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    layers = cfg.num_hidden_layers
    first, second = conv_positions(det)
    projections = _mm(tokens, d, (h + 2 * kvh) * hd) + _mm(tokens, h * hd, d)
    attention = 2 * _mm(tokens * h, hd, cfg.cache_len)  # QK^T and AV, every entry of the window
    experts = cfg.num_experts_per_tok * (_mm(tokens, d, 2 * cfg.intermediate_size)
                                         + _mm(tokens, cfg.intermediate_size, d))
    flow = _mm(frames, d, cfg.flow_hidden) + a.flow_steps * (
        _mm(frames, a.n_mels, cfg.flow_hidden) + _mm(frames, cfg.flow_hidden, cfg.flow_hidden)
        + _mm(frames, cfg.flow_hidden, a.n_mels))
    return {
        "model.featuriser": _mm(frames, a.n_fft_in // 2 + 1, a.n_mels),
        "model.pitch_salience": _mm(frames, pitch_bins(a, det), det.pitch_candidates),
        "backbone.attention": layers * (projections + attention),
        "backbone.moe": layers * (_mm(tokens, d, cfg.num_local_experts) + experts),
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

