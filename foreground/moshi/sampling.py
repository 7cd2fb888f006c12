"""Per-session token sampling whose draws never depend on the batch.

Moshi samples with `torch.multinomial`-like draws from one shared generator, so a session's
tokens depend on how many sessions sampled before it. Here each draw is Gumbel-max: the token
is argmax(logits / temperature + g) over the top-k logits, with g = -log(-log(u)) Gumbel noise
and u a uniform number made by a counter-based hash of (session seed, frame, stream, token id).
That samples softmax(logits / temperature) restricted to the top k (exactly, up to the 23-bit
resolution of u), and a session's noise is a pure function of its own seed and position,
computed with integer tensor ops into preallocated buffers. Greedy rows (use_sampling off or temperature 0) get temperature 1, zero
noise and no cut, which leaves argmax(logits): LMGen's greedy choice, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

NEG_INF = float("-inf")
MASK32 = 0xFFFFFFFF
# Odd multipliers below 2**31, so a 32-bit value times one stays inside int64.
_MUL_A, _MUL_B = 0x7FEB352D, 0x5BD1E995
_UNIFORM_BITS = 23  # u = (h + 0.5) / 2**23 is exact in float32 and strictly inside (0, 1)


@dataclass
class SamplingConfig:
    """One session's sampling settings; the defaults are moshi's LMGen defaults."""

    use_sampling: bool = True
    temp: float = 0.8
    temp_text: float = 0.7
    top_k: int = 250
    top_k_text: int = 25
    seed: int = 0

    @classmethod
    def from_lm_gen_config(cls, d: dict | None) -> SamplingConfig:
        """Defaults from a Kyutai `config.json`'s `lm_gen_config` (LMGen keyword arguments)."""
        d = dict(d or {})
        if d.pop("cfg_coef", 1.0) != 1.0:
            raise ValueError("lm_gen_config key 'cfg_coef': classifier-free guidance is not implemented")
        unknown = sorted(set(d) - {"use_sampling", "temp", "temp_text", "top_k", "top_k_text"})
        if unknown:
            raise ValueError(f"lm_gen_config key {unknown[0]!r} is not a sampling option this engine knows")
        return cls(**d)

    def with_seed(self, seed: int) -> SamplingConfig:
        return replace(self, seed=seed)


def mix32(x: int) -> int:
    """The hash `mix32_` computes on tensors, for Python ints in [0, 2**32)."""
    x ^= x >> 16
    x = (x * _MUL_A) & MASK32
    x ^= x >> 15
    x = (x * _MUL_B) & MASK32
    return x ^ (x >> 16)


