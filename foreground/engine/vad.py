"""Silero VAD on every live session's 16 kHz stream, one batched call per tick (200 or 80 ms).

silero-vad's TorchScript wrapper keeps one recurrent state for the whole batch and resets it
whenever the batch size changes, which breaks streaming as sessions join and leave. Here each
slot owns its LSTM state (row `slot` of a [max_slots, 2, 128] tensor: h, c; slot-major, unlike
the network's [2, B, 128], so that slot tables can move a row), and the wrapper's
inner network is called (reference path) or re-implemented allocation-free (default path,
`foreground.engine.silero_network`).

Windowing: a tick is 3200 samples; Silero takes 512-sample windows, each preceded by the 64
samples before it as context. The 6 windows (of a 200 ms tick; 2 of an 80 ms one) are aligned to the end of the tick (samples
128..3200), so window 0's context is samples 64..128 of the same tick and no context needs to
be carried between ticks. The price: samples 0..128 (8 ms per tick, 4%) are never fed to the
LSTM as new audio (64 of them are seen as context only); at 80 ms, 256 of 1280 (20%: fine for
telling speech from silence, which is all the VAD is asked). The LSTM state is the only state.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from foreground.engine.silero_network import CONTEXT, HIDDEN, WINDOW, PreallocatedSileroNetwork, silero_flops_per_window

log = logging.getLogger(__name__)

TICK_SAMPLES = 3200
WINDOWS_PER_TICK = TICK_SAMPLES // WINDOW  # 6
FIRST_WINDOW = TICK_SAMPLES - WINDOWS_PER_TICK * WINDOW  # 128: windows end with the tick
WINDOW_STARTS = [FIRST_WINDOW - CONTEXT + w * WINDOW for w in range(WINDOWS_PER_TICK)]


def window_starts(tick_samples: int) -> list[int]:
    """Where each window (with its context) starts, windows aligned to the end of the tick."""
    windows = tick_samples // WINDOW
    first = tick_samples - windows * WINDOW
    if first < CONTEXT:  # window 0's context must lie inside the tick
        windows -= 1
        first += WINDOW
    return [first - CONTEXT + w * WINDOW for w in range(windows)]


def load_silero_jit() -> torch.jit.ScriptModule:
    """The packaged TorchScript Silero VAD (offline). Importing silero_vad calls
    `torch.set_num_threads(1)` for the whole process; the thread count is restored."""
    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad

        return load_silero_vad()
    finally:
        torch.set_num_threads(threads)


class BatchedSileroVad:
    """Per-slot streaming speech probabilities, one per 32 ms window of each tick."""

    def __init__(self, max_slots: int, reference: bool = False, tick_samples: int = TICK_SAMPLES) -> None:
        self.max_slots = max_slots
        self.reference = reference
        self.tick_samples = tick_samples
        self.window_starts = window_starts(tick_samples)
        self.windows_per_tick = len(self.window_starts)
        jit = load_silero_jit()
        self._inner = jit._model  # the network; `jit` itself is the batch-resetting wrapper
        self.lstm_state = torch.zeros(max_slots, 2, HIDDEN)
        self._network = None if reference else PreallocatedSileroNetwork(
            self._inner, max_slots, self.window_starts)
        log.info("Silero VAD for %d slots (%s path)", max_slots,
                 "TorchScript reference" if reference else "allocation-free")

    def state_tensors(self) -> list[Tensor]:
        return [self.lstm_state]

    def tick_flops(self, batch: int) -> int:
        """Matmul FLOPs of one tick for `batch` slots (`bench tick`'s floor)."""
        return batch * self.windows_per_tick * silero_flops_per_window()

    def reset(self, slot: int) -> None:
        self.lstm_state[slot].zero_()

    @torch.no_grad()
    def speech_prob(self, pcm16k: Tensor, out: Tensor) -> None:
        """`pcm16k` [B, tick_samples] float32 in [-1, 1] for slots 0..B-1 -> `out` [B, windows]."""
        b = pcm16k.shape[0]
        if b > self.max_slots or tuple(pcm16k.shape) != (b, self.tick_samples):
            raise ValueError(f"speech_prob needs pcm16k of shape [B <= {self.max_slots}, "
                             f"{self.tick_samples}], got {tuple(pcm16k.shape)}")
        if pcm16k.dtype != torch.float32:
            raise ValueError(f"speech_prob needs float32 pcm16k, got {pcm16k.dtype}")
        if tuple(out.shape) != (b, self.windows_per_tick):
            raise ValueError(f"speech_prob needs out of shape [{b}, {self.windows_per_tick}]")
        if b == 0:
            return
        state = self.lstm_state[:b]
        if self._network is not None:
            self._network.run(pcm16k, state, out)
            return
        for w, start in enumerate(self.window_starts):  # reference: the TorchScript network
            x = pcm16k[:, start:start + CONTEXT + WINDOW]
            prob, new_state = self._inner(x, state.transpose(0, 1))
            out[:, w].copy_(prob[:, 0])
            state.copy_(new_state.transpose(0, 1))
