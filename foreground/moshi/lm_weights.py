"""The Moshi LM's weights, under exactly the names of `moshi.models.lm.LMModel.state_dict()`.

`tensor_shapes(cfg)` lists every tensor LMModel has for a config; loading checks each name and
shape against it, so a checkpoint that would not load strictly into LMModel does not load here
either. Kyutai's published 7B checkpoint stores each attention's per-step projections fused
(`in_proj_weight`, `out_proj.weight`); those are split here the way LMModel's load hook does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from foreground.moshi.lm_config import LMConfig, gating_hidden


@dataclass(frozen=True)
class AttentionWeights:
    in_proj: torch.Tensor  # [3 * dim, dim]: queries, keys, values (heads contiguous in each)
    out_proj: torch.Tensor  # [dim, dim]


@dataclass(frozen=True)
class GatingWeights:
    linear_in: torch.Tensor  # [2 * hidden, dim]: the silu half, then the linear half
    linear_out: torch.Tensor  # [dim, hidden]

    @property
    def hidden(self) -> int:
        return self.linear_out.shape[1]


@dataclass(frozen=True)
class LayerWeights:
    """One transformer layer. The depformer has one attention and gating per weight set
    (codebook); the temporal transformer has one of each."""

    norm1: torch.Tensor  # [dim] RMSNorm scale, float32 (moshi's rms_norm_f32 upcasts it)
    norm2: torch.Tensor
    attention: tuple[AttentionWeights, ...]
    gating: tuple[GatingWeights, ...]


@dataclass(frozen=True)
class Head:
    """A linear output head (text or one audio codebook)."""

    weight: torch.Tensor  # [vocab, dim]
    bias: torch.Tensor | None


def tensor_shapes(cfg: LMConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of LMModel(**cfg) by name, in LMModel's order."""
    d, dd, card1, text1 = cfg.dim, cfg.depformer_dim, cfg.card + 1, cfg.text_card + 1
    shapes: dict[str, tuple[int, ...]] = {f"emb.{i}.weight": (card1, d) for i in range(cfg.n_q)}
    shapes["text_emb.weight"] = (text1, d)
    shapes["text_linear.weight"] = (cfg.text_card, d)
    if cfg.bias_proj:
        shapes["text_linear.bias"] = (cfg.text_card,)
    hidden = gating_hidden(d, cfg.dim_feedforward)
    for layer in range(cfg.num_layers):
        p = f"transformer.layers.{layer}."
        shapes[p + "self_attn.out_projs.0.weight"] = (d, d)
        shapes[p + "self_attn.in_projs.0.weight"] = (3 * d, d)
        shapes[p + "norm1.alpha"] = (1, 1, d)
        shapes[p + "norm2.alpha"] = (1, 1, d)
        shapes[p + "gating.linear_in.weight"] = (2 * hidden, d)
        shapes[p + "gating.linear_out.weight"] = (d, hidden)
    shapes["out_norm.alpha"] = (1, 1, d)
    for i in range(cfg.depformer_in_count):
        shapes[f"depformer_in.{i}.weight"] = (dd, d)
    for i in range(cfg.dep_q - 1):
        shapes[f"depformer_emb.{i}.weight"] = (card1, dd)
    shapes["depformer_text_emb.weight"] = (text1, dd)
    sets = range(cfg.depformer_weight_sets)
    for layer in range(cfg.depformer_num_layers):
        p = f"depformer.layers.{layer}."
        shapes.update({f"{p}self_attn.out_projs.{w}.weight": (dd, dd) for w in sets})
        shapes.update({f"{p}self_attn.in_projs.{w}.weight": (3 * dd, dd) for w in sets})
        shapes[p + "norm1.alpha"] = (1, 1, dd)
        shapes[p + "norm2.alpha"] = (1, 1, dd)
        for w in sets:
            h = gating_hidden(dd, cfg.depformer_dim_feedforward[w])
            shapes[f"{p}gating.{w}.linear_in.weight"] = (2 * h, dd)
            shapes[f"{p}gating.{w}.linear_out.weight"] = (dd, h)
    for k in range(cfg.dep_q):
        shapes[f"linears.{k}.weight"] = (cfg.card, dd)
        if cfg.bias_proj:
            shapes[f"linears.{k}.bias"] = (cfg.card,)
    return shapes


