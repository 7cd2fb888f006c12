"""The tick's matrix products replayed alone: what this machine's BLAS needs at the tick's shapes.

`flop_floor_ms` prices every FLOP at the rate of one large square product (1024 x 1024 x 1024).
The tick's products are smaller (K of 32 to 1280, 2 to 4800 outputs, the attention's batches of
48 x 32 tiles), and a BLAS runs those slower: its packing and loop costs are spread over fewer
FLOPs. To tell that cost apart from the rest of the time over the floor, one tick's products are
recorded (op, operand shapes and strides, dtype), and each distinct one then runs alone, on fresh
operands laid out the same way, with its operands warm in cache. `replay_ms` is the sum over the
tick's calls of their median times: no tick that uses these kernels can take less, so
`replay_ms / flop_floor_ms` is the part of `floor_ratio` that belongs to the BLAS at these shapes
rather than to the tick's own code (its element-wise ops, Python, the caches it evicts).
Each product is also put in the stage it ran in (the stage clock's laps, `STAGES`), so the stage
table can show, per stage, its wall time, its floor and its products' time alone.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from foreground.engine.stage_clock import STAGES

MATMUL_OPS = frozenset({torch.ops.aten.mm, torch.ops.aten.bmm, torch.ops.aten.addmm, torch.ops.aten.baddbmm})
REPEATS = 9


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
    replay_ms: float  # sum over the tick's calls of each one's median time alone
    by_stage_ms: dict[str, float]  # the same sum, per stage
    gflop: float  # the FLOPs the tick's products run (padded rows included)
    calls: int  # products per tick
    distinct: int  # distinct (op, layout) among them


UNSTAGED = "unstaged"  # products after the last lap (or all of them, when nothing laps)


class _MatmulRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[tuple[str, MatmulCall]] = Counter()
        self._pending: list[MatmulCall] = []  # since the last lap

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in MATMUL_OPS:
            self._pending.append(MatmulCall(func, tree_map(_spec, tuple(args)),
                                            tuple(sorted(tree_map(_spec, kwargs).items()))))
        return func(*args, **kwargs)

    def end_stage(self, stage: str) -> None:
        self.calls.update((stage, call) for call in self._pending)
        self._pending.clear()


def _spec(x):
    return TensorSpec(tuple(x.shape), tuple(x.stride()), x.dtype) if isinstance(x, torch.Tensor) else x


def record_matmuls(run) -> Counter[tuple[str, MatmulCall]]:
    """The products `run()` calls, counted by (stage, op, layout); the stage clock runs meanwhile."""
    recorder = _MatmulRecorder()
    STAGES.reset(enabled=True, on_lap=recorder.end_stage)
    try:
        with recorder:
            run()
        recorder.end_stage(UNSTAGED)
    finally:
        STAGES.reset(enabled=False)
    return recorder.calls


def replay(calls: Counter[tuple[str, MatmulCall]], repeats: int = REPEATS) -> GemmReplay:
    """Each distinct product alone: median of `repeats` after one warm-up, times its count."""
    gen = torch.Generator().manual_seed(0)
    median_ms = {call: _median_ms(call.prepared(gen), repeats) for call in {c for _, c in calls}}
    by_stage: dict[str, float] = {}
    for (stage, call), count in calls.items():
        by_stage[stage] = by_stage.get(stage, 0.0) + count * median_ms[call]
    return GemmReplay(replay_ms=sum(by_stage.values()), by_stage_ms=by_stage,
                      gflop=sum(c.flops() * n for (_, c), n in calls.items()) / 1e9,
                      calls=sum(calls.values()), distinct=len(median_ms))


def _median_ms(product, repeats: int) -> float:
    product()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3
