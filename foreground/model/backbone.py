"""The backbone: a Mixtral-style decoder-only MoE transformer, stepped on a KV cache.

Parameter names are those of `transformers.MixtralForCausalLM` on disk, so one safetensors
file loads here, in `transformers` and in vLLM. The step writes every intermediate into a
`BackboneWorkspace` allocated once, so a tick allocates no tensor.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from foreground.engine.stage_clock import STAGES
from foreground.kernels import apply_rotary_, attend_slots, linear, rms_norm
from foreground.kernels.matmul import pad_rows
from foreground.kernels.rotary import interleave_rotary_rows, rotary_inv_freq, rotary_table_
from foreground.model.config import ModelConfig
from foreground.model.moe import MixtralSparseMoe, MoeWorkspace


class KVCache(Protocol):
    """What a step needs of the cache (see `foreground.model.kv_ring.RingKVCache`)."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    positions: torch.Tensor
    mask: torch.Tensor

    def write(self, layer: int, batch: int, tokens: int, k: torch.Tensor, v: torch.Tensor) -> None: ...


class RMSNorm(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))


class MixtralAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, h, kvh, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(d, h * hd, bias=False)
        self.k_proj = nn.Linear(d, kvh * hd, bias=False)
        self.v_proj = nn.Linear(d, kvh * hd, bias=False)
        self.o_proj = nn.Linear(h * hd, d, bias=False)
        self.qkv_weight: torch.Tensor | None = None  # fused at prepare()

    def prepare(self, heads: int, kv_heads: int) -> None:
        """Fuse q, k and v into one matrix, q and k rows interleaved for the rotary multiply."""
        q = interleave_rotary_rows(self.q_proj.weight, heads)
        k = interleave_rotary_rows(self.k_proj.weight, kv_heads)
        self.qkv_weight = torch.cat([q, k, self.v_proj.weight]).detach()


class MixtralDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = MixtralAttention(cfg)
        self.block_sparse_moe = MixtralSparseMoe(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size)


class MixtralModel(nn.Module):
    """`model.*` in a Mixtral checkpoint: embeddings, decoder layers, final norm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(MixtralDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size)


class BackboneWorkspace:
    """Every buffer one step needs, for up to `max_slots` sessions of `tokens` tokens each."""

    def __init__(self, cfg: ModelConfig, max_slots: int, tokens: int) -> None:
        n = max_slots * tokens
        padded = pad_rows(n)  # matmuls compute whole row tiles (see kernels.matmul)
        h, kvh, hd, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        g = h // kvh
        self.max_slots, self.tokens = max_slots, tokens
        self.hidden = torch.zeros(n, d)
        self.normed = torch.zeros(padded, d)
        self.norm_scratch = torch.zeros(n, 1)
        self.qkv = torch.zeros(padded, (h + 2 * kvh) * hd)
        self.k_stage = torch.zeros(n, kvh, hd)
        self.v_stage = torch.zeros(n, kvh, hd)
        self.q_grouped = torch.zeros(max_slots, kvh, g * tokens, hd)
        self.scores = torch.zeros(max_slots, kvh, g * tokens, cfg.cache_len)
        self.attn = torch.zeros(max_slots, kvh, g * tokens, hd)
        self.attn_tokens = torch.zeros(padded, h * hd)
        self.attn_out = torch.zeros(padded, d)
        self.angles = torch.zeros(max_slots, tokens, 1, hd // 2)
        self.rotation = torch.zeros(max_slots, tokens, 1, hd // 2, dtype=torch.complex64)
        self.moe = MoeWorkspace(cfg, n)


class Backbone:
    """Runs `MixtralModel`'s decoder stack for B sessions × T new tokens each."""

    def __init__(self, cfg: ModelConfig, model: MixtralModel) -> None:
        self.cfg, self.model = cfg, model
        self.inv_freq = rotary_inv_freq(cfg.head_dim, cfg.rope_theta)
        self.scale = cfg.head_dim ** -0.5
        for layer in model.layers:
            layer.self_attn.prepare(cfg.num_attention_heads, cfg.num_key_value_heads)
            layer.block_sparse_moe.prepare()

    @torch.inference_mode()
    def step(self, ws: BackboneWorkspace, cache: KVCache, batch: int) -> torch.Tensor:
        """Decoder stack over ws.hidden[:batch*ws.tokens] (the embedded inputs, in place);
        the cache must be planned for this step. Returns the final hidden states (pre-norm)."""
        cfg, tokens = self.cfg, ws.tokens
        n = batch * tokens
        rows = pad_rows(n)
        h, kvh, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        g = h // kvh
        x = ws.hidden[:n]
        rotation = ws.rotation[:batch, :tokens]
        rotary_table_(cache.positions[:batch, :tokens].unsqueeze(-1), self.inv_freq, ws.angles[:batch, :tokens],
                      rotation)
        rotation = rotation.view(n, 1, hd // 2)
        for i, layer in enumerate(self.model.layers):
            attn = layer.self_attn
            rms_norm(x, layer.input_layernorm.weight, cfg.rms_norm_eps, ws.normed[:n], ws.norm_scratch[:n])
            qkv = linear(ws.normed[:rows], attn.qkv_weight, ws.qkv[:rows])[:n]
            q = qkv[:, : h * hd].view(n, h, hd)
            k = ws.k_stage[:n]
            k.copy_(qkv[:, h * hd : (h + kvh) * hd].view(n, kvh, hd))
            ws.v_stage[:n].copy_(qkv[:, (h + kvh) * hd :].view(n, kvh, hd))
            apply_rotary_(q, rotation)
            apply_rotary_(k, rotation)
            cache.write(i, batch, tokens, k.view(n * kvh, hd), ws.v_stage[:n].view(n * kvh, hd))
            # [B, T, KVH, G, D] -> [B, KVH, G, T, D]: each KV head's queries as one matrix.
            qg = ws.q_grouped[:batch]
            qg.view(batch, kvh, g, tokens, hd).copy_(q.view(batch, tokens, kvh, g, hd).permute(0, 2, 3, 1, 4))
            qg.mul_(self.scale)
            out = attend_slots(qg, cache.k[i][:batch], cache.v[i][:batch], cache.mask[:batch, :tokens],
                               ws.scores[:batch], ws.attn[:batch])
            ws.attn_tokens[:n].view(batch, tokens, kvh, g, hd).copy_(
                out.view(batch, kvh, g, tokens, hd).permute(0, 3, 1, 2, 4))
            x.add_(linear(ws.attn_tokens[:rows], attn.o_proj.weight, ws.attn_out[:rows])[:n])
            STAGES.lap("backbone.attention")
            rms_norm(x, layer.post_attention_layernorm.weight, cfg.rms_norm_eps, ws.normed[:n], ws.norm_scratch[:n])
            layer.block_sparse_moe.step(ws.normed, n, ws.moe, out=ws.attn_out[:n])
            x.add_(ws.attn_out[:n])
            STAGES.lap("backbone.moe")
        return x
