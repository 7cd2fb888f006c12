"""Video in: frame decoding; the hMLP stem's reference vs hot path, allocation, batch invariance."""

import copy
import io

import pytest
import torch
from PIL import Image

from foreground.engine.allocations import count_tensor_allocations
from foreground.model.config import VisionConfig
from foreground.model.vision import HMLPStem, decode_frame

S = 80
HIDDEN = 256


def _gradient_rgb(width: int, height: int) -> bytes:
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    rgb = torch.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                       (x + y) % 256], dim=-1)
    return rgb.to(torch.uint8).numpy().tobytes()


def _jpeg(raw: bytes, width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), raw).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_raw_frame_is_resized_into_unit_range():
    frame = decode_frame(None, _gradient_rgb(160, 120), 160, 120, S)
    assert frame.shape == (3, S, S) and frame.dtype == torch.float32
    assert frame.min() >= 0.0 and frame.max() <= 1.0
    assert frame[0, :, -1].mean() > 0.9 and frame[0, :, 0].mean() < 0.1  # red grows left to right
    assert frame[1, -1, :].mean() > 0.9 and frame[1, 0, :].mean() < 0.1  # green grows downwards


def test_solid_colour_survives_exactly():
    raw = bytes([255, 0, 51]) * (30 * 20)
    frame = decode_frame(None, raw, 30, 20, S)
    expected = torch.tensor([1.0, 0.0, 51 / 255]).view(3, 1, 1).expand(3, S, S)
    assert torch.allclose(frame, expected, atol=1e-6)


def test_jpeg_decodes_like_the_same_raw_pixels():
    raw = _gradient_rgb(96, 64)
    from_raw = decode_frame(None, raw, 96, 64, S)
    from_jpeg = decode_frame(_jpeg(raw, 96, 64), None, 0, 0, S)
    assert from_jpeg.shape == (3, S, S)
    assert (from_jpeg - from_raw).abs().mean() < 0.02


def test_raw_length_mismatch_names_the_field():
    with pytest.raises(ValueError, match=r"video\.raw\.rgb"):
        decode_frame(None, b"\0" * (10 * 10 * 3 - 1), 10, 10, S)


@pytest.mark.parametrize("width,height", [(4097, 1), (1, 4097), (0, 10)])
def test_raw_frame_size_is_bounded(width, height):
    with pytest.raises(ValueError, match="`video`"):
        decode_frame(None, b"\0" * (width * height * 3), width, height, S)


def test_huge_jpeg_is_refused_before_decoding():
    with pytest.raises(ValueError, match="`video`"):
        decode_frame(_jpeg(b"\0" * (4100 * 8 * 3), 4100, 8), None, 0, 0, S)


def test_broken_jpeg_and_missing_payload_are_errors():
    with pytest.raises(ValueError, match=r"video\.jpeg"):
        decode_frame(b"not a jpeg", None, 0, 0, S)
    with pytest.raises(ValueError, match="exactly one"):
        decode_frame(None, None, 1, 1, S)
    with pytest.raises(ValueError, match="exactly one"):
        decode_frame(b"x", b"\0\0\0", 1, 1, S)


@pytest.fixture(scope="module")
def stem() -> HMLPStem:
    torch.manual_seed(0)
    stem = HMLPStem(HIDDEN, VisionConfig())
    stem.prepare(64)
    return stem


def test_parameters_have_the_documented_names_and_shapes(stem):
    shapes = {name: tuple(p.shape) for name, p in stem.named_parameters()}
    assert shapes == {"sub_patch_proj.weight": (64, 192), "sub_patch_proj.bias": (64,),
                      "patch_proj.weight": (HIDDEN, 25 * 64), "patch_proj.bias": (HIDDEN,)}
    assert stem.patches_per_frame == 4


def test_level_one_is_a_strided_conv_over_sub_patches(stem):
    """Pins the flattening order: sub-patch values are (channel, row, col), like a conv kernel."""
    frames = torch.rand(2, 3, S, S)
    with torch.no_grad():
        conv = torch.nn.functional.conv2d(frames, stem.sub_patch_proj.weight.view(64, 3, 8, 8),
                                          stem.sub_patch_proj.bias, stride=8)  # [2, 64, 10, 10]
        level1 = torch.nn.functional.gelu(conv, approximate="tanh")
        # patch (py, px) holds sub-patches 5py..5py+4 x 5px..5px+4, flattened (sub-row, sub-col, ch)
        grid = level1.view(2, 64, 2, 5, 2, 5).permute(0, 2, 4, 3, 5, 1).reshape(2, 4, 25 * 64)
        expected = grid @ stem.patch_proj.weight.t() + stem.patch_proj.bias
        assert torch.allclose(stem(frames), expected, atol=1e-5)


def test_patches_do_not_interact(stem):
    frames = torch.rand(1, 3, S, S)
    changed = frames.clone()
    changed[0, :, 5, 60] = 1.0 - changed[0, :, 5, 60]  # a pixel of the top-right patch (index 1)
    with torch.no_grad():
        before, after = stem(frames), stem(changed)
    assert not torch.equal(before[0, 1], after[0, 1])
    for other in (0, 2, 3):
        assert torch.equal(before[0, other], after[0, other])


def test_embed_matches_forward(stem):
    frames = torch.rand(8, 3, S, S)
    out = torch.empty(8, 4, HIDDEN)
    stem.embed(frames, out)
    with torch.no_grad():
        assert torch.allclose(out, stem(frames), atol=1e-6, rtol=0)


def test_embed_allocates_nothing_after_warm_up(stem):
    frames = torch.rand(8, 3, S, S)
    out = torch.empty(8, 4, HIDDEN)
    stem.embed(frames, out)
    with count_tensor_allocations() as report:
        stem.embed(frames, out)
    assert report.count == 0, report.by_op


def test_embed_is_batch_invariant(stem):
    torch.manual_seed(1)
    frame = torch.rand(1, 3, S, S)
    results = []
    for batch in (1, 3, 8, 64):
        frames = torch.rand(batch, 3, S, S)
        slot = min(3, batch - 1)
        frames[slot] = frame[0]
        out = torch.empty(batch, 4, HIDDEN)
        stem.embed(frames, out)
        results.append(out[slot].clone())
    for other in results[1:]:
        assert torch.equal(results[0], other)


def test_embed_alone_in_a_one_slot_stem_equals_a_frame_of_a_full_64_batch(stem):
    """Prepared for one frame vs one frame among 64: same bits (kernels.matmul)."""
    single = copy.deepcopy(stem)
    single.prepare(1)
    frames = torch.rand(64, 3, S, S, generator=torch.Generator().manual_seed(2))
    alone, full = torch.empty(1, 4, HIDDEN), torch.empty(64, 4, HIDDEN)
    single.embed(frames[37:38].clone(), alone)
    stem.embed(frames, full)
    assert torch.equal(alone[0], full[37])


def test_embed_checks_its_arguments(stem):
    with pytest.raises(ValueError, match="prepare"):
        stem.embed(torch.rand(65, 3, S, S), torch.empty(65, 4, HIDDEN))
    with pytest.raises(ValueError, match="out"):
        stem.embed(torch.rand(2, 3, S, S), torch.empty(2, 4, HIDDEN + 1))


def test_bad_geometry_is_refused():
    with pytest.raises(ValueError, match="patch_size"):
        HMLPStem(HIDDEN, VisionConfig(image_size=100, patch_size=40))
    with pytest.raises(ValueError, match="hidden_size"):
        HMLPStem(HIDDEN + 2)
