"""The Silero VAD 16 kHz network (silero-vad 6), re-implemented on preallocated buffers.

The TorchScript model allocates 25 tensors per 512-sample window (150 per tick). This version
reads the same weights and computes the same graph with `out=` and in-place ops only, so that a
tick allocates nothing after warm-up. The graph, per window `x` of 64 context + 512 new samples:
  reflect-pad 64 on the right -> STFT (4 frames of 256, hop 128, 129 bins; magnitude)
  -> 4 x (conv1d k=3 pad=1, strides 1,2,2,1) + ReLU -> LSTMCell(128) -> ReLU -> 1x1 conv -> sigmoid.
The convs are im2col GEMMs. The STFT, the encoder and the LSTM's input projection do not depend
on the recurrent state, so they run once for all windows of a tick (rows ordered (slot, window));
only the hidden projection and the cell update step window by window.

Batch invariance: every GEMM is `foreground.kernels.matmul.linear` over `pad_rows` of its live
rows (rows past them are scratch); the 1-output decoder is padded to 8 outputs.

Parity with TorchScript: same graph and gate order, but float32 rounding differs (row-tiled
GEMMs, bias added after the product; im2col vs oneDNN conv, ~1e-6 relative), which leaves speech
probabilities within 5e-6 of the TorchScript ones (3e-6 measured over 240 windows).
"""

from __future__ import annotations

import torch
from torch import Tensor

from foreground.kernels.matmul import linear, pad_rows

WINDOW = 512
CONTEXT = 64
HIDDEN = 128
_FILTER, _HOP, _FRAMES, _BINS = 256, 128, 4, 129
_PAD = 64  # reflection padding on the right, before the STFT
_DECODER_OUTPUTS = 8  # the 1-output decoder GEMM, padded (see the module docstring)


def _frame_index(window_starts: list[int]) -> Tensor:
    """Sample index of every STFT frame value: windows x frames x 256, reflection included."""
    span = CONTEXT + WINDOW
    padded = torch.arange(span + _PAD)
    padded = torch.where(padded < span, padded, 2 * (span - 1) - padded)  # reflect, edge excluded
    frames = torch.arange(_FRAMES)[:, None] * _HOP + torch.arange(_FILTER)[None, :]
    return torch.cat([start + padded[frames].reshape(-1) for start in window_starts])


