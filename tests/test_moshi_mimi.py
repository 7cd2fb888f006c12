"""microturn's Mimi (foreground/moshi/mimi.py) against moshi's `MimiModel`, and as a slot state.

Parity: for the same weights, streaming frame by frame, a session's codes equal moshi's and the
decoded PCM is within 1e-4 of moshi's, over 45 frames (the transformer's ring of `context`
keys wraps: 20 in the tiny preset, 40 in the small one, at 2 positions a frame). Batch
invariance: a session's codes and PCM are bitwise the same alone and among other sessions,
also when it joins late or is moved to another slot by a leave. A step allocates nothing.
"""

from __future__ import annotations

import math

import pytest
import torch

from cluster.moshi_reference import random_codebooks
from moshi.models.loaders import get_mimi

from foreground.engine.allocations import count_tensor_allocations
from foreground.engine.session_slots import SessionSlots
from foreground.moshi.mimi import MimiCodec, MimiStreams
from foreground.moshi.mimi_config import MimiConfig, MimiConfigError
from foreground.moshi.presets import SAMPLES_PER_FRAME, mimi_preset

CODEBOOKS = 8
PARITY_FRAMES = 45


def speech_like(seed: int, frames: int) -> torch.Tensor:
    """[frames * 1920] at about -20 dBFS: a gliding voiced tone (f0 and 3 harmonics) under a
    syllable-rate envelope with pauses, plus noise."""
    g = torch.Generator().manual_seed(seed)
    n = frames * SAMPLES_PER_FRAME
    t = torch.arange(n, dtype=torch.float64) / 24_000
    f0 = 100 + 80 * torch.rand(1, generator=g).item() + 30 * torch.sin(2 * math.pi * 0.5 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / 24_000
    voice = sum(torch.sin(k * phase) / k for k in range(1, 5))
    rate = 3 + 2 * torch.rand(1, generator=g).item()
    envelope = torch.clamp(torch.sin(2 * math.pi * rate * t + 6 * torch.rand(1, generator=g).item()), min=0)
    noise = torch.randn(n, generator=g, dtype=torch.float64)
    wave = envelope * voice + 0.1 * noise
    return (0.1 * wave / wave.pow(2).mean().sqrt()).float()


def reference_run(model, pcm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """moshi streaming, one session: codes [frames, K] and decoded PCM [frames * 1920]."""
    codes, out = [], []
    with torch.no_grad(), model.streaming(1):
        for frame in pcm.view(-1, SAMPLES_PER_FRAME):
            c = model.encode(frame.view(1, 1, -1))
            codes.append(c[0, :, 0])
            out.append(model.decode(c)[0, 0])
    return torch.stack(codes), torch.cat(out)


def our_run(streams: MimiStreams, pcms: list[torch.Tensor], codes_in: list[torch.Tensor]):
    """Step slots 0..b-1 together: slot i encodes pcms[i] and decodes codes_in[i]."""
    b, frames = len(pcms), codes_in[0].shape[0]
    pcm = torch.stack(pcms).view(b, frames, SAMPLES_PER_FRAME)
    codes = torch.stack(codes_in)
    got_codes = torch.zeros(frames, b, CODEBOOKS, dtype=torch.int64)
    got_pcm = torch.zeros(frames, b, SAMPLES_PER_FRAME)
    for f in range(frames):
        streams.encode(pcm[:, f], got_codes[f])
        streams.decode(codes[:, f], got_pcm[f])
    return got_codes.transpose(0, 1), got_pcm.transpose(0, 1).reshape(b, -1)


def moshi_mimi(preset: str, seed: int):
    torch.manual_seed(seed)
    return get_mimi(None, mimi_preset(preset), num_codebooks=CODEBOOKS)


@pytest.mark.parametrize("preset,weights", [("tiny", "moshi"), ("small", "moshi"), ("tiny", "seeded")])
def test_parity_with_moshi(preset, weights):
    cfg = MimiConfig.from_kyutai(mimi_preset(preset), CODEBOOKS)
    model = moshi_mimi(preset, seed=1)
    if weights == "moshi":  # moshi's own init, codebooks drawn
        model.load_state_dict(random_codebooks(model.state_dict(), seed=2), strict=True)
        state = model.state_dict()
    else:  # ours, loaded into moshi
        state = MimiCodec.seeded_state_dict(cfg, seed=3)
        model.load_state_dict(state, strict=True)
    streams = MimiStreams(MimiCodec.from_state_dict(cfg, state), max_slots=3)
    pcms = [speech_like(seed, PARITY_FRAMES) for seed in (10, 11)]
    references = [reference_run(model, pcm) for pcm in pcms]
    codes, pcm_out = our_run(streams, pcms, [codes for codes, _ in references])
    for slot, (ref_codes, ref_pcm) in enumerate(references):
        assert torch.equal(codes[slot], ref_codes), f"slot {slot}: codes differ from moshi's"
        diff = (pcm_out[slot] - ref_pcm).abs().max().item()
        assert diff <= 1e-4, f"slot {slot}: PCM differs from moshi's by {diff}"
        assert ref_pcm.abs().max() > 1e-3  # audio, not silence
    distinct = [torch.unique(codes[..., k]).numel() for k in range(CODEBOOKS)]
    assert sum(distinct) >= 2 * CODEBOOKS, f"codes barely follow the audio: {distinct}"


def test_seeded_state_dict_has_moshis_names_and_shapes():
    cfg = MimiConfig.from_kyutai(mimi_preset("small"), CODEBOOKS)
    seeded = MimiCodec.seeded_state_dict(cfg, seed=0)
    reference = moshi_mimi("small", seed=0).state_dict()
    assert {n: tuple(t.shape) for n, t in seeded.items()} == {n: tuple(t.shape) for n, t in reference.items()}
    again = MimiCodec.seeded_state_dict(cfg, seed=0)
    assert all(torch.equal(seeded[n], again[n]) for n in seeded)


# Batch invariance ------------------------------------------------------------------------

FRAMES = 6
MAX_SLOTS = 40


@pytest.fixture(scope="module")
def tiny_codec() -> MimiCodec:
    cfg = MimiConfig.from_kyutai(mimi_preset("tiny"), CODEBOOKS)
    return MimiCodec.from_state_dict(cfg, MimiCodec.seeded_state_dict(cfg, seed=5))


def session_input(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A session's audio [FRAMES, 1920] and the model's codes for it [FRAMES, K]."""
    codes = torch.randint(0, 64, (FRAMES, CODEBOOKS), generator=torch.Generator().manual_seed(seed))
    return speech_like(seed, FRAMES).view(FRAMES, -1), codes


def run_sessions(codec: MimiCodec, plan: dict[str, tuple[int, int]], probe: str,
                 leave_at: dict[str, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sessions join (`SessionSlots.join`) at frame `start`, in `plan` order, and leave after
    the step of frame `leave_at[name]`; returns the probe's codes and PCM, frame by frame."""
    streams = MimiStreams(codec, MAX_SLOTS)
    slots = SessionSlots(MAX_SLOTS, [streams])
    inputs = {name: session_input(seed) for name, (seed, _) in plan.items()}
    progress: dict[str, int] = {}
    probe_codes, probe_pcm = [], []
    for frame in range(FRAMES):
        for name, (_, start) in plan.items():
            if start == frame:
                slots.join(name)
                progress[name] = 0
        records = slots.records()
        pcm = torch.stack([inputs[r.session_id][0][progress[r.session_id]] for r in records])
        codes = torch.stack([inputs[r.session_id][1][progress[r.session_id]] for r in records])
        codes_out = torch.zeros(len(records), CODEBOOKS, dtype=torch.int64)
        pcm_out = torch.zeros(len(records), SAMPLES_PER_FRAME)
        streams.encode(pcm, codes_out)
        streams.decode(codes, pcm_out)
        for r in records:
            progress[r.session_id] += 1
            if r.session_id == probe:
                probe_codes.append(codes_out[r.slot].clone())
                probe_pcm.append(pcm_out[r.slot].clone())
        for name, when in (leave_at or {}).items():
            if when == frame:
                slots.leave(name)
    return torch.stack(probe_codes), torch.stack(probe_pcm)


def assert_same(got, alone, what: str) -> None:
    assert torch.equal(got[0], alone[0]), f"{what}: codes differ from the session's alone"
    assert torch.equal(got[1], alone[1]), f"{what}: PCM differs bitwise from the session's alone"


@pytest.mark.parametrize("others", [2, 7, 32])
def test_batch_invariance(tiny_codec, others):
    alone = run_sessions(tiny_codec, {"probe": (1, 0)}, "probe")
    crowd = {f"other-{i}": (100 + i, 0) for i in range(others)}
    half = others // 2  # the probe sits in the middle of the batch
    plan = dict(list(crowd.items())[:half]) | {"probe": (1, 0)} | dict(list(crowd.items())[half:])
    assert_same(run_sessions(tiny_codec, plan, "probe"), alone, f"with {others} others")


def test_batch_invariance_late_join_and_leave(tiny_codec):
    alone = run_sessions(tiny_codec, {"probe": (1, 0)}, "probe")
    # other-3 leaves at frame 1 (other-6 moves into its slot); the probe joins at frame 2 into
    # the slot other-6 left, full of its stale state: the join's reset makes it a fresh stream.
    crowd = {f"other-{i}": (200 + i, 0) for i in range(7)}
    late = crowd | {"probe": (1, 2)}
    got = run_sessions(tiny_codec, late, "probe", leave_at={"other-3": 1})
    assert_same(got, tuple(x[: FRAMES - 2] for x in alone), "joining late")
    # The probe is the last live slot when other-2 leaves: compaction moves its state rows.
    moved = crowd | {"probe": (1, 0)}
    assert_same(run_sessions(tiny_codec, moved, "probe", leave_at={"other-2": 2}), alone,
                "moved by a leave")


def test_inactive_slots_hear_silence_and_keep_their_stream(tiny_codec):
    """Decoding with `active` False (before the LM's first codes, which may be placeholders)
    leaves a slot's decoder where it was: it later decodes what a stream started then would."""
    _, codes = session_input(1)
    _, crowd_codes = session_input(2)
    fresh = MimiStreams(tiny_codec, MAX_SLOTS)
    expected = torch.zeros(FRAMES - 2, 1, SAMPLES_PER_FRAME)
    for f in range(2, FRAMES):
        fresh.decode(codes[f:f + 1], expected[f - 2])
    streams = MimiStreams(tiny_codec, MAX_SLOTS)
    got = torch.zeros(FRAMES, 2, SAMPLES_PER_FRAME)
    placeholder = torch.full((CODEBOOKS,), -2)  # what moshi's LMGen holds before its first codes
    for f in range(FRAMES):
        active = torch.tensor([True, f >= 2])
        streams.decode(torch.stack([crowd_codes[f], codes[f] if f >= 2 else placeholder]), got[f], active=active)
    assert not got[:2, 1].any(), "an inactive slot must get silence"
    assert torch.equal(got[2:, 1], expected[:, 0])


def test_steps_allocate_nothing(tiny_codec):
    streams = MimiStreams(tiny_codec, max_slots=9)
    for batch in range(1, 10):
        pcm = speech_like(batch, 1).view(1, -1).expand(batch, -1).contiguous()
        codes = torch.zeros(batch, CODEBOOKS, dtype=torch.int64)
        out = torch.zeros(batch, SAMPLES_PER_FRAME)
        active = torch.arange(batch) % 2 == 0
        streams.encode(pcm, codes)
        with count_tensor_allocations() as report:
            streams.encode(pcm, codes)
            streams.decode(codes, out)
            streams.decode(codes, out, active=active)
        assert report.count == 0, f"batch {batch}: {dict(report.by_op)}"


def test_state_tensors_have_a_row_per_slot(tiny_codec):
    streams = MimiStreams(tiny_codec, max_slots=3)
    assert streams.state_tensors() and all(t.shape[0] == 3 for t in streams.state_tensors())


# Errors ---------------------------------------------------------------------------------

def test_missing_misshapen_or_unknown_tensor_is_named():
    cfg = MimiConfig.from_kyutai(mimi_preset("tiny"), CODEBOOKS)
    state = MimiCodec.seeded_state_dict(cfg, seed=0)
    name = "decoder_transformer.transformer.layers.1.linear2.weight"
    with pytest.raises(KeyError, match=name):
        MimiCodec.from_state_dict(cfg, {n: t for n, t in state.items() if n != name})
    with pytest.raises(ValueError, match=rf"{name}.*shape \(32, 65\).*expected \(32, 64\)"):
        MimiCodec.from_state_dict(cfg, state | {name: torch.zeros(32, 65)})
    with pytest.raises(ValueError, match="unexpected tensors.*extra.weight"):
        MimiCodec.from_state_dict(cfg, state | {"extra.weight": torch.zeros(1)})


def test_kyutai_checkpoint_names_load():
    """Kyutai's published file names attention projections `in_proj_weight` (moshi renames them)."""
    cfg = MimiConfig.from_kyutai(mimi_preset("tiny"), CODEBOOKS)
    state = MimiCodec.seeded_state_dict(cfg, seed=0)
    old = {n.replace("self_attn.in_projs.0.weight", "self_attn.in_proj_weight"): t for n, t in state.items()}
    codec = MimiCodec.from_state_dict(cfg, old)
    name = "encoder_transformer.transformer.layers.0.self_attn.in_projs.0.weight"
    assert torch.equal(codec.encoder_transformer.layers[0].in_proj, state[name])


def test_unsupported_settings_are_refused():
    cfg = mimi_preset("tiny")
    cfg["transformer"]["norm"] = "rms_norm"
    with pytest.raises(MimiConfigError, match="transformer.norm"):
        MimiConfig.from_kyutai(cfg, CODEBOOKS)
    with pytest.raises(MimiConfigError, match="num_codebooks"):
        MimiConfig.from_kyutai(mimi_preset("tiny"), 17)
    assert MimiConfig.from_kyutai(None, 8).transformer.context == 250
