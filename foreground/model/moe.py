"""Mixtral's sparse MoE block: a top-k router over SwiGLU experts.

Tokens are grouped by expert with a stable sort (so the order in which tokens reach an expert
is fixed by token index), each expert runs one matmul over its tokens, and each token's
expert outputs are added in expert order, weighted by the softmax over its top-k router logits.
"""

from __future__ import annotations

from itertools import accumulate

import torch
from torch import nn

from foreground.kernels import linear, softmax_
from foreground.kernels.matmul import ROW_TILE, MIN_TILES, pad_rows
from foreground.model.config import ModelConfig


class MixtralExpert(nn.Module):
    """w2(silu(w1 x) * w3 x): names as in Mixtral checkpoints (w1 gate, w3 up, w2 down)."""

    def __init__(self, d: int, inner: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d, inner, bias=False)
        self.w2 = nn.Linear(inner, d, bias=False)
        self.w3 = nn.Linear(d, inner, bias=False)


class MoeWorkspace:
    def __init__(self, cfg: ModelConfig, n: int) -> None:
        k, e, d, inner = cfg.num_experts_per_tok, cfg.num_local_experts, cfg.hidden_size, cfg.intermediate_size
        # An expert's rows start anywhere in the shared buffers and are computed in whole tiles.
        rows = n * k + MIN_TILES * ROW_TILE
        self.router = torch.zeros(pad_rows(n), e)
        self.top_weight = torch.zeros(n, k)
        self.top_expert = torch.zeros(n, k, dtype=torch.int64)
        self.sorted_expert = torch.zeros(n * k, dtype=torch.int64)
        self.order = torch.zeros(n * k, dtype=torch.int64)
        self.token = torch.zeros(n * k, dtype=torch.int64)
        self.counts = torch.zeros(e, dtype=torch.int64)
        self.ones = torch.ones(n * k, dtype=torch.int64)
        self.weight = torch.zeros(n * k, 1)
        self.x = torch.zeros(rows, d)
        self.gate_up = torch.zeros(rows, 2 * inner)
        self.act = torch.zeros(rows, inner)
        self.y = torch.zeros(rows, d)


class MixtralSparseMoe(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.top_k, self.inner = cfg.num_experts_per_tok, cfg.intermediate_size
        self.gate = nn.Linear(cfg.hidden_size, cfg.num_local_experts, bias=False)
        self.experts = nn.ModuleList(MixtralExpert(cfg.hidden_size, cfg.intermediate_size)
                                     for _ in range(cfg.num_local_experts))
        self.gate_up: list[torch.Tensor] = []

    def prepare(self) -> None:
        """Fuse each expert's w1 and w3 into one [2*inner, d] matrix (gate rows first)."""
        self.gate_up = [torch.cat([e.w1.weight, e.w3.weight]).detach() for e in self.experts]

    def step(self, x_rows: torch.Tensor, n: int, ws: MoeWorkspace, out: torch.Tensor) -> torch.Tensor:
        """out[n, d] = MoE(x_rows[:n]); x_rows holds at least pad_rows(n) rows. Allocation-free.

        The n*k (token, expert) rows sit in expert order in the shared buffers; only the two
        GEMMs run expert by expert, each over whole tiles from that expert's first row (the rows
        past its last spill into the next expert's, which its own GEMM, run later, overwrites).
        Gathering, the activation, the routing weights and the sum back into tokens run once
        over all rows (per expert, they were ~25 more tensor ops a layer)."""
        k = self.top_k
        nk = n * k
        x = x_rows[:n]
        router = linear(x_rows[: pad_rows(n)], self.gate.weight, ws.router[: pad_rows(n)])[:n]
        top_w, top_e = ws.top_weight[:n], ws.top_expert[:n]
        torch.topk(router, k, dim=-1, out=(top_w, top_e))
        softmax_(top_w)
        flat_e = top_e.view(nk)
        order, token = ws.order[:nk], ws.token[:nk]
        torch.sort(flat_e, stable=True, out=(ws.sorted_expert[:nk], order))
        torch.div(order, k, rounding_mode="floor", out=token)
        ws.counts.zero_().index_add_(0, flat_e, ws.ones[:nk])
        torch.index_select(x, 0, token, out=ws.x[:nk])
        counts = ws.counts.tolist()
        # Each expert with tokens: its rows in whole tiles, from its first row in expert order.
        tiles = [(e, slice(start, start + pad_rows(count)))
                 for e, (start, count) in enumerate(zip(accumulate(counts, initial=0), counts)) if count]
        for e, tiled in tiles:
            linear(ws.x[tiled], self.gate_up[e], ws.gate_up[tiled])
        gate_up = ws.gate_up[:nk]
        torch.mul(nn.functional.silu(gate_up[:, : self.inner], inplace=True), gate_up[:, self.inner :],
                  out=ws.act[:nk])
        for e, tiled in tiles:
            linear(ws.act[tiled], self.experts[e].w2.weight, ws.y[tiled])
        torch.index_select(top_w.view(nk), 0, order, out=ws.weight[:nk].view(nk))
        y = ws.y[:nk].mul_(ws.weight[:nk])
        # index_add_ adds source rows in their order: each token's experts in expert order.
        return out.zero_().index_add_(0, token, y)