class MoshiLM:
    """The weights of one Moshi LM, grouped the way the step uses them (see `MoshiStreams`)."""

    def __init__(self, cfg: LMConfig, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
        self.cfg, self.dtype = cfg, dtype
        self.device = tensors["text_emb.weight"].device

        def w(name: str) -> torch.Tensor:
            return tensors[name].detach().to(dtype).contiguous()

        def norm(name: str) -> torch.Tensor:  # stored like every weight, applied in float32
            return w(name).float().reshape(-1)

        def head(prefix: str) -> Head:
            return Head(w(prefix + ".weight"), w(prefix + ".bias") if cfg.bias_proj else None)

        self.audio_emb = [w(f"emb.{i}.weight") for i in range(cfg.n_q)]
        self.text_emb = w("text_emb.weight")
        self.temporal_layers = [
            LayerWeights(
                norm1=norm(f"transformer.layers.{i}.norm1.alpha"), norm2=norm(f"transformer.layers.{i}.norm2.alpha"),
                attention=(AttentionWeights(w(f"transformer.layers.{i}.self_attn.in_projs.0.weight"),
                                            w(f"transformer.layers.{i}.self_attn.out_projs.0.weight")),),
                gating=(GatingWeights(w(f"transformer.layers.{i}.gating.linear_in.weight"),
                                      w(f"transformer.layers.{i}.gating.linear_out.weight")),))
            for i in range(cfg.num_layers)]
        self.out_norm = norm("out_norm.alpha")
        self.text_head = head("text_linear")
        self.depformer_in = [w(f"depformer_in.{i}.weight") for i in range(cfg.depformer_in_count)]
        # The depformer's token input for codebook k: the text token (k = 0) or audio codebook k-1.
        self.depformer_token_emb = [w("depformer_text_emb.weight")] + [
            w(f"depformer_emb.{i}.weight") for i in range(cfg.dep_q - 1)]
        sets = range(cfg.depformer_weight_sets)
        self.depformer_layers = [
            LayerWeights(
                norm1=norm(f"depformer.layers.{i}.norm1.alpha"), norm2=norm(f"depformer.layers.{i}.norm2.alpha"),
                attention=tuple(AttentionWeights(w(f"depformer.layers.{i}.self_attn.in_projs.{s}.weight"),
                                                 w(f"depformer.layers.{i}.self_attn.out_projs.{s}.weight"))
                                for s in sets),
                gating=tuple(GatingWeights(w(f"depformer.layers.{i}.gating.{s}.linear_in.weight"),
                                           w(f"depformer.layers.{i}.gating.{s}.linear_out.weight"))
                             for s in sets))
            for i in range(cfg.depformer_num_layers)]
        self.audio_heads = [head(f"linears.{k}") for k in range(cfg.dep_q)]

    @classmethod
    def from_state_dict(cls, cfg: LMConfig, state: dict[str, torch.Tensor],
                        dtype: torch.dtype = torch.float32) -> MoshiLM:
        """Check every name and shape against LMModel's, then keep the tensors in `dtype`."""
        state = _split_fused_projections(cfg, state)
        shapes = tensor_shapes(cfg)
        for name, shape in shapes.items():
            if name not in state:
                raise ValueError(f"Moshi LM state dict is missing tensor {name!r} (expected shape {list(shape)})")
            if tuple(state[name].shape) != shape:
                raise ValueError(f"Moshi LM tensor {name!r} has shape {list(state[name].shape)}, "
                                 f"expected {list(shape)}")
        unexpected = sorted(set(state) - set(shapes))
        if unexpected:
            raise ValueError(f"Moshi LM state dict has {len(unexpected)} tensors LMModel does not, "
                             f"e.g. {unexpected[:3]}")
        return cls(cfg, state, dtype)

    @staticmethod
    def seeded_state_dict(cfg: LMConfig, seed: int) -> dict[str, torch.Tensor]:
        """Random float32 weights under LMModel's names, scaled like moshi's init (std
        1/sqrt(fan-in)) so logits have a spread of about 1 and sampling has real choices;
        norm scales are 1 +- 0.1, so a test notices a norm applied without its scale."""
        gen = torch.Generator().manual_seed(seed)
        state = {}
        for name, shape in tensor_shapes(cfg).items():
            if name.endswith(".alpha"):
                value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            elif name.endswith(".bias"):
                value = 0.1 * torch.randn(shape, generator=gen)
            else:
                value = torch.randn(shape, generator=gen) / shape[-1] ** 0.5
            state[name] = value
        return state


def _split_fused_projections(cfg: LMConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`...self_attn.in_proj_weight` / `in_proj.weight` / `out_proj.weight` (all weight sets
    stacked on dim 0, as Kyutai publishes them) -> `in_projs.{i}.weight` / `out_projs.{i}.weight`."""
    fused = {"in_proj_weight": "in_projs", "in_proj.weight": "in_projs", "out_proj.weight": "out_projs"}
    if not any(name.endswith(tuple(f"self_attn.{k}" for k in fused)) for name in state):
        return state
    state = dict(state)
    for name in [n for n in state if ".self_attn." in n]:
        prefix, _, suffix = name.partition(".self_attn.")
        if suffix not in fused:
            continue
        sets = cfg.depformer_weight_sets if prefix.startswith("depformer.") else 1
        weight = state.pop(name)
        for i, part in enumerate(weight.view(sets, -1, *weight.shape[1:])):
            state[f"{prefix}.self_attn.{fused[suffix]}.{i}.weight"] = part
    return state
