"""Where Mimi's tensors come from: a checkpoint's state dict, checked name by name, or seeds.

Every part of the codec asks a `WeightSource` for each of its tensors by its name in moshi's
`MimiModel.state_dict()`, with the shape it expects and how a fresh model would initialise it.
`StateDictSource` answers from a checkpoint (and says which tensor is missing or misshapen),
`SeededSource` draws the tensor instead: the code that builds the codec is the one list of names,
for loading and for `MimiCodec.seeded_state_dict` alike.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Protocol

import torch


class Init(Enum):
    """How a fresh model initialises a tensor (what `SeededSource` draws)."""

    FAN_IN = "fan_in"  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for conv/linear
    CONSTANT = "constant"  # norms' weights and biases, LayerScale, flags
    CODEBOOK = "codebook"  # distinct vectors, so that codes follow the input


class WeightSource(Protocol):
    def take(self, name: str, shape: tuple[int, ...], init: Init, *, fan_in: int = 0,
             fill: float = 0.0) -> torch.Tensor:
        """The tensor `name` of `shape`; `fan_in` (biases) and `fill` (constants) say how to seed it."""
        ...


# Names that Kyutai's published checkpoints (and older moshi versions) use for the same tensors:
# moshi's own load hooks rename them, so a `MimiModel` loads them; so do we.
_LEGACY_SUFFIXES = {
    "self_attn.in_proj_weight": "self_attn.in_projs.0.weight",
    "self_attn.in_proj.weight": "self_attn.in_projs.0.weight",
    "self_attn.out_proj.weight": "self_attn.out_projs.0.weight",
    "_codebook.inited": "_codebook._initialized",
    "_codebook.cluster_size": "_codebook.cluster_usage",
    "_codebook.embed_avg": "_codebook.embedding_sum",
    "_codebook.embed_sum": "_codebook.embedding_sum",
}


def _current_name(name: str) -> str:
    for old, new in _LEGACY_SUFFIXES.items():
        if name.endswith(old):
            return name[: -len(old)] + new
    return name


class StateDictSource:
    """Tensors of a checkpoint, converted to `dtype`; `finish()` refuses tensors nobody took."""

    def __init__(self, state: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
        self.state = {_current_name(name): tensor for name, tensor in state.items()}
        self.dtype = dtype
        self.taken: set[str] = set()

    def take(self, name: str, shape: tuple[int, ...], init: Init, *, fan_in: int = 0,
             fill: float = 0.0) -> torch.Tensor:
        if name not in self.state:
            raise KeyError(f"Mimi weights: missing tensor {name!r} (expected shape {shape})")
        tensor = self.state[name]
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"Mimi weights: tensor {name!r} has shape {tuple(tensor.shape)}, "
                             f"expected {tuple(shape)}")
        self.taken.add(name)
        return tensor.detach().to(device="cpu", dtype=self.dtype).contiguous()

    def finish(self) -> None:
        unexpected = sorted(set(self.state) - self.taken)
        if unexpected:
            more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
            raise ValueError(f"Mimi weights: unexpected tensors {unexpected[:5]}{more} "
                             "(is the config the checkpoint's?)")


class SeededSource:
    """Draws every tensor from one seeded generator; `drawn` is the resulting state dict."""

    # Codebook vectors all have this norm, that of a seeded codec's projected latents for speech
    # at -20 dBFS: the nearest vector (the code) then changes with the input, at every level.
    CODEBOOK_NORM = 0.1

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], init: Init, *, fan_in: int = 0,
             fill: float = 0.0) -> torch.Tensor:
        if init is Init.FAN_IN:
            bound = 1.0 / math.sqrt(fan_in or math.prod(shape[1:]))
            tensor = (torch.rand(shape, generator=self.generator) * 2.0 - 1.0) * bound
        elif init is Init.CONSTANT:
            tensor = torch.full(shape, fill)
        else:
            vectors = torch.randn(shape, generator=self.generator)
            tensor = vectors / vectors.norm(dim=-1, keepdim=True) * self.CODEBOOK_NORM
        self.drawn[name] = tensor
        return tensor