def silero_flops_per_window() -> int:
    """Matmul FLOPs of one window (STFT basis, the four im2col convs, the LSTM's two
    projections, the decoder), for `bench tick`'s floor."""
    macs = (_FRAMES * _FILTER * 2 * _BINS + _FRAMES * 3 * _BINS * HIDDEN + 2 * 3 * HIDDEN * 64
            + 2 * 64 * 64 + 64 * HIDDEN + 2 * HIDDEN * 4 * HIDDEN + HIDDEN)
    return 2 * macs


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

        n = max_slots * self.windows  # one encoder row per (slot, window)
        self.max_slots = max_slots
        # GEMM operands hold pad_rows(live rows); enc1 is read back as pairs of rows.
        self.samples = torch.zeros(pad_rows(n * _FRAMES), _FILTER)  # frames, (slot, window, frame)
        self.spectrum = torch.zeros(pad_rows(n * _FRAMES), 2 * _BINS)
        self.imag_sq = torch.zeros(n, _FRAMES, _BINS)
        self.magnitude = torch.zeros(n, _FRAMES + 2, _BINS)  # time-padded by one zero frame
        self.col0 = torch.zeros(pad_rows(n * _FRAMES), 3 * _BINS)
        self.enc0 = torch.zeros(pad_rows(n * _FRAMES), HIDDEN)
        self.col1 = torch.zeros(2 * pad_rows(n), 3 * HIDDEN)  # output step 0's first tap stays 0
        self.enc1 = torch.zeros(2 * pad_rows(n), 64)
        self.enc2 = torch.zeros(pad_rows(n), 64)
        self.enc3 = torch.zeros(pad_rows(n), HIDDEN)  # the LSTM inputs
        self.gates_ih = torch.zeros(pad_rows(n), 4 * HIDDEN)
        self.h = torch.zeros(pad_rows(max_slots), HIDDEN)
        self.c = torch.zeros(max_slots, HIDDEN)
        self.gates_hh = torch.zeros(pad_rows(max_slots), 4 * HIDDEN)
        self.gates = torch.zeros(max_slots, 4 * HIDDEN)
        self.input_cell = torch.zeros(max_slots, HIDDEN)
        self.hidden = torch.zeros(pad_rows(n), HIDDEN)  # h after each window, (slot, window)
        self.logits = torch.zeros(pad_rows(n), _DECODER_OUTPUTS)

    @torch.no_grad()
    def run(self, pcm: Tensor, state: Tensor, out: Tensor) -> None:
        """`pcm` [B, T] float in [-1, 1]; `state` [B, 2, 128] (h, c), updated in place;
        `out` [B, windows] speech probabilities."""
        b = pcm.shape[0]
        n = b * self.windows
        torch.index_select(pcm, 1, self.frame_index, out=self.samples[:n * _FRAMES].view(b, -1))
        self._encode(n)
        gates_ih = linear(self.enc3[:pad_rows(n)], self.w_ih, self.gates_ih[:pad_rows(n)],
                          bias=self.b_ih)[:n].view(b, self.windows, 4 * HIDDEN)
        h, c = self.h[:pad_rows(b)], self.c[:b]
        h[:b].copy_(state[:, 0])
        c.copy_(state[:, 1])
        hidden = self.hidden[:n].view(b, self.windows, HIDDEN)
        for w in range(self.windows):
            self._lstm_step(gates_ih[:, w], h, c, b)
            hidden[:, w].copy_(h[:b])
        state[:, 0].copy_(h[:b])
        state[:, 1].copy_(c)
        hidden.relu_()
        logits = linear(self.hidden[:pad_rows(n)], self.w_out, self.logits[:pad_rows(n)],
                        bias=self.b_out)
        torch.sigmoid(logits[:n, 0].view(b, self.windows), out=out)

    def _encode(self, n: int) -> None:
        """STFT magnitude and the four conv blocks for the n (slot, window) rows."""
        rows = pad_rows(n * _FRAMES)
        spectrum = linear(self.samples[:rows], self.basis, self.spectrum[:rows])
        spectrum = spectrum[:n * _FRAMES].view(n, _FRAMES, 2 * _BINS)
        real, imag = spectrum[:, :, :_BINS], spectrum[:, :, _BINS:]
        magnitude = self.magnitude[:n, 1:_FRAMES + 1]
        torch.mul(real, real, out=magnitude)
        torch.mul(imag, imag, out=self.imag_sq[:n])
        magnitude.add_(self.imag_sq[:n]).sqrt_()

        padded = self.magnitude[:n]  # frame t's taps (t-1, t, t+1) are 3 adjacent padded rows
        taps = padded.as_strided((n, _FRAMES, 3 * _BINS), ((_FRAMES + 2) * _BINS, _BINS, 1),
                                 padded.storage_offset())
        self.col0[:n * _FRAMES].view(n, _FRAMES, 3 * _BINS).copy_(taps)
        enc0 = linear(self.col0[:rows], self.w0, self.enc0[:rows], bias=self.b[0]).relu_()

        steps = enc0[:n * _FRAMES].view(n, _FRAMES * HIDDEN)  # stride 2: steps (-1,0,1), (1,2,3)
        col1 = self.col1[:n * 2].view(n, 2, 3 * HIDDEN)
        col1[:, 0, HIDDEN:].copy_(steps[:, :2 * HIDDEN])
        col1[:, 1].copy_(steps[:, HIDDEN:])
        rows = pad_rows(2 * n)
        linear(self.col1[:rows], self.w1, self.enc1[:rows], bias=self.b[1]).relu_()
        rows = pad_rows(n)
        enc1 = self.enc1[:2 * rows].view(rows, 2 * 64)  # rows past 2 n are scratch
        enc2 = linear(enc1, self.w2, self.enc2[:rows], bias=self.b[2]).relu_()
        linear(enc2, self.w3, self.enc3[:rows], bias=self.b[3]).relu_()

    def _lstm_step(self, gates_ih: Tensor, h: Tensor, c: Tensor, b: int) -> None:
        """One LSTMCell step in ATen's order (gates i, f, g, o), in place on `h[:b]` and `c`;
        `gates_ih` [b, 4 * HIDDEN] is the input projection (with its bias)."""
        gates_hh = linear(h, self.w_hh, self.gates_hh[:h.shape[0]], bias=self.b_hh)
        gates = self.gates[:b]
        torch.add(gates_hh[:b], gates_ih, out=gates)
        gates[:, :2 * HIDDEN].sigmoid_()
        gates[:, 2 * HIDDEN:3 * HIDDEN].tanh_()
        gates[:, 3 * HIDDEN:].sigmoid_()
        i, f = gates[:, :HIDDEN], gates[:, HIDDEN:2 * HIDDEN]
        g, o = gates[:, 2 * HIDDEN:3 * HIDDEN], gates[:, 3 * HIDDEN:]
        torch.mul(i, g, out=self.input_cell[:b])
        c.mul_(f).add_(self.input_cell[:b])
        torch.tanh(c, out=h[:b])
        h[:b].mul_(o)
