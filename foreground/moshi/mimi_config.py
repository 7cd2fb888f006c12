"""Mimi's settings as typed dataclasses, read from Kyutai's dict format (see `presets.py`).

Only the variant Kyutai publishes is supported (causal SEANet with ELU and plain convolutions,
a RoPE transformer with LayerNorm and a GELU feed-forward on each side, a split RVQ, learnt
conv resampling from the encoder's 25 Hz to 12.5 Hz); anything else is refused here, with the
key named, rather than computed wrongly later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from foreground.moshi.presets import MIMI_DEFAULT


class MimiConfigError(ValueError):
    """A Mimi setting is missing or outside what microturn implements; the message names it."""


@dataclass(frozen=True, slots=True)
class SeanetConfig:
    """The convolutional encoder/decoder (the same settings build both)."""

    dimension: int  # latent channels at the encoder's output / decoder's input
    n_filters: int  # channels after the first convolution; doubled at each downsampling
    ratios: tuple[int, ...]  # in decoder order; the encoder downsamples by them reversed
    kernel_size: int  # first convolution
    last_kernel_size: int
    residual_kernel_size: int
    n_residual_layers: int
    dilation_base: int
    compress: int  # a residual unit's inner width is dim // compress

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)


@dataclass(frozen=True, slots=True)
class TransformerConfig:
    """The streaming transformer after the SEANet encoder and before the decoder."""

    d_model: int
    num_heads: int
    num_layers: int
    dim_feedforward: int
    context: int  # a query sees keys at most `context - 1` positions back (a ring of `context`)
    max_period: float  # RoPE
    layer_scale: float | None  # None: no LayerScale tensors

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


@dataclass(frozen=True, slots=True)
class QuantizerConfig:
    """Split RVQ: one semantic codebook, then `n_q - 1` acoustic ones, each of `bins` vectors."""

    dimension: int  # codebook vector size
    n_q: int  # codebooks stored in the weights
    bins: int
    n_q_semantic: int = 1


@dataclass(frozen=True, slots=True)
class MimiConfig:
    sample_rate: int
    frame_rate: float
    seanet: SeanetConfig
    transformer: TransformerConfig
    quantizer: QuantizerConfig
    num_codebooks: int  # codebooks the LM reads and writes (8 for Moshi): the first ones of n_q

    @property
    def samples_per_frame(self) -> int:
        return int(self.sample_rate / self.frame_rate)

    @property
    def encoder_frames_per_frame(self) -> int:
        """SEANet frames (25 Hz) per codec frame (12.5 Hz): the resampling stride."""
        return self.samples_per_frame // self.seanet.hop_length

    @classmethod
    def from_kyutai(cls, d: dict | None, num_codebooks: int) -> MimiConfig:
        """Typed view of a Kyutai Mimi dict (None: Moshi's default Mimi)."""
        d = MIMI_DEFAULT if d is None else d
        seanet, tr, quant = _section(d, "seanet"), _section(d, "transformer"), _section(d, "quantizer")
        _require(d, "channels", 1)
        _require(seanet, "channels", 1)
        for key, value in (("causal", True), ("activation", "ELU"), ("norm", "none"),
                           ("pad_mode", "constant"), ("true_skip", True)):
            _require(seanet, key, value, section="seanet")
        for key, value in (("causal", True), ("conv_layout", True), ("gating", "none"),
                           ("norm", "layer_norm"), ("positional_embedding", "rope")):
            _require(tr, key, value, section="transformer")
        _require(tr, "kv_repeat", 1, section="transformer")
        dimension = int(seanet["dimension"])
        for key in ("d_model", "input_dimension"):
            if int(tr[key]) != dimension:
                raise MimiConfigError(f"transformer.{key}={tr[key]} must equal seanet.dimension={dimension}")
        if [int(x) for x in tr["output_dimensions"]] != [dimension]:
            raise MimiConfigError(f"transformer.output_dimensions={tr['output_dimensions']} must be [{dimension}]")
        for key in ("input_dimension", "output_dimension"):
            if int(quant.get(key, dimension)) != dimension:
                raise MimiConfigError(f"quantizer.{key}={quant[key]} must equal seanet.dimension={dimension}")
        cfg = cls(
            sample_rate=int(d["sample_rate"]),
            frame_rate=float(d["frame_rate"]),
            seanet=SeanetConfig(
                dimension=dimension, n_filters=int(seanet["n_filters"]),
                ratios=tuple(int(r) for r in seanet["ratios"]), kernel_size=int(seanet["kernel_size"]),
                last_kernel_size=int(seanet["last_kernel_size"]),
                residual_kernel_size=int(seanet["residual_kernel_size"]),
                n_residual_layers=int(seanet["n_residual_layers"]),
                dilation_base=int(seanet["dilation_base"]), compress=int(seanet["compress"])),
            transformer=TransformerConfig(
                d_model=dimension, num_heads=int(tr["num_heads"]), num_layers=int(tr["num_layers"]),
                dim_feedforward=int(tr["dim_feedforward"]), context=int(tr["context"]),
                max_period=float(tr["max_period"]),
                layer_scale=None if tr.get("layer_scale") is None else float(tr["layer_scale"])),
            quantizer=QuantizerConfig(dimension=int(quant["dimension"]), n_q=int(quant["n_q"]),
                                      bins=int(quant["bins"])),
            num_codebooks=int(num_codebooks),
        )
        cfg._check()
        return cfg

    def _check(self) -> None:
        if self.sample_rate % self.seanet.hop_length or self.samples_per_frame % self.seanet.hop_length:
            raise MimiConfigError(f"seanet.ratios {list(self.seanet.ratios)} do not divide a frame of "
                                  f"{self.samples_per_frame} samples")
        if self.encoder_frames_per_frame < 2:
            raise MimiConfigError("frame_rate must be below the SEANet frame rate (learnt conv downsampling)")
        if self.transformer.d_model % self.transformer.num_heads or self.transformer.head_dim % 2:
            raise MimiConfigError("transformer.d_model must split into num_heads heads of even size")
        if self.transformer.context < 2 * self.encoder_frames_per_frame:
            raise MimiConfigError(f"transformer.context={self.transformer.context} is shorter than a step")
        q = self.quantizer
        if not q.n_q_semantic <= self.num_codebooks <= q.n_q:
            raise MimiConfigError(f"num_codebooks={self.num_codebooks} must be in [{q.n_q_semantic}, {q.n_q}]")
        if self.seanet.n_filters % self.seanet.compress:
            raise MimiConfigError("seanet.compress must divide seanet.n_filters")


def _section(d: dict, key: str) -> dict:
    if key not in d or not isinstance(d[key], dict):
        raise MimiConfigError(f"Mimi config has no {key!r} section")
    return d[key]


def _require(d: dict, key: str, value, section: str | None = None) -> None:
    if d.get(key, value) != value:
        where = f"{section}.{key}" if section else key
        raise MimiConfigError(f"{where}={d[key]!r} is not supported (only {value!r})")
