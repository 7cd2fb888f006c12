"""SEANet, Mimi's convolutional encoder (24 kHz samples -> 25 Hz latents) and decoder (back).

Both are a first convolution followed by layers that each start with an ELU: residual units
(ELU, conv K=3, ELU, conv K=1, plus the input) and strided convolutions (the encoder's
downsampling) or transposed ones (the decoder's upsampling). Tensor names follow the index of
each module in moshi's `nn.Sequential` (`encoder.model.{i}...`), ELUs included.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from foreground.moshi.causal_conv import CausalConv1d, CausalConvTr1d, ConvTrWeights, ConvWeights
from foreground.moshi.mimi_config import SeanetConfig
from foreground.moshi.mimi_weights import WeightSource


def elu(x: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """ELU (alpha 1) as max(x, 0) + expm1(min(x, 0)) into `out`.

    torch's fused `elu` rounds the elements its vectorised loop leaves over (a tensor's tail)
    differently from the others, so a slot's result would depend on how many slots follow it;
    `expm1`, `clamp` and `add` give every element the same bits wherever it sits.
    """
    torch.clamp(x, max=0.0, out=scratch)
    scratch.expm1_()
    torch.clamp(x, min=0.0, out=out)
    return out.add_(scratch)


@dataclass(frozen=True, slots=True)
class ResidualUnitWeights:
    inner: ConvWeights  # dim -> dim // compress, kernel residual_kernel_size
    outer: ConvWeights  # back to dim, kernel 1

    @classmethod
    def take(cls, source: WeightSource, prefix: str, dim: int, cfg: SeanetConfig, dilation: int) -> ResidualUnitWeights:
        hidden = dim // cfg.compress
        inner = ConvWeights.take(source, f"{prefix}.block.1.conv.conv", dim, hidden, cfg.residual_kernel_size,
                                 dilation=dilation)
        outer = ConvWeights.take(source, f"{prefix}.block.3.conv.conv", hidden, dim, 1)
        return cls(inner, outer)


SeanetLayer = ConvWeights | ConvTrWeights | ResidualUnitWeights


@dataclass(frozen=True, slots=True)
class SeanetWeights:
    first: ConvWeights
    layers: tuple[SeanetLayer, ...]  # each after an ELU (residual units apply their own)

    @classmethod
    def take_encoder(cls, source: WeightSource, cfg: SeanetConfig, prefix: str = "encoder.model") -> SeanetWeights:
        nf, layers = cfg.n_filters, []
        first = ConvWeights.take(source, f"{prefix}.0.conv.conv", 1, nf, cfg.kernel_size)
        index, mult = 1, 1
        for ratio in reversed(cfg.ratios):
            for j in range(cfg.n_residual_layers):
                layers.append(ResidualUnitWeights.take(source, f"{prefix}.{index}", mult * nf, cfg,
                                                       cfg.dilation_base**j))
                index += 1
            index += 1  # the ELU
            layers.append(ConvWeights.take(source, f"{prefix}.{index}.conv.conv", mult * nf, mult * nf * 2,
                                           2 * ratio, stride=ratio))
            index += 1
            mult *= 2
        index += 1
        layers.append(ConvWeights.take(source, f"{prefix}.{index}.conv.conv", mult * nf, cfg.dimension,
                                       cfg.last_kernel_size))
        return cls(first, tuple(layers))

    @classmethod
    def take_decoder(cls, source: WeightSource, cfg: SeanetConfig, prefix: str = "decoder.model") -> SeanetWeights:
        nf, layers = cfg.n_filters, []
        mult = 2 ** len(cfg.ratios)
        first = ConvWeights.take(source, f"{prefix}.0.conv.conv", cfg.dimension, mult * nf, cfg.kernel_size)
        index = 1
        for ratio in cfg.ratios:
            index += 1  # the ELU
            layers.append(ConvTrWeights.take(source, f"{prefix}.{index}.convtr.convtr", mult * nf,
                                             mult * nf // 2, ratio))
            index += 1
            for j in range(cfg.n_residual_layers):
                layers.append(ResidualUnitWeights.take(source, f"{prefix}.{index}", mult * nf // 2, cfg,
                                                       cfg.dilation_base**j))
                index += 1
            mult //= 2
        index += 1
        layers.append(ConvWeights.take(source, f"{prefix}.{index}.conv.conv", nf, 1, cfg.last_kernel_size))
        return cls(first, tuple(layers))


class ResidualUnit:
    def __init__(self, weights: ResidualUnitWeights, max_slots: int, t: int) -> None:
        self.inner = CausalConv1d(weights.inner, max_slots, t)
        self.outer = CausalConv1d(weights.outer, max_slots, t)
        self.t_out = t

    def step(self, x: torch.Tensor, batch: int, scratch: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
        elu(x, self.inner.input(batch), scratch[: x.numel()].view(x.shape))
        hidden = self.inner.step(batch, active)
        elu(hidden, self.outer.input(batch), scratch[: hidden.numel()].view(hidden.shape))
        return self.outer.step(batch, active).add_(x)


class SeanetStream:
    """A SEANet encoder or decoder streamed for `max_slots` sessions, `t_in` frames a step."""

    def __init__(self, weights: SeanetWeights, max_slots: int, t_in: int) -> None:
        self.first = CausalConv1d(weights.first, max_slots, t_in)
        self.layers: list[CausalConv1d | CausalConvTr1d | ResidualUnit] = []
        t, widest = self.first.t_out, 0
        for layer in weights.layers:
            if isinstance(layer, ResidualUnitWeights):
                stream = ResidualUnit(layer, max_slots, t)
                width = layer.inner.in_channels
            elif isinstance(layer, ConvTrWeights):
                stream = CausalConvTr1d(layer, max_slots, t)
                width = layer.matrix.shape[1]
            else:
                stream = CausalConv1d(layer, max_slots, t)
                width = layer.in_channels
            widest = max(widest, max_slots * t * width)
            self.layers.append(stream)
            t = stream.t_out
        self.t_out = t
        self.elu_scratch = torch.zeros(widest, dtype=weights.first.matrix.dtype)  # shared: ELUs run in turn

    def convolutions(self) -> list[CausalConv1d | CausalConvTr1d]:
        convs: list = [self.first]
        for layer in self.layers:
            convs += [layer.inner, layer.outer] if isinstance(layer, ResidualUnit) else [layer]
        return convs

    def state_tensors(self) -> list[torch.Tensor]:
        return [t for conv in self.convolutions() for t in conv.state_tensors()]

    def reset(self, slot: int) -> None:
        for conv in self.convolutions():
            conv.reset(slot)

    def input(self, batch: int) -> torch.Tensor:
        """Where a step's input goes: [batch, t_in, C_in]."""
        return self.first.input(batch)

    def step(self, batch: int, active: torch.Tensor | None = None) -> torch.Tensor:
        """Run the input written to `input(batch)` through; returns [batch, t_out, C_out].
        Slots not `active` ([batch] bool, None: all are) keep their state."""
        x = self.first.step(batch, active)
        for layer in self.layers:
            if isinstance(layer, ResidualUnit):
                x = layer.step(x, batch, self.elu_scratch, active)
            else:
                elu(x, layer.input(batch), self.elu_scratch[: x.numel()].view(x.shape))
                x = layer.step(batch, active)
        return x
