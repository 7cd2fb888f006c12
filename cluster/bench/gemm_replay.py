"""The tick's matrix products replayed alone: what this machine's BLAS needs at the tick's shapes.

`flop_floor_ms` prices every FLOP at the rate of one large square product (1024 x 1024 x 1024).
The tick's products are smaller (K of 32 to 1280, 1 to 4800 outputs, the attention's batches of
48 x 32 tiles), and a BLAS runs those slower: its packing and loop costs are spread over fewer
FLOPs. To tell that cost apart from the rest of the time over the floor, a few ticks' products
are recorded (op, operand shapes and strides, dtype) and each distinct one then runs alone, on
fresh operands laid out the same way and warm in cache. `replay_ms` is the sum over a tick's
calls of their median times: no tick that uses these kernels can take less. The replay runs in
rounds that take turns with the reference product, so that `replay_ms` over the floor at the rate
timed in those same seconds (`gemm_replay_floor_ratio` in `bench tick`) is the part of
`floor_ratio` that belongs to the BLAS at these shapes, not to drift between two minutes of a
shared machine nor to the tick's own code.

The same products are also timed where the tick ran them (`in_tick_ms`): over `replay_ms`, that
is what the tick's working set (KV caches, scores, other buffers) costs them in the caches; the
tick's wall time over `in_tick_ms` is everything that is not a product (element-wise ops,
copies, Python between ops). Each product is put in the stage it ran in (the stage clock's laps,
`STAGES`), so the stage table shows both times per stage.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from cluster.bench.tick_floor import matmul_rate_gflops, median_seconds
from foreground.engine.stage_clock import STAGES

MATMUL_OPS = frozenset({torch.ops.aten.mm, torch.ops.aten.bmm, torch.ops.aten.addmm, torch.ops.aten.baddbmm})
ROUNDS = 5
REPEATS = 5


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    def fresh(self, gen: torch.Generator) -> torch.Tensor:
        t = torch.empty_strided(self.shape, self.stride, dtype=self.dtype)
        n = t.untyped_storage().nbytes() // t.element_size()  # filled through its storage:
        t.as_strided((n,), (1,), 0).copy_(torch.randn(n, generator=gen))  # expanded operands too
        return t


@dataclass(frozen=True)
class MatmulCall:
    """One product as the tick called it: the op overload and its arguments, tensors as specs."""
    op: torch._ops.OpOverload
    args: tuple
    kwargs: tuple[tuple[str, object], ...]

    def flops(self) -> int:
        a, b = [x for x in self.args if isinstance(x, TensorSpec)][-2:]  # (input, mat1, mat2): the last two
        return 2 * a.shape[-2] * a.shape[-1] * b.shape[-1] * (a.shape[0] if len(a.shape) == 3 else 1)

    def prepared(self, gen: torch.Generator):
        """A callable running this product on fresh operands (the same for every repeat)."""
        def fresh(x):
            return x.fresh(gen) if isinstance(x, TensorSpec) else x
        args, kwargs = tree_map(fresh, self.args), tree_map(fresh, dict(self.kwargs))
        return lambda: self.op(*args, **kwargs)


@dataclass(frozen=True)
class GemmReplay:
    """Per tick (the recorded ticks' mean), the products' time three ways (ms): alone at their
    shapes (`replay_ms`), as they ran inside the tick (`in_tick_ms`: the same products among the
    tick's other work, its working set in the caches), and their FLOPs."""
    replay_ms: float  # sum over the tick's calls of each one's median time alone
    replay_by_stage_ms: dict[str, float]  # the same sum, per stage
    in_tick_ms: float  # the same calls, each timed where the tick ran it
    in_tick_by_stage_ms: dict[str, float]
    matmul_gflops: float  # the reference rate, timed in turns with the replay
    gflop: float  # the FLOPs the tick's products run (padded rows included)
    calls: float  # products per tick
    distinct: int  # distinct (op, layout) among them


UNSTAGED = "unstaged"  # products after the last lap (or all of them, when nothing laps)


@dataclass
class MatmulRecording:
    ticks: int
    calls: Counter[tuple[str, MatmulCall]]  # over all recorded ticks, by (stage, op, layout)
    in_tick_ms: Counter[str]  # over all recorded ticks, per stage


class _MatmulRecorder(TorchDispatchMode):
    def __init__(self, recording: MatmulRecording) -> None:
        super().__init__()
        self.recording = recording
        self._pending: list[MatmulCall] = []  # since the last lap
        self._pending_ms = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket not in MATMUL_OPS:
            return func(*args, **kwargs)
        self._pending.append(MatmulCall(func, tree_map(_spec, tuple(args)),
                                        tuple(sorted(tree_map(_spec, kwargs).items()))))
        start = time.perf_counter()
        result = func(*args, **kwargs)
        self._pending_ms += (time.perf_counter() - start) * 1e3
        return result

    def end_stage(self, stage: str) -> None:
        if not self._pending:  # a stage without products is left out of the recording
            return
        self.recording.calls.update((stage, call) for call in self._pending)
        self.recording.in_tick_ms[stage] += self._pending_ms
        self._pending.clear()
        self._pending_ms = 0.0


def _spec(x):
    return TensorSpec(tuple(x.shape), tuple(x.stride()), x.dtype) if isinstance(x, torch.Tensor) else x


def record_matmuls(run, ticks: int = 1) -> MatmulRecording:
    """The products of `ticks` calls of `run()`, by stage; the stage clock runs meanwhile."""
    recording = MatmulRecording(ticks, Counter(), Counter())
    recorder = _MatmulRecorder(recording)
    STAGES.reset(enabled=True, on_lap=recorder.end_stage)
    try:
        with recorder:
            for _ in range(ticks):
                run()
                recorder.end_stage(UNSTAGED)
    finally:
        STAGES.reset(enabled=False)
    return recording


def replay(recording: MatmulRecording, rounds: int = ROUNDS, repeats: int = REPEATS) -> GemmReplay:
    """Each distinct product alone, `repeats` times back to back (median), in each of `rounds`
    rounds; a round starts with the reference rate (`matmul_rate_gflops`), so the rate and the
    products are timed in the same seconds of a shared machine. Medians over the rounds."""
    gen = torch.Generator().manual_seed(0)
    calls, ticks = recording.calls, recording.ticks
    products = {call: call.prepared(gen) for call in {c for _, c in calls}}
    rates, samples = [], {call: [] for call in products}
    for _ in range(rounds):
        rates.append(matmul_rate_gflops(repeats=3))
        for call, product in products.items():
            samples[call].append(median_seconds(product, repeats) * 1e3)
    median_ms = {call: statistics.median(ms) for call, ms in samples.items()}
    by_stage: Counter[str] = Counter()
    for (stage, call), count in calls.items():
        by_stage[stage] += count * median_ms[call] / ticks
    in_tick = {stage: ms / ticks for stage, ms in recording.in_tick_ms.items()}
    return GemmReplay(replay_ms=sum(by_stage.values()), replay_by_stage_ms=dict(by_stage),
                      in_tick_ms=sum(in_tick.values()), in_tick_by_stage_ms=in_tick,
                      matmul_gflops=statistics.median(rates),
                      gflop=sum(c.flops() * n for (_, c), n in calls.items()) / ticks / 1e9,
                      calls=sum(calls.values()) / ticks, distinct=len(median_ms))