def mix32_(x: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """In place on int64 values in [0, 2**32); tmp: a buffer shaped like x."""
    torch.bitwise_right_shift(x, 16, out=tmp)
    x.bitwise_xor_(tmp).mul_(_MUL_A).bitwise_and_(MASK32)
    torch.bitwise_right_shift(x, 15, out=tmp)
    x.bitwise_xor_(tmp).mul_(_MUL_B).bitwise_and_(MASK32)
    torch.bitwise_right_shift(x, 16, out=tmp)
    return x.bitwise_xor_(tmp)


def seed_key(seed: int) -> int:
    """A session seed (any Python int) folded to the 32-bit key the hash starts from."""
    return mix32((seed & MASK32) ^ mix32((seed >> 32) & MASK32))


class StreamSampling:
    """Per-slot sampling parameters of one kind of stream (text, or the audio codebooks),
    as tensors with one row per slot so they move with a session when slots are compacted."""

    def __init__(self, rows: int, vocab: int, max_top_k: int) -> None:
        self.vocab, self.max_top_k = vocab, min(max_top_k, vocab)
        self.temperature = torch.ones(rows, 1)
        self.noise = torch.zeros(rows, 1)  # 1.0: sample; 0.0: greedy
        self.kth = torch.zeros(rows, 1, dtype=torch.int64)  # top_k - 1: where the cut-off sits
        self.no_cut = torch.ones(rows, 1, dtype=torch.bool)  # no top-k cut (greedy or top_k off)

    def state_tensors(self, max_slots: int) -> list[torch.Tensor]:
        return [self.temperature[:max_slots], self.noise[:max_slots], self.kth[:max_slots],
                self.no_cut[:max_slots]]

    def set(self, slot: int, use_sampling: bool, temperature: float, top_k: int) -> None:
        """LMGen's rule: sample when use_sampling and temperature > 0, from the top min(k, vocab)
        (all of them when k <= 0); otherwise argmax."""
        sampling = use_sampling and temperature > 0
        cut = sampling and 0 < top_k < self.vocab
        if cut and top_k > self.max_top_k:
            raise ValueError(f"top_k {top_k} exceeds this engine's max_top_k of {self.max_top_k}")
        self.temperature[slot] = temperature if sampling else 1.0
        self.noise[slot] = 1.0 if sampling else 0.0
        self.kth[slot] = top_k - 1 if cut else 0
        self.no_cut[slot] = not cut


class GumbelTopK:
    """Samples one token per row from [n, vocab] float32 logits, allocating nothing."""

    def __init__(self, rows: int, vocab: int, max_top_k: int) -> None:
        self.vocab, self.k_max = vocab, min(max_top_k, vocab)
        self.top_values = torch.zeros(rows, max(self.k_max, 1))
        self.top_indices = torch.zeros(rows, max(self.k_max, 1), dtype=torch.int64)
        self.threshold = torch.full((rows, 1), NEG_INF)
        self.below = torch.zeros(rows, vocab, dtype=torch.bool)
        self.scores = torch.zeros(rows, vocab)
        self.noise = torch.zeros(rows, vocab)
        self.bits = torch.zeros(rows, vocab, dtype=torch.int64)
        self.bits_tmp = torch.zeros(rows, vocab, dtype=torch.int64)
        self.row_key = torch.zeros(rows, 1, dtype=torch.int64)
        self.row_tmp = torch.zeros(rows, 1, dtype=torch.int64)
        # Each token id's own salt, hashed once so neighbouring ids get unrelated bits.
        self.token_salt = torch.tensor([mix32(i ^ 0x632BE5AB) for i in range(vocab)], dtype=torch.int64)

    def sample(self, logits: torch.Tensor, params: StreamSampling, seed_keys: torch.Tensor,
               steps: torch.Tensor, stream: int, out: torch.Tensor) -> torch.Tensor:
        """out[i] = the token of row i. logits: [n, vocab] float32; seed_keys, steps: [n] int64
        (the session's key and frame); stream: 0 for text, 1 + k for audio codebook k."""
        n = logits.shape[0]
        threshold, below = self.threshold[:n], self.below[:n]
        if self.k_max > 0:  # the k-th largest logit of each row is its cut-off
            top_values = self.top_values[:n]
            torch.topk(logits, self.k_max, dim=1, out=(top_values, self.top_indices[:n]))
            torch.gather(top_values, 1, params.kth[:n], out=threshold)
        threshold.masked_fill_(params.no_cut[:n], NEG_INF)
        torch.lt(logits, threshold, out=below)

        noise = self._gumbel(n, seed_keys, steps, stream)
        noise.mul_(params.noise[:n])
        scores = self.scores[:n]
        torch.div(logits, params.temperature[:n], out=scores)
        scores.add_(noise).masked_fill_(below, NEG_INF)
        return torch.argmax(scores, dim=1, out=out)

    def _gumbel(self, n: int, seed_keys: torch.Tensor, steps: torch.Tensor, stream: int) -> torch.Tensor:
        """[n, vocab] Gumbel(0, 1) noise, a function of (seed key, step, stream, token id) only."""
        key, tmp = self.row_key[:n], self.row_tmp[:n]
        torch.bitwise_and(steps.unsqueeze(1), MASK32, out=key)
        mix32_(key, tmp).bitwise_xor_(seed_keys.unsqueeze(1))
        mix32_(key, tmp).bitwise_xor_(mix32(stream + 1))
        mix32_(key, tmp)
        bits = self.bits[:n]
        torch.bitwise_xor(key, self.token_salt, out=bits)
        mix32_(bits, self.bits_tmp[:n]).bitwise_right_shift_(32 - _UNIFORM_BITS)
        noise = self.noise[:n]
        torch.add(bits, 0.5, out=noise)
        return noise.mul_(2.0 ** -_UNIFORM_BITS).log_().neg_().log_().neg_()
