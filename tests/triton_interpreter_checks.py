"""Checks of the Triton GPU path under the interpreter (run in a fresh process by
`test_triton_kernels.py`): it matches the torch path and a float64
reference, and keeps rows batch-invariant. Small shapes: the interpreter is slow."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are defined

from foreground.kernels import attend_slots, rms_norm  # noqa: E402
from foreground.kernels.triton import persistent_matmul, split_kv_attention, triton_rms_norm  # noqa: E402

pytestmark = pytest.mark.timeout(300)
GEN = torch.Generator().manual_seed(0)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize(("m", "k", "n"), [(5, 40, 24), (37, 64, 48)])
def test_persistent_matmul_matches_torch_and_float64(m, k, n):
    x, w = torch.randn(m, k, generator=GEN), torch.randn(n, k, generator=GEN)
    out = persistent_matmul(x, w, torch.empty(m, n))
    assert _rel(out, x @ w.T) <= 1e-5
    assert _rel(out, x.double() @ w.double().T) <= 1e-5


def test_persistent_matmul_rows_do_not_depend_on_m():
    x, w = torch.randn(40, 64, generator=GEN), torch.randn(32, 64, generator=GEN)
    full = persistent_matmul(x, w, torch.empty(40, 32))
    for m in (1, 3, 17, 33):
        assert torch.equal(persistent_matmul(x[:m].clone(), w, torch.empty(m, 32)), full[:m])


def test_rms_norm_matches_torch_and_is_row_wise():
    x, w = torch.randn(9, 48, generator=GEN), torch.randn(48, generator=GEN)
    out = triton_rms_norm(x, w, 1e-5, torch.empty(9, 48))
    ref = rms_norm(x, w, 1e-5, torch.empty(9, 48), torch.empty(9, 1))
    assert _rel(out, ref) <= 1e-5
    x64 = x.double()
    assert _rel(out, x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5) * w.double()) <= 1e-5
    assert torch.equal(triton_rms_norm(x[:2].clone(), w, 1e-5, torch.empty(2, 48)), out[:2])


def _attention_case(b=3, kvh=2, g=2, t=4, s=100, d=32):
    q = torch.randn(b, kvh, g * t, d, generator=GEN) * 0.3
    k, v = torch.randn(b, kvh, s, d, generator=GEN), torch.randn(b, kvh, s, d, generator=GEN)
    mask = torch.zeros(b, t, s)
    for i in range(b):  # different fill levels per session, causal inside the block
        filled = 20 + 30 * i
        mask[i, :, filled:] = float("-inf")
        for j in range(t):
            mask[i, j, filled - t + j + 1 : filled] = float("-inf")
    return q, k, v, mask


def test_split_kv_attention_matches_the_torch_path_and_float64():
    q, k, v, mask = _attention_case()
    b, kvh, r, d = q.shape
    out = split_kv_attention(q, k, v, mask, torch.empty(b, kvh, r, d))
    ref = attend_slots(q, k, v, mask, torch.empty(b, kvh, r, k.shape[2]), torch.empty(b, kvh, r, d))
    assert _rel(out, ref) <= 1e-5
    scores = q.double() @ k.double().transpose(-1, -2) + mask.double().repeat(1, 2, 1).unsqueeze(1)
    ref64 = torch.softmax(scores, -1) @ v.double()
    assert _rel(out, ref64) <= 1e-5


def test_split_kv_attention_is_batch_invariant():
    q, k, v, mask = _attention_case()
    b, kvh, r, d = q.shape
    full = split_kv_attention(q, k, v, mask, torch.empty(b, kvh, r, d))
    alone = split_kv_attention(q[2:].clone(), k[2:].clone(), v[2:].clone(), mask[2:].clone(),
                               torch.empty(1, kvh, r, d))
    assert torch.equal(alone[0], full[2])
