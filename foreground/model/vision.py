"""Video in: decode one frame per chunk, and embed it with a hierarchical-MLP (hMLP) stem.

The stem follows Touvron et al. 2022 ("Three things everyone should know about ViTs"): each
40x40 patch is processed alone (no interaction between patches), by two MLP levels:
1. every 8x8x3 sub-patch, flattened as (channel, row, col) = 192 values -> Linear -> GELU (tanh)
   into `d1 = hidden_size // 4` channels;
2. the 5x5 grid of level-1 outputs of a patch, flattened as (sub-row, sub-col, channel) =
   25 * d1 values -> Linear -> `hidden_size`.
Patches are ordered row-major within the frame. `forward` is the readable reference; `embed`
is the tick's hot path: after `prepare(max_slots)` and one warm-up call it allocates no tensor,
and a frame's embedding is bitwise the same whatever the batch size (both Linears go through
`foreground.kernels.matmul.linear`).
"""

from __future__ import annotations

import functools
import io

import torch
from torch import Tensor, nn

from foreground.kernels.matmul import linear, pad_rows
from foreground.model.config import VisionConfig

MAX_FRAME_SIDE = 4096


def decode_frame(jpeg: bytes | None, raw_rgb: bytes | None, width: int, height: int,
                 image_size: int) -> Tensor:
    """One frame (JPEG, or raw RGB of `width` x `height`) as float32 [3, S, S] in [0, 1].

    Runs when a chunk arrives, outside the tick, so it may allocate. Resizing is bilinear with
    antialiasing, the same for both encodings.
    """
    if (jpeg is None) == (raw_rgb is None):
        raise ValueError("`video` needs exactly one of `jpeg` and `raw.rgb`")
    if jpeg is not None:
        pixels = _decode_jpeg(jpeg)
    else:
        pixels = _decode_raw(raw_rgb, width, height)
    image = pixels.permute(2, 0, 1).unsqueeze(0).to(torch.float32).div_(255.0)
    resized = nn.functional.interpolate(image, size=(image_size, image_size), mode="bilinear",
                                        align_corners=False, antialias=True)
    return resized[0].clamp_(0.0, 1.0).contiguous()


def _check_side(width: int, height: int) -> None:
    if not (0 < width <= MAX_FRAME_SIDE and 0 < height <= MAX_FRAME_SIDE):
        raise ValueError(f"`video` frame is {width}x{height}; "
                         f"each side must be 1..{MAX_FRAME_SIDE}")


def _decode_raw(raw_rgb: bytes, width: int, height: int) -> Tensor:
    _check_side(width, height)
    if len(raw_rgb) != width * height * 3:
        raise ValueError(f"`video.raw.rgb` has {len(raw_rgb)} bytes; a {width}x{height} RGB frame "
                         f"needs {width * height * 3}")
    return torch.frombuffer(bytearray(raw_rgb), dtype=torch.uint8).view(height, width, 3)


def _decode_jpeg(jpeg: bytes) -> Tensor:
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(jpeg))  # reads the header only
    except Image.DecompressionBombError as exc:  # a header claiming billions of pixels: PIL refuses it itself
        raise ValueError(f"`video` frame is larger than {MAX_FRAME_SIDE} px a side: {exc}") from exc
    except Exception as exc:  # whatever a decoder raises on hostile bytes (OSError, SyntaxError, struct.error, ...)
        raise ValueError(f"`video.jpeg` is not a decodable image: {type(exc).__name__}: {exc}") from exc
    with image:
        _check_side(*image.size)  # before decoding: refuse huge frames cheaply
        try:
            rgb = image.convert("RGB")
        except Exception as exc:
            raise ValueError(f"`video.jpeg` is not a decodable image: {type(exc).__name__}: {exc}") from exc
    width, height = rgb.size
    return torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(height, width, 3)


