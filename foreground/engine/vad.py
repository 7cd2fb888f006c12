"""Silero VAD on every live session's 16 kHz stream, one batched call per 200 ms tick.

silero-vad's TorchScript wrapper keeps one recurrent state for the whole batch and resets it
whenever the batch size changes, which breaks streaming as sessions join and leave. Here each
slot owns its LSTM state (row `slot` of a [max_slots, 2, 128] tensor: h, c; slot-major, unlike
the network's [2, B, 128], so that slot tables can move a row), and the wrapper's
inner network is called (reference path) or re-implemented allocation-free (default path,
`foreground.engine.silero_network`).

Windowing: a tick is 3200 samples; Silero takes 512-sample windows, each preceded by the 64
samples before it as context. The 6 windows are aligned to the end of the tick (samples
128..3200), so window 0's context is samples 64..128 of the same tick and no context needs to
be carried between ticks. The price: samples 0..128 (8 ms per tick, 4%) are never fed to the
LSTM as new audio (64 of them are seen as context only). The LSTM state is the only state.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from foreground.engine.silero_network import CONTEXT, HIDDEN, WINDOW, PreallocatedSileroNetwork

log = logging.getLogger(__name__)

TICK_SAMPLES = 3200
WINDOWS_PER_TICK = TICK_SAMPLES // WINDOW  # 6
FIRST_WINDOW = TICK_SAMPLES - WINDOWS_PER_TICK * WINDOW  # 128: windows end with the tick
WINDOW_STARTS = [FIRST_WINDOW - CONTEXT + w * WINDOW for w in range(WINDOWS_PER_TICK)]


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
    """Per-slot streaming speech probabilities, 6 windows (32 ms each) per tick."""

    def __init__(self, max_slots: int, reference: bool = False) -> None:
        self.max_slots = max_slots
        self.reference = reference
        jit = load_silero_jit()
        self._inner = jit._model  # the network; `jit` itself is the batch-resetting wrapper
        self.lstm_state = torch.zeros(max_slots, 2, HIDDEN)
        self._network = None if reference else PreallocatedSileroNetwork(
            self._inner, max_slots, WINDOW_STARTS)
        log.info("Silero VAD for %d slots (%s path)", max_slots,
                 "TorchScript reference" if reference else "allocation-free")

    def state_tensors(self) -> list[Tensor]:
        return [self.lstm_state]

    def reset(self, slot: int) -> None:
        self.lstm_state[slot].zero_()

    @torch.no_grad()
    def speech_prob(self, pcm16k: Tensor, out: Tensor) -> None:
        """`pcm16k` [B, 3200] float32 in [-1, 1] for slots 0..B-1 -> `out` [B, 6] probabilities."""
        b = pcm16k.shape[0]
        if b > self.max_slots or tuple(pcm16k.shape) != (b, TICK_SAMPLES):
            raise ValueError(f"speech_prob needs pcm16k of shape [B <= {self.max_slots}, "
                             f"{TICK_SAMPLES}], got {tuple(pcm16k.shape)}")
        if pcm16k.dtype != torch.float32:
            raise ValueError(f"speech_prob needs float32 pcm16k, got {pcm16k.dtype}")
        if tuple(out.shape) != (b, WINDOWS_PER_TICK):
            raise ValueError(f"speech_prob needs out of shape [{b}, {WINDOWS_PER_TICK}]")
        if b == 0:
            return
        state = self.lstm_state[:b]
        if self._network is not None:
            self._network.run(pcm16k, state, out)
            return
        for w, start in enumerate(WINDOW_STARTS):  # reference: the TorchScript network
            x = pcm16k[:, start:start + CONTEXT + WINDOW]
            prob, new_state = self._inner(x, state.transpose(0, 1))
            out[:, w].copy_(prob[:, 0])
            state.copy_(new_state.transpose(0, 1))
