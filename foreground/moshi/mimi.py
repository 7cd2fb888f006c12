"""Mimi, Kyutai's streaming speech codec, for many sessions at once.

One step is one 80 ms frame (1920 samples at 24 kHz) of every live session:

    encode: PCM -> SEANet encoder (25 Hz latents, 2 a frame) -> transformer -> learnt conv
            downsampling (12.5 Hz, 1 a frame) -> split RVQ -> `num_codebooks` codes
    decode: codes -> RVQ vectors -> learnt transposed-conv upsampling (2 latents) ->
            transformer -> SEANet decoder -> PCM

This is the inference path of moshi's `MimiModel` in streaming mode, as `loaders.get_mimi`
builds it, with the same weights (`MimiCodec`, loaded from a `MimiModel.state_dict()`). Every
slot's stream state lives in preallocated tensors with a leading slot dimension (`MimiStreams`,
a `SlotState` of `foreground.engine.session_slots`), every matmul is the batch-invariant
`linear` over `pad_rows` rows, every other op works row by row: a session gets the same bits
alone or among any others, and a step allocates no tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from foreground.moshi.causal_conv import CausalConv1d, ConvWeights, DepthwiseConvTr1d, DepthwiseConvTrWeights
from foreground.moshi.mimi_config import MimiConfig
from foreground.moshi.mimi_transformer import TransformerStream, TransformerWeights
from foreground.moshi.mimi_weights import SeededSource, StateDictSource, WeightSource
from foreground.moshi.rvq import QuantizerStream, QuantizerWeights
from foreground.moshi.seanet import SeanetStream, SeanetWeights


@dataclass(frozen=True, slots=True)
class MimiCodec:
    """Mimi's weights, laid out for the kernels; shared by any number of `MimiStreams`."""

    cfg: MimiConfig
    seanet_encoder: SeanetWeights
    encoder_transformer: TransformerWeights
    downsample: ConvWeights
    quantizer: QuantizerWeights
    upsample: DepthwiseConvTrWeights
    decoder_transformer: TransformerWeights
    seanet_decoder: SeanetWeights

    @classmethod
    def from_state_dict(cls, cfg: MimiConfig, state: dict[str, torch.Tensor],
                        dtype: torch.dtype = torch.float32) -> MimiCodec:
        """Weights named as in moshi's `MimiModel.state_dict()` (Kyutai's checkpoint names load
        too). Raises KeyError naming a missing tensor, ValueError for a misshapen or unknown one."""
        source = StateDictSource(state, dtype)
        codec = cls._take(cfg, source)
        source.finish()
        return codec

    @staticmethod
    def seeded_state_dict(cfg: MimiConfig, seed: int) -> dict[str, torch.Tensor]:
        """Random weights under moshi's names and shapes (a `MimiModel` loads them strictly):
        PyTorch's default scales, and distinct codebook vectors, so that codes follow the audio."""
        source = SeededSource(seed)
        MimiCodec._take(cfg, source)
        return source.drawn

    @classmethod
    def _take(cls, cfg: MimiConfig, source: WeightSource) -> MimiCodec:
        dim, stride = cfg.seanet.dimension, cfg.encoder_frames_per_frame
        return cls(
            cfg=cfg,
            seanet_encoder=SeanetWeights.take_encoder(source, cfg.seanet),
            seanet_decoder=SeanetWeights.take_decoder(source, cfg.seanet),
            encoder_transformer=TransformerWeights.take(source, "encoder_transformer", cfg.transformer),
            decoder_transformer=TransformerWeights.take(source, "decoder_transformer", cfg.transformer),
            quantizer=QuantizerWeights.take(source, cfg.quantizer, dim),
            downsample=ConvWeights.take(source, "downsample.conv.conv.conv", dim, dim, 2 * stride,
                                        stride=stride, bias=False),
            upsample=DepthwiseConvTrWeights.take(source, "upsample.convtr.convtr.convtr", dim, stride),
        )