class HMLPStem(nn.Module):
    """Frame pixels -> `patches_per_frame` embeddings of `hidden_size`, patch by patch."""

    def __init__(self, hidden_size: int, vision: VisionConfig | None = None) -> None:
        super().__init__()
        vision = vision or VisionConfig()
        if vision.image_size % vision.patch_size or vision.patch_size % vision.sub_patch:
            raise ValueError(f"vision config {vision}: image_size must be a multiple of "
                             "patch_size, and patch_size a multiple of sub_patch")
        if hidden_size % 4:
            raise ValueError(f"hidden_size {hidden_size} must be a multiple of 4 (d1 = hidden/4)")
        self.image_size = vision.image_size
        self.sub_patch = vision.sub_patch
        self.grid = vision.image_size // vision.patch_size  # patches per side
        self.subs = vision.patch_size // vision.sub_patch  # sub-patches per patch side
        self.patches_per_frame = vision.patches_per_frame
        self.hidden_size = hidden_size
        self.d1 = hidden_size // 4
        self.sub_patch_proj = nn.Linear(3 * self.sub_patch ** 2, self.d1)
        self.patch_proj = nn.Linear(self.subs ** 2 * self.d1, hidden_size)
        self.max_slots = 0
        self._pixels = torch.empty(0)
        self._level1 = torch.empty(0)
        self._embedded = torch.empty(0)

    def _sub_patch_view(self, frames: Tensor) -> Tensor:
        """[B, 3, S, S] as (b, patch row, patch col, sub row, sub col, channel, y, x): a view."""
        b, g, k, s = frames.shape[0], self.grid, self.subs, self.sub_patch
        return frames.view(b, 3, g, k, s, g, k, s).permute(0, 2, 5, 3, 6, 1, 4, 7)

    def forward(self, frames: Tensor) -> Tensor:
        """Reference: [B, 3, S, S] -> [B, patches_per_frame, hidden_size] (allocates)."""
        b = frames.shape[0]
        sub_patches = self._sub_patch_view(frames.contiguous()).reshape(-1, 3 * self.sub_patch ** 2)
        level1 = nn.functional.gelu(self.sub_patch_proj(sub_patches), approximate="tanh")
        patches = level1.reshape(b * self.patches_per_frame, self.subs ** 2 * self.d1)
        return self.patch_proj(patches).view(b, self.patches_per_frame, self.hidden_size)

    def prepare(self, max_slots: int) -> None:
        """Allocate the hot path's buffers for up to `max_slots` frames per call."""
        subs_rows = pad_rows(max_slots * self.patches_per_frame * self.subs ** 2)
        patch_rows = pad_rows(max_slots * self.patches_per_frame)
        device, dtype = self.patch_proj.weight.device, self.patch_proj.weight.dtype
        zeros = functools.partial(torch.zeros, device=device, dtype=dtype)
        self._pixels = zeros(subs_rows, 3 * self.sub_patch ** 2)
        # Level 2 reads pad_rows(patches) rows of k * k sub-patches: maybe more than level 1 wrote.
        self._level1 = zeros(max(subs_rows, patch_rows * self.subs ** 2), self.d1)
        self._embedded = zeros(patch_rows, self.hidden_size)
        self.max_slots = max_slots

    @torch.no_grad()
    def embed(self, frames: Tensor, out: Tensor) -> None:
        """Hot path: `frames` [B, 3, S, S] (contiguous) -> `out` [B, patches_per_frame, hidden]."""
        b = frames.shape[0]
        if b > self.max_slots:
            raise ValueError(f"embed got {b} frames; prepare({self.max_slots}) was called")
        expected = (b, self.patches_per_frame, self.hidden_size)
        if tuple(out.shape) != expected or not out.is_contiguous():
            raise ValueError(f"embed needs a contiguous `out` of shape {expected}")
        g, k, s = self.grid, self.subs, self.sub_patch
        subs_rows = pad_rows(b * self.patches_per_frame * k * k)
        patch_rows = pad_rows(b * self.patches_per_frame)
        self._pixels[:b * g * g * k * k].view(b, g, g, k, k, 3, s, s).copy_(
            self._sub_patch_view(frames))
        level1 = linear(self._pixels[:subs_rows], self.sub_patch_proj.weight,
                        self._level1[:subs_rows], bias=self.sub_patch_proj.bias)
        torch.ops.aten.gelu_(level1, approximate="tanh")
        patches = self._level1[:patch_rows * k * k].view(patch_rows, k * k * self.d1)
        embedded = linear(patches, self.patch_proj.weight, self._embedded[:patch_rows],
                          bias=self.patch_proj.bias)
        out.view(b * self.patches_per_frame, self.hidden_size).copy_(
            embedded[:b * self.patches_per_frame])
