"""Count tensor allocations in a block of code, to prove a hot path allocates nothing.

A `TorchDispatchMode` sees every aten op (also those a TorchScript module runs). An op output
whose storage is not the storage of any of its inputs (an `out=` buffer, an in-place target, a
view's base) is a fresh allocation. Views and in-place ops therefore count zero; `x + y`,
`torch.empty(...)` or `x[index_tensor]` count one each.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@dataclass
class AllocationReport:
    count: int = 0
    by_op: Counter = field(default_factory=Counter)


class _AllocationCounter(TorchDispatchMode):
    def __init__(self, report: AllocationReport) -> None:
        super().__init__()
        self.report = report

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {_storage_key(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        result = func(*args, **kwargs)
        for t in tree_flatten(result)[0]:
            if isinstance(t, torch.Tensor) and t.numel() > 0 and _storage_key(t) not in inputs:
                self.report.count += 1
                self.report.by_op[str(func.overloadpacket)] += 1
        return result


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class count_tensor_allocations:
    """`with count_tensor_allocations() as report: ...` then read `report.count`."""

    def __enter__(self) -> AllocationReport:
        self.report = AllocationReport()
        self._mode = _AllocationCounter(self.report)
        self._mode.__enter__()
        return self.report

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