class EncoderStream:
    """PCM frames -> codes, for `max_slots` sessions."""

    def __init__(self, codec: MimiCodec, max_slots: int) -> None:
        cfg = codec.cfg
        self.seanet = SeanetStream(codec.seanet_encoder, max_slots, cfg.samples_per_frame)
        self.transformer = TransformerStream(codec.encoder_transformer, cfg.transformer, max_slots,
                                             self.seanet.t_out)
        self.downsample = CausalConv1d(codec.downsample, max_slots, self.seanet.t_out, replicate_pad=True)
        self.quantizer = QuantizerStream(codec.quantizer, cfg.quantizer, cfg.num_codebooks, max_slots)
        self.parts = (self.seanet, self.transformer, self.downsample)

    def step(self, pcm: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        batch = pcm.shape[0]
        self.seanet.input(batch)[..., 0].copy_(pcm)
        self.transformer.input(batch).copy_(self.seanet.step(batch))
        self.downsample.input(batch).copy_(self.transformer.step(batch))
        self.quantizer.input(batch).copy_(self.downsample.step(batch).view(batch, -1))
        return self.quantizer.encode(batch, out)


class DecoderStream:
    """Codes -> PCM frames, for `max_slots` sessions."""

    def __init__(self, codec: MimiCodec, max_slots: int) -> None:
        cfg = codec.cfg
        t = cfg.encoder_frames_per_frame
        self.quantizer = QuantizerStream(codec.quantizer, cfg.quantizer, cfg.num_codebooks, max_slots)
        self.upsample = DepthwiseConvTr1d(codec.upsample, max_slots, 1)
        self.transformer = TransformerStream(codec.decoder_transformer, cfg.transformer, max_slots, t)
        self.seanet = SeanetStream(codec.seanet_decoder, max_slots, t)
        self.parts = (self.upsample, self.transformer, self.seanet)
        self.inactive = torch.zeros(max_slots, 1, dtype=torch.bool)

    def step(self, codes: torch.Tensor, out: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
        batch = codes.shape[0]
        inactive = None
        if active is not None:  # their codes may be placeholders, even out of range: read code 0
            inactive = torch.logical_not(active.view(batch, 1), out=self.inactive[:batch])
        latent = self.quantizer.decode(codes, inactive)
        self.transformer.input(batch).copy_(self.upsample.step(latent.view(batch, 1, -1), batch, active))
        self.seanet.input(batch).copy_(self.transformer.step(batch, active))
        out.copy_(self.seanet.step(batch, active).view(batch, -1))
        if inactive is not None:
            out.masked_fill_(inactive, 0.0)
        return out


class MimiStreams:
    """Per-slot streaming state of `max_slots` sessions: each slot encodes one session's audio
    and, independently, decodes the model's codes for it. A `SlotState`: `state_tensors()` have
    `max_slots` rows; `reset(slot)` starts that slot's two streams afresh."""

    def __init__(self, codec: MimiCodec, max_slots: int) -> None:
        self.codec, self.max_slots = codec, max_slots
        self.encoder = EncoderStream(codec, max_slots)
        self.decoder = DecoderStream(codec, max_slots)

    def state_tensors(self) -> list[torch.Tensor]:
        return [t for part in (*self.encoder.parts, *self.decoder.parts) for t in part.state_tensors()]

    def reset(self, slot: int) -> None:
        for part in (*self.encoder.parts, *self.decoder.parts):
            part.reset(slot)

    def encode(self, pcm: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """pcm [b, 1920] float in [-1, 1] for slots 0..b-1 -> out [b, num_codebooks] int64."""
        cfg = self.codec.cfg
        self._check(pcm, (cfg.samples_per_frame,), out, (cfg.num_codebooks,), "pcm")
        return self.encoder.step(pcm, out)

    def decode(self, codes: torch.Tensor, out: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """codes [b, num_codebooks] int64 for slots 0..b-1 -> out [b, 1920] float.

        `active` ([b] bool, None: all): a slot that is not gets silence and its decoder stream
        does not advance, as moshi's server does not call `decode` before the LM's first codes."""
        cfg = self.codec.cfg
        self._check(codes, (cfg.num_codebooks,), out, (cfg.samples_per_frame,), "codes")
        if active is not None and tuple(active.shape) != (codes.shape[0],):
            raise ValueError(f"active must be [{codes.shape[0]}] bool, got {list(active.shape)}")
        return self.decoder.step(codes, out, active)

    def encoder_latent(self, slot: int) -> torch.Tensor:
        """The latent the last `encode` quantized for `slot` ([dimension], a view): what moshi's
        `quantizer.encode` receives, for parity checks."""
        return self.encoder.quantizer.latent[slot]

    def _check(self, given: torch.Tensor, given_tail: tuple, out: torch.Tensor, out_tail: tuple, name: str) -> None:
        batch = given.shape[0]
        if given.dim() != 2 or tuple(given.shape[1:]) != given_tail or not 1 <= batch <= self.max_slots:
            raise ValueError(f"{name} must be [b <= {self.max_slots}, {given_tail[0]}], got {list(given.shape)}")
        if tuple(out.shape) != (batch, *out_tail):
            raise ValueError(f"out must be {[batch, *out_tail]}, got {list(out.shape)}")
