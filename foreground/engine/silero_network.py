"""The Silero VAD 16 kHz network (silero-vad 6), re-implemented on preallocated buffers.

The TorchScript model allocates 25 tensors per 512-sample window (150 per tick). This version
reads the same weights and computes the same graph with `out=` and in-place ops only, so that a
tick allocates nothing after warm-up. The graph, per window `x` of 64 context + 512 new samples:
  reflect-pad 64 on the right -> STFT (4 frames of 256, hop 128, 129 bins; magnitude)
  -> 4 x (conv1d k=3 pad=1, strides 1,2,2,1) + ReLU -> LSTMCell(128) -> ReLU -> 1x1 conv -> sigmoid.
The convs are im2col + `addmm`. The STFT and encoder do not depend on the recurrent state, so
they run once for all windows of a tick; only the LSTM steps window by window.

Batch invariance: MKL's sgemm gives a row a different result for some row counts (on this
machine M in 1..3, 5..7, 9..11 with 2 threads, and most M when N = 1), so every GEMM runs over
`gemm_rows(B)` rows (a multiple of 8, at least 16: rows past B are scratch) and the 1-output
decoder is padded to 8 outputs. A slot's result then does not depend on B.

Parity with TorchScript: the LSTM step is bitwise equal given equal inputs; the encoder differs
by float32 summation order (im2col GEMM vs oneDNN conv, ~1e-6 relative), which leaves speech
probabilities within 5e-6 of the TorchScript ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

WINDOW = 512
CONTEXT = 64
HIDDEN = 128
_FILTER, _HOP, _FRAMES, _BINS = 256, 128, 4, 129
_PAD = 64  # reflection padding on the right, before the STFT
_DECODER_OUTPUTS = 8  # the 1-output decoder GEMM, padded (see the module docstring)


def gemm_rows(batch: int) -> int:
    """Rows each GEMM runs over for `batch` live slots: a multiple of 8, at least 16."""
    return max(16, -(-batch // 8) * 8)


def _frame_index(window_starts: list[int]) -> Tensor:
    """Sample index of every STFT frame value: windows x frames x 256, reflection included."""
    span = CONTEXT + WINDOW
    padded = torch.arange(span + _PAD)
    padded = torch.where(padded < span, padded, 2 * (span - 1) - padded)  # reflect, edge excluded
    frames = torch.arange(_FRAMES)[:, None] * _HOP + torch.arange(_FILTER)[None, :]
    return torch.cat([start + padded[frames].reshape(-1) for start in window_starts])


class PreallocatedSileroNetwork:
    """Runs `len(window_starts)` consecutive windows for up to `max_slots` slots per call."""

    def __init__(self, inner: torch.jit.ScriptModule, max_slots: int,
                 window_starts: list[int]) -> None:
        p = {name: t.detach().clone() for name, t in inner.named_parameters()}
        basis = dict(inner.named_buffers())["stft.forward_basis_buffer"].detach()
        enc = [(p[f"encoder.{i}.reparam_conv.weight"], p[f"encoder.{i}.reparam_conv.bias"])
               for i in range(4)]
        self.windows = len(window_starts)
        self.frame_index = _frame_index(window_starts)
        self.basis = basis.reshape(2 * _BINS, _FILTER).contiguous()  # [258, 256]: real; imag
        # im2col weights: a column holds taps (t-1, t, t+1), each with all input channels.
        self.w0 = enc[0][0].permute(0, 2, 1).reshape(HIDDEN, 3 * _BINS).contiguous()
        self.w1 = enc[1][0].permute(0, 2, 1).reshape(64, 3 * HIDDEN).contiguous()
        # Layer 2 (stride 2, one output) sees (zero pad, t0, t1): only taps 1 and 2 matter;
        # layer 3 (one input step) sees (0, t0, 0): only tap 1.
        self.w2 = enc[2][0][:, :, 1:].permute(0, 2, 1).reshape(64, 2 * 64).contiguous()
        self.w3 = enc[3][0][:, :, 1].contiguous()
        self.b = [bias for _, bias in enc]
        self.w_ih, self.w_hh = p["decoder.rnn.weight_ih"], p["decoder.rnn.weight_hh"]
        self.b_ih, self.b_hh = p["decoder.rnn.bias_ih"], p["decoder.rnn.bias_hh"]
        self.w_out = torch.zeros(_DECODER_OUTPUTS, HIDDEN)
        self.w_out[0] = p["decoder.decoder.2.weight"].reshape(HIDDEN)
        self.b_out = torch.zeros(_DECODER_OUTPUTS)
        self.b_out[0] = p["decoder.decoder.2.bias"].reshape(())

        rows = gemm_rows(max_slots)
        n = rows * self.windows  # one encoder "row" per (slot, window)
        self.max_slots = max_slots
        self.samples = torch.zeros(rows, self.frame_index.numel())
        self.spectrum = torch.zeros(n * _FRAMES, 2 * _BINS)
        self.imag_sq = torch.zeros(n, _FRAMES, _BINS)
        self.magnitude = torch.zeros(n, _FRAMES + 2, _BINS)  # time-padded by one zero frame
        self.col0 = torch.zeros(n * _FRAMES, 3 * _BINS)
        self.enc0 = torch.zeros(n * _FRAMES, HIDDEN)
        self.col1 = torch.zeros(n * 2, 3 * HIDDEN)  # output step 0's first tap stays zero
        self.enc1 = torch.zeros(n * 2, 64)
        self.enc2 = torch.zeros(n, 64)
        self.enc3 = torch.zeros(n, HIDDEN)  # the LSTM inputs, rows ordered (slot, window)
        self.h = torch.zeros(rows, HIDDEN)
        self.c = torch.zeros(rows, HIDDEN)
        self.gates = torch.zeros(rows, 4 * HIDDEN)
        self.gates_hh = torch.zeros(rows, 4 * HIDDEN)
        self.input_cell = torch.zeros(rows, HIDDEN)
        self.hidden = torch.zeros(rows, self.windows, HIDDEN)  # h after each window
        self.logits = torch.zeros(n, _DECODER_OUTPUTS)

    @torch.no_grad()
    def run(self, pcm: Tensor, state: Tensor, out: Tensor) -> None:
        """`pcm` [B, T] float in [-1, 1]; `state` [B, 2, 128] (h, c), updated in place;
        `out` [B, windows] speech probabilities."""
        b = pcm.shape[0]
        rows = gemm_rows(b)
        n = rows * self.windows
        torch.index_select(pcm, 1, self.frame_index, out=self.samples[:b])
        self._encode(rows, n)
        h, c = self.h[:rows], self.c[:rows]
        h[:b].copy_(state[:, 0])
        c[:b].copy_(state[:, 1])
        inputs = self.enc3[:n].view(rows, self.windows, HIDDEN)
        for w in range(self.windows):
            self._lstm_step(inputs[:, w], h, c)
            self.hidden[:rows, w].copy_(h)
        state[:, 0].copy_(h[:b])
        state[:, 1].copy_(c[:b])
        hidden = self.hidden[:rows].view(n, HIDDEN).relu_()
        torch.addmm(self.b_out, hidden, self.w_out.t(), out=self.logits[:n])
        first = self.logits[:b * self.windows, 0].view(b, self.windows)
        torch.sigmoid(first, out=out)

    def _encode(self, rows: int, n: int) -> None:
        """STFT magnitude and the four conv blocks for all (slot, window) rows."""
        frames = self.samples[:rows].view(n * _FRAMES, _FILTER)
        spectrum = self.spectrum[:n * _FRAMES]
        torch.mm(frames, self.basis.t(), out=spectrum)
        spectrum = spectrum.view(n, _FRAMES, 2 * _BINS)
        real, imag = spectrum[:, :, :_BINS], spectrum[:, :, _BINS:]
        magnitude = self.magnitude[:n, 1:_FRAMES + 1]
        torch.mul(real, real, out=magnitude)
        torch.mul(imag, imag, out=self.imag_sq[:n])
        magnitude.add_(self.imag_sq[:n]).sqrt_()

        padded = self.magnitude[:n]  # frame t's taps (t-1, t, t+1) are 3 adjacent padded rows
        taps = padded.as_strided((n, _FRAMES, 3 * _BINS), ((_FRAMES + 2) * _BINS, _BINS, 1),
                                 padded.storage_offset())
        col0 = self.col0[:n * _FRAMES]
        col0.view(n, _FRAMES, 3 * _BINS).copy_(taps)
        enc0 = self.enc0[:n * _FRAMES]
        torch.addmm(self.b[0], col0, self.w0.t(), out=enc0).relu_()

        steps = enc0.view(n, _FRAMES * HIDDEN)  # stride 2: outputs see steps (-1,0,1), (1,2,3)
        col1 = self.col1[:n * 2].view(n, 2, 3 * HIDDEN)
        col1[:, 0, HIDDEN:].copy_(steps[:, :2 * HIDDEN])
        col1[:, 1].copy_(steps[:, HIDDEN:])
        enc1 = self.enc1[:n * 2]
        torch.addmm(self.b[1], self.col1[:n * 2], self.w1.t(), out=enc1).relu_()
        enc2 = self.enc2[:n]
        torch.addmm(self.b[2], enc1.view(n, 2 * 64), self.w2.t(), out=enc2).relu_()
        torch.addmm(self.b[3], enc2, self.w3.t(), out=self.enc3[:n]).relu_()

    def _lstm_step(self, x: Tensor, h: Tensor, c: Tensor) -> None:
        """One LSTMCell step in ATen's order (gates i, f, g, o), in place on `h` and `c`."""
        rows = h.shape[0]
        gates, gates_hh = self.gates[:rows], self.gates_hh[:rows]
        torch.addmm(self.b_hh, h, self.w_hh.t(), out=gates_hh)
        torch.addmm(self.b_ih, x, self.w_ih.t(), out=gates)
        gates.add_(gates_hh)
        gates[:, :2 * HIDDEN].sigmoid_()
        gates[:, 2 * HIDDEN:3 * HIDDEN].tanh_()
        gates[:, 3 * HIDDEN:].sigmoid_()
        i, f = gates[:, :HIDDEN], gates[:, HIDDEN:2 * HIDDEN]
        g, o = gates[:, 2 * HIDDEN:3 * HIDDEN], gates[:, 3 * HIDDEN:]
        torch.mul(i, g, out=self.input_cell[:rows])
        c.mul_(f).add_(self.input_cell[:rows])
        torch.tanh(c, out=h)
        h.mul_(o)
