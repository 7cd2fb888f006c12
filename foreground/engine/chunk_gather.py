"""A tick's chunks into its audio rows in three tensor ops, not two per session.

Each session's chunk sits in its own row of the jitter buffer (`ChunkQueue.rows()`). The tick
names which buffer row goes to which slot row, then one `index_select` copies them all (PCM16),
one division scales them to [-1, 1], one `index_copy_` puts them in place. The row indices are
written through NumPy views of preallocated tensors, so a tick allocates no tensor.
"""

from __future__ import annotations

import torch

from foreground.engine.chunk_queue import MAX_CHUNK_SAMPLES


class ChunkGather:
    def __init__(self, max_slots: int) -> None:
        self.sources = torch.zeros(max_slots, dtype=torch.int64)
        self.targets = torch.zeros(max_slots, dtype=torch.int64)
        self._sources, self._targets = self.sources.numpy(), self.targets.numpy()
        self.pcm16 = torch.zeros(max_slots, MAX_CHUNK_SAMPLES, dtype=torch.int16)
        self.scaled = torch.zeros(max_slots, MAX_CHUNK_SAMPLES)
        self.count = 0

    def start(self) -> None:
        self.count = 0

    def add(self, source_row: int, target_row: int) -> None:
        self._sources[self.count] = source_row
        self._targets[self.count] = target_row
        self.count += 1

    def copy(self, rows: torch.Tensor, out: torch.Tensor) -> None:
        """out[target] = rows[source, :out.shape[1]] / 32768 for every pair added since start()."""
        m, n = self.count, out.shape[1]
        if m == 0:
            return
        pcm16, scaled = self.pcm16[:m, :n], self.scaled[:m, :n]
        torch.index_select(rows[:, :n], 0, self.sources[:m], out=pcm16)
        torch.div(pcm16, 32768.0, out=scaled)
        out.index_copy_(0, self.targets[:m], scaled)
