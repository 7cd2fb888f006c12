"""Where a tick's wall time goes, stage by stage (for `bench tick`; off in serving).

The engine and the model call `STAGES.lap("vad")` when a stage ends: the time since the previous
lap (or `start`) is added to that stage. Laps are made where the work of a stage is done, so the
stages tile the tick with no gap; the Python between two ops counts in the stage it is in. When
off, a lap is one attribute test, so the calls stay in the hot path.

One clock per process, like the kernel choice (`kernels.matmul.use_invariant_kernels`): a tick
runs on one thread at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class StageClock:
    enabled: bool = False
    total_ms: dict[str, float] = field(default_factory=dict)  # per stage, over `ticks`
    ticks: int = 0
    on_lap: Callable[[str], None] | None = None  # told each stage's end (`bench tick`'s product replay)
    _last: float = 0.0

    def start(self) -> None:
        """A tick starts (counted once per `start`)."""
        if self.enabled:
            self.ticks += 1
            self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        """The stage `stage` has just ended."""
        if self.enabled:
            now = time.perf_counter()
            self.total_ms[stage] = self.total_ms.get(stage, 0.0) + (now - self._last) * 1000
            self._last = now
            if self.on_lap is not None:
                self.on_lap(stage)

    def reset(self, enabled: bool, on_lap: Callable[[str], None] | None = None) -> None:
        self.enabled, self.total_ms, self.ticks, self.on_lap = enabled, {}, 0, on_lap

    def per_tick_ms(self) -> dict[str, float]:
        """Mean milliseconds per tick in each stage, in the order stages first ran."""
        return {stage: ms / max(1, self.ticks) for stage, ms in self.total_ms.items()}


STAGES = StageClock()
