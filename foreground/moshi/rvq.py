"""Mimi's split residual vector quantizer (moshi's `SplitResidualVectorQuantizer`), per slot.

The 12.5 Hz latent is projected twice: once for the semantic codebook, once for the acoustic
ones. Encoding picks, codebook after codebook, the vector nearest to what is left of the
projection and subtracts it; decoding sums the chosen vectors of each group, projects each sum
back to the latent and adds the two.

Distances are computed as torch.cdist does for moshi (it takes this path for codebooks of more
than 25 vectors): one matmul of [-2 r, |r|^2, 1] by [c, 1, |c|^2], clamped at 0, square-rooted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from foreground.kernels import linear, pad_rows
from foreground.moshi.mimi_config import QuantizerConfig
from foreground.moshi.mimi_weights import Init, WeightSource

CODEBOOK_EPSILON = 1e-5  # moshi's EuclideanCodebook: vectors = embedding_sum / max(usage, eps)


@dataclass(frozen=True, slots=True)
class Codebook:
    vectors: torch.Tensor  # [bins, dim]
    augmented: torch.Tensor  # [bins, dim + 2]: [c, 1, |c|^2]

    @classmethod
    def take(cls, source: WeightSource, prefix: str, cfg: QuantizerConfig) -> Codebook:
        source.take(f"{prefix}._initialized", (1,), Init.CONSTANT, fill=1.0)
        usage = source.take(f"{prefix}.cluster_usage", (cfg.bins,), Init.CONSTANT, fill=1.0)
        summed = source.take(f"{prefix}.embedding_sum", (cfg.bins, cfg.dimension), Init.CODEBOOK)
        vectors = summed / usage.clamp(min=CODEBOOK_EPSILON)[:, None]
        norms = vectors.pow(2).sum(-1, keepdim=True)
        return cls(vectors, torch.cat([vectors, torch.ones_like(norms), norms], dim=-1))


@dataclass(frozen=True, slots=True)
class QuantizerWeights:
    semantic_in: torch.Tensor  # [dim, latent]
    semantic_out: torch.Tensor  # [latent, dim]
    acoustic_in: torch.Tensor
    acoustic_out: torch.Tensor
    codebooks: tuple[Codebook, ...]  # the semantic one(s) first, then every acoustic one

    @classmethod
    def take(cls, source: WeightSource, cfg: QuantizerConfig, latent: int) -> QuantizerWeights:
        projections, codebooks = [], []
        for group, count in (("rvq_first", cfg.n_q_semantic), ("rvq_rest", cfg.n_q - cfg.n_q_semantic)):
            prefix = f"quantizer.{group}"
            # 1x1 Conv1d weights [out, in, 1] (moshi forces the projections on, even at equal sizes).
            for name, shape in (("input_proj", (cfg.dimension, latent, 1)),
                                ("output_proj", (latent, cfg.dimension, 1))):
                projections.append(source.take(f"{prefix}.{name}.weight", shape, Init.FAN_IN)[..., 0].contiguous())
            codebooks += [Codebook.take(source, f"{prefix}.vq.layers.{i}._codebook", cfg) for i in range(count)]
        return cls(*projections, tuple(codebooks))


class QuantizerStream:
    """Codes for `max_slots` latents at a time, and latents back from codes (no state)."""

    def __init__(self, weights: QuantizerWeights, cfg: QuantizerConfig, num_codebooks: int, max_slots: int) -> None:
        self.weights, self.num_codebooks, self.n_semantic = weights, num_codebooks, cfg.n_q_semantic
        latent, dim, rows = weights.semantic_in.shape[1], cfg.dimension, pad_rows(max_slots)
        dtype = weights.semantic_in.dtype
        self.latent = torch.zeros(rows, latent, dtype=dtype)  # encode's input, decode's output
        self.acoustic_latent = torch.zeros(rows, latent, dtype=dtype)
        self.residual = torch.zeros(rows, dim, dtype=dtype)  # also decode's sum of chosen vectors
        self.chosen = torch.zeros(max_slots, dim, dtype=dtype)
        self.squares = torch.zeros(max_slots, dim, dtype=dtype)
        self.augmented = torch.zeros(rows, dim + 2, dtype=dtype)
        self.augmented[:, dim + 1] = 1.0
        self.distances = torch.zeros(rows, cfg.bins, dtype=dtype)
        self.codes = torch.zeros(num_codebooks, max_slots, dtype=torch.int64)  # codebook-major

    def input(self, batch: int) -> torch.Tensor:
        return self.latent[:batch]

    def encode(self, batch: int, out: torch.Tensor) -> torch.Tensor:
        """The latent written to `input(batch)` -> out [batch, num_codebooks] int64."""
        rows, w = pad_rows(batch), self.weights
        groups = ((w.semantic_in, range(0, self.n_semantic)),
                  (w.acoustic_in, range(self.n_semantic, self.num_codebooks)))
        for projection, indices in groups:
            if not indices:
                continue
            linear(self.latent[:rows], projection, self.residual[:rows])
            for index in indices:
                codebook, codes = w.codebooks[index], self.codes[index, :batch]
                self._nearest(codebook, batch, codes)
                torch.index_select(codebook.vectors, 0, codes, out=self.chosen[:batch])
                self.residual[:batch].sub_(self.chosen[:batch])
        return out.copy_(self.codes[:, :batch].t())

    def _nearest(self, codebook: Codebook, batch: int, out: torch.Tensor) -> None:
        dim, rows = self.residual.shape[1], pad_rows(batch)
        residual = self.residual[:batch]
        torch.mul(residual, -2.0, out=self.augmented[:batch, :dim])
        torch.mul(residual, residual, out=self.squares[:batch])
        torch.sum(self.squares[:batch], dim=-1, keepdim=True, out=self.augmented[:batch, dim:dim + 1])
        linear(self.augmented[:rows], codebook.augmented, self.distances[:rows])
        distances = self.distances[:batch]
        distances.clamp_(min=0.0).sqrt_()
        torch.argmin(distances, dim=-1, out=out)

    def decode(self, codes: torch.Tensor, ignored: torch.Tensor | None = None) -> torch.Tensor:
        """codes [batch, num_codebooks] int64 -> the latent [batch, latent]; the codes of slots
        `ignored` ([batch, 1] bool) are read as 0."""
        batch, w = codes.shape[0], self.weights
        rows = pad_rows(batch)
        self.codes[:, :batch].copy_(codes.t())
        if ignored is not None:
            self.codes[:, :batch].masked_fill_(ignored.view(1, batch), 0)
        self._sum_vectors(0, self.n_semantic, batch)
        linear(self.residual[:rows], w.semantic_out, self.latent[:rows])
        if self.num_codebooks > self.n_semantic:
            self._sum_vectors(self.n_semantic, self.num_codebooks, batch)
            linear(self.residual[:rows], w.acoustic_out, self.acoustic_latent[:rows])
            self.latent[:batch].add_(self.acoustic_latent[:batch])
        return self.latent[:batch]

    def _sum_vectors(self, first: int, last: int, batch: int) -> None:
        summed = self.residual[:batch]
        torch.index_select(self.weights.codebooks[first].vectors, 0, self.codes[first, :batch], out=summed)
        for index in range(first + 1, last):
            torch.index_select(self.weights.codebooks[index].vectors, 0, self.codes[index, :batch],
                               out=self.chosen[:batch])
            summed.add_(self.chosen[:batch])
