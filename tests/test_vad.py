"""Batched per-slot Silero VAD on real (espeak-ng) speech: detection, reference parity,
slot isolation, reset, allocation; and the speech synthesiser the benchmarks reuse."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from cluster.speech import resample, synthesize
from foreground.engine.allocations import count_tensor_allocations
from foreground.engine.vad import TICK_SAMPLES, WINDOWS_PER_TICK, BatchedSileroVad

RATE = 16_000
SENTENCES = ["Hello there, how are you doing today?",
             "The quick brown fox jumps over the lazy dog.",
             "Please call Stella and ask her to bring these things with her.",
             "One, two, three, four, five, six, seven, eight."]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on the shared 2-core machine, 2 OpenMP threads competing with
    another busy process make these small ops ~30x slower. Tests that need 2 set it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [synthesize(text) for text in SENTENCES]


def _stream(clip: np.ndarray, lead_ticks: int, ticks: int, seed: int) -> np.ndarray:
    """`clip` after `lead_ticks` of faint noise, padded with noise to `ticks` ticks."""
    audio = np.random.default_rng(seed).normal(0, 1e-3, ticks * TICK_SAMPLES).astype(np.float32)
    start = lead_ticks * TICK_SAMPLES
    clip = clip[:max(0, len(audio) - start)]
    audio[start:start + len(clip)] += clip
    return audio


def _batch(streams: list[np.ndarray]) -> torch.Tensor:
    """[slots, ticks, 3200] float32."""
    return torch.from_numpy(np.stack(streams)).view(len(streams), -1, TICK_SAMPLES)


def _run(vad: BatchedSileroVad, pcm: torch.Tensor) -> torch.Tensor:
    """Every tick of `pcm` [B, ticks, 3200] through `vad`: probabilities [B, ticks, 6]."""
    b, ticks, _ = pcm.shape
    probs = torch.empty(b, ticks, WINDOWS_PER_TICK)
    out = torch.empty(b, WINDOWS_PER_TICK)
    for tick in range(ticks):
        vad.speech_prob(pcm[:, tick].contiguous(), out)
        probs[:, tick] = out
    return probs


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reference", [False, True])
def test_speech_ticks_are_high_and_silent_ticks_low(clips, reference):
    lead, ticks = 5, 30
    pcm = _batch([_stream(clip, lead, ticks, seed) for seed, clip in enumerate(clips)])
    probs = _run(BatchedSileroVad(len(clips), reference=reference), pcm).amax(dim=-1)
    for slot, clip in enumerate(clips):
        speech_ticks = range(lead, lead + len(clip) // TICK_SAMPLES)  # ticks fully inside speech
        after = lead + -(-len(clip) // TICK_SAMPLES) + 2  # allow 400 ms to decay after speech
        speech = probs[slot, list(speech_ticks)]
        silence = torch.cat([probs[slot, :lead], probs[slot, after:]])
        assert (speech > 0.5).float().mean() >= 0.8, speech
        assert silence.max() < 0.2, silence


@pytest.mark.timeout(60)
def test_reimplementation_matches_torchscript(clips):
    streams = [_stream(np.concatenate([clip, clips[(i + 1) % 4]]), 1 + i, 40, i)
               for i, clip in enumerate(clips)]
    pcm = _batch(streams)
    fast, reference = BatchedSileroVad(8), BatchedSileroVad(8, reference=True)
    out_fast, out_ref = torch.empty(4, WINDOWS_PER_TICK), torch.empty(4, WINDOWS_PER_TICK)
    for tick in range(pcm.shape[1]):  # 240 consecutive windows per slot
        fast.speech_prob(pcm[:, tick].contiguous(), out_fast)
        reference.speech_prob(pcm[:, tick].contiguous(), out_ref)
        assert (out_fast - out_ref).abs().max() <= 1e-5, tick
        h_fast, c_fast = fast.lstm_state[:4].unbind(1)
        h_ref, c_ref = reference.lstm_state[:4].unbind(1)
        # float32 rounding differs (im2col GEMM vs oneDNN conv): h is in (-1, 1); the cell
        # state reaches ~100, so it is compared relative to its scale.
        assert (h_fast - h_ref).abs().max() <= 5e-5, tick
        assert (c_fast - c_ref).abs().max() <= 1e-5 * max(1.0, c_ref.abs().max().item()), tick
    assert out_ref.abs().sum() > 0 and fast.lstm_state[4:].abs().sum() == 0  # idle slots untouched


@pytest.mark.timeout(60)
@pytest.mark.parametrize("batch,threads", [(8, 1), (8, 2), (64, 1)])
def test_slot_is_isolated_from_its_batch(clips, batch, threads):
    """Slot 3 alone (moved to slot 0) and inside a batch of other audio: bitwise equal probs."""
    torch.set_num_threads(threads)  # MKL picks GEMM kernels by rows per thread
    ticks = 12 if threads == 1 else 3  # 2 threads crawl when another process holds a core
    streams = [_stream(clips[i % 4], i % 3, ticks, seed=i) for i in range(batch)]
    batched = _run(BatchedSileroVad(batch), _batch(streams))
    alone = _run(BatchedSileroVad(1), _batch([streams[3]]))
    assert torch.equal(batched[3], alone[0])


@pytest.mark.timeout(60)
def test_slot_moved_mid_stream_carries_its_state(clips):
    streams = [_stream(clips[i], i, 16, seed=i) for i in range(4)]
    pcm = _batch(streams)
    batched = BatchedSileroVad(4)
    first = _run(batched, pcm[:, :8])
    moved = BatchedSileroVad(4)
    for source, target in zip(batched.state_tensors(), moved.state_tensors()):
        target[0].copy_(source[3])  # what the slot table does when a session changes slot
    rest_batched = _run(batched, pcm[:, 8:])
    rest_moved = _run(moved, pcm[3:4, 8:])
    assert first[3].amax() > 0.5  # the state carried speech context
    assert torch.equal(rest_batched[3], rest_moved[0])


@pytest.mark.timeout(60)
def test_reset_clears_one_slot_only(clips):
    pcm = _batch([_stream(clips[0], 0, 8, seed=0), _stream(clips[1], 0, 8, seed=1)])
    vad, untouched, fresh = BatchedSileroVad(2), BatchedSileroVad(2), BatchedSileroVad(2)
    _run(vad, pcm[:, :4])
    _run(untouched, pcm[:, :4])
    assert vad.lstm_state[1].abs().sum() > 0
    vad.reset(1)
    assert vad.lstm_state[1].abs().sum() == 0 and vad.lstm_state[0].abs().sum() > 0
    after = _run(vad, pcm[:, 4:])
    assert torch.equal(after[0], _run(untouched, pcm[:, 4:])[0])  # slot 0 did not notice
    assert torch.equal(after[1], _run(fresh, pcm[1:, 4:])[0])  # slot 1 starts afresh


@pytest.mark.timeout(60)
def test_tick_allocates_nothing_after_warm_up(clips):
    pcm = _batch([_stream(clip, 0, 2, seed) for seed, clip in enumerate(clips)])[:, 1].contiguous()
    out = torch.empty(4, WINDOWS_PER_TICK)
    vad, reference = BatchedSileroVad(8), BatchedSileroVad(8, reference=True)
    for _ in range(2):
        vad.speech_prob(pcm, out)
        reference.speech_prob(pcm, out)
    with count_tensor_allocations() as report:
        vad.speech_prob(pcm, out)
    assert report.count == 0, report.by_op
    with count_tensor_allocations() as report:
        reference.speech_prob(pcm, out)
    assert report.count > 0  # the TorchScript path allocates (about 25 per window)


@pytest.mark.timeout(60)
def test_wrong_shapes_are_refused():
    vad = BatchedSileroVad(2)
    with pytest.raises(ValueError, match="pcm16k"):
        vad.speech_prob(torch.zeros(3, TICK_SAMPLES), torch.empty(3, WINDOWS_PER_TICK))
    with pytest.raises(ValueError, match="pcm16k"):
        vad.speech_prob(torch.zeros(1, TICK_SAMPLES - 1), torch.empty(1, WINDOWS_PER_TICK))
    with pytest.raises(ValueError, match="pcm16k"):
        vad.speech_prob(torch.zeros(1, TICK_SAMPLES, dtype=torch.float64),
                        torch.empty(1, WINDOWS_PER_TICK))
    with pytest.raises(ValueError, match="out"):
        vad.speech_prob(torch.zeros(1, TICK_SAMPLES), torch.empty(1, WINDOWS_PER_TICK + 1))


@pytest.mark.timeout(60)
def test_loading_silero_keeps_the_thread_count():
    """Importing silero_vad calls torch.set_num_threads(1) process-wide; the loader undoes it."""
    code = ("import torch; torch.set_num_threads(2); "
            "from foreground.engine.vad import load_silero_jit; load_silero_jit(); "
            "print(torch.get_num_threads())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=50, check=True)
    assert result.stdout.strip() == "2"


@pytest.mark.timeout(60)
def test_ssml_break_is_a_pause_the_vad_sees():
    plain = synthesize("Three four five. Six seven eight.")
    paused = synthesize('<speak>Three four five. <break time="1200ms"/> Six seven eight.</speak>')
    assert paused.dtype == np.float32 and np.abs(paused).max() <= 1.0
    assert len(paused) - len(plain) > 0.8 * RATE
    ticks = 2 + len(paused) // TICK_SAMPLES
    probs = _run(BatchedSileroVad(1), _batch([_stream(paused, 2, ticks, 0)]))
    per_tick = probs[0].amax(dim=-1)
    speech_ticks = (per_tick > 0.5).nonzero().flatten()
    inside = per_tick[speech_ticks.min():speech_ticks.max()]
    assert (inside < 0.2).sum() >= 2  # at least 400 ms of pause between the two phrases


def test_resampling_keeps_a_tone_and_removes_what_cannot_be_kept():
    t = np.arange(22_050) / 22_050
    tone = resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), 22_050, RATE)
    assert len(tone) == RATE and tone.dtype == np.float32
    expected = np.sin(2 * np.pi * 1000 * np.arange(RATE) / RATE)
    assert np.abs(tone[100:-100] - expected[100:-100]).max() < 1e-3
    above_nyquist = resample(np.sin(2 * np.pi * 9000 * t).astype(np.float32), 22_050, RATE)
    assert np.sqrt(np.mean(above_nyquist[100:-100] ** 2)) < 0.01  # no 7 kHz alias
