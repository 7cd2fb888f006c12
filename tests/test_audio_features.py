"""The dMel featuriser and the 24k -> 16k resampler: correctness, streaming, no allocations on
the hot path, and bitwise batch invariance."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from cluster.speech import synthesize
from foreground.engine.allocations import count_tensor_allocations
from foreground.model.audio_features import (LOG_CLAMP, DMelFeaturizer, Resampler24kTo16k,
                                             mel_centre_frequencies, mel_filterbank)
from foreground.model.config import AudioConfig

CFG = AudioConfig()
FRAMES, MELS, CHUNK = CFG.frames_per_tick, CFG.n_mels, CFG.input_samples_per_tick


def featurize_stream(featurizer: DMelFeaturizer, pcm: torch.Tensor, slot: int = 0,
                     batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed a 1-D stream tick by tick into `slot` of a batch (other rows: fixed noise)."""
    batch = slot + 1 if batch is None else batch
    noise = torch.Generator().manual_seed(123)
    log_mel = torch.empty(batch, FRAMES, MELS)
    bins = torch.empty(batch, FRAMES, MELS, dtype=torch.long)
    mels, all_bins = [], []
    for tick in range(pcm.shape[0] // CHUNK):
        block = torch.randn(batch, CHUNK, generator=noise) * 0.1
        block[slot] = pcm[tick * CHUNK:(tick + 1) * CHUNK]
        featurizer.featurize(block, log_mel, bins)
        mels.append(log_mel[slot].clone())
        all_bins.append(bins[slot].clone())
    return torch.cat(mels), torch.cat(all_bins)


@functools.cache
def unit_speech() -> torch.Tensor:
    """About 4 s of espeak-ng speech at 16 kHz, scaled to RMS 1."""
    pcm = synthesize("Hello there, how are you doing today? I would like a table for two.")
    return torch.tensor(pcm / np.sqrt(np.mean(pcm**2)), dtype=torch.float32)


def speech(rms: float) -> torch.Tensor:
    return unit_speech() * rms


def test_mel_filterbank_is_triangles_peaking_at_the_centres() -> None:
    fb = mel_filterbank(1024, 16_000, 40)
    assert fb.shape == (513, 40) and fb.dtype == torch.float32
    assert fb.min() >= 0 and fb.max() <= 1
    bin_hz = 16_000 / 1024
    for channel, centre in enumerate(mel_centre_frequencies(40, 0.0, 8000.0)):
        assert abs(fb[:, channel].argmax().item() * bin_hz - centre) <= bin_hz
        assert fb[:, channel].max() > 0.5  # no empty channel
    first, last = mel_centre_frequencies(40, 0.0, 8000.0)[0], 8000.0 * 0.9
    inside = slice(math.ceil(first / bin_hz), int(last / bin_hz))
    assert torch.allclose(fb[inside].sum(dim=1), torch.ones(1), atol=1e-5)  # partition of unity


def test_silence_is_bin_zero_and_the_log_floor() -> None:
    featurizer = DMelFeaturizer(CFG, 2)
    log_mel, bins = featurize_stream(featurizer, torch.zeros(3 * CHUNK))
    assert torch.all(log_mel == math.log(LOG_CLAMP))
    assert torch.all(bins == 0)


def test_sine_energy_lands_in_its_channel_at_the_documented_scale() -> None:
    centre = mel_centre_frequencies(MELS, 0.0, CFG.input_rate / 2)[17]
    t = torch.arange(5 * CHUNK, dtype=torch.float64) / CFG.input_rate
    amplitude = 0.3
    pcm = (amplitude * torch.sin(2 * math.pi * centre * t)).float()
    log_mel, _ = featurize_stream(DMelFeaturizer(CFG, 1), pcm)
    steady = log_mel[FRAMES:]  # after the first window has filled
    assert torch.all(steady.argmax(dim=1) == 17)
    total = steady.double().exp().sum(dim=1)
    expected = amplitude**2 * 3 * CFG.n_fft_in**2 / 32  # Hann, unnormalised |rfft|^2
    assert torch.allclose(total, torch.full_like(total, expected), rtol=0.01)


def test_speech_at_normal_levels_spreads_over_the_bins() -> None:
    featurizer = DMelFeaturizer(CFG, 1)
    means = []
    for rms in (0.03, 0.1, 0.3):
        log_mel, bins = featurize_stream(featurizer, speech(rms))
        featurizer.reset(0)
        voiced = log_mel.exp().sum(dim=1).log() > log_mel.exp().sum(dim=1).log().max() - 6
        used = bins[voiced]
        assert len(torch.unique(used)) >= 10, f"rms {rms}: bins {torch.bincount(used.flatten())}"
        assert (used == CFG.dmel_bins - 1).float().mean() < 0.05, f"rms {rms}: saturates"
        assert (used == 0).float().mean() < 0.3, f"rms {rms}: mostly below the floor"
        means.append(used.float().mean().item())
    assert means[0] < means[1] < means[2]


def test_streaming_matches_framing_the_whole_stream() -> None:
    pcm = torch.randn(4 * CHUNK, generator=torch.Generator().manual_seed(0)) * 0.2
    log_mel, _ = featurize_stream(DMelFeaturizer(CFG, 1), pcm)
    tail = CFG.n_fft_in - CFG.hop_in
    whole = torch.cat([torch.zeros(tail, dtype=torch.float64), pcm.double()])
    frames = whole.unfold(0, CFG.n_fft_in, CFG.hop_in)
    window = torch.hann_window(CFG.n_fft_in, periodic=True, dtype=torch.float64)
    power = torch.fft.rfft(frames * window).abs() ** 2
    reference = (power @ mel_filterbank(CFG.n_fft_in, CFG.input_rate, MELS).double()).log()
    assert reference.shape == log_mel.shape
    assert torch.allclose(log_mel.double(), reference, atol=2e-3)


def test_quantize_maps_floor_ceil_and_garbage_into_range() -> None:
    featurizer = DMelFeaturizer(CFG, 2)
    lo, hi, bins = CFG.log_mel_floor, CFG.log_mel_ceil, CFG.dmel_bins
    width = (hi - lo) / bins
    values = [lo - 5, lo, lo + 0.5 * width, lo + 1.5 * width, hi - 0.5 * width, hi, hi + 9,
              float("nan"), float("inf"), float("-inf")]
    expected = [0, 0, 0, 1, bins - 1, bins - 1, bins - 1, 0, bins - 1, 0]
    log_mel = torch.full((1, FRAMES, MELS), lo)
    log_mel[0, 0, :len(values)] = torch.tensor(values)
    out = torch.full((1, FRAMES, MELS), -1, dtype=torch.long)
    featurizer.quantize(log_mel, out)
    assert out[0, 0, :len(values)].tolist() == expected
    assert torch.all(out[0, 1:] == 0)


def test_featurize_and_quantize_allocate_nothing_after_warmup() -> None:
    featurizer = DMelFeaturizer(CFG, 16)
    pcm = torch.randn(8, CHUNK) * 0.1
    log_mel = torch.empty(8, FRAMES, MELS)
    bins = torch.empty(8, FRAMES, MELS, dtype=torch.long)
    featurizer.featurize(pcm, log_mel, bins)  # warm-up
    with count_tensor_allocations() as report:
        featurizer.featurize(pcm, log_mel, bins)
        featurizer.quantize(log_mel, bins)
    assert report.count == 0, dict(report.by_op)


@pytest.mark.parametrize("batch", [2, 3, 5, 8, 11, 64])
def test_featurize_is_bitwise_batch_invariant(batch: int) -> None:
    pcm = torch.randn(3 * CHUNK, generator=torch.Generator().manual_seed(7)) * 0.3
    alone = featurize_stream(DMelFeaturizer(CFG, 64), pcm, slot=0, batch=1)
    batched = featurize_stream(DMelFeaturizer(CFG, 64), pcm, slot=0, batch=batch)
    assert torch.equal(alone[0], batched[0]) and torch.equal(alone[1], batched[1])


def test_featurize_alone_in_one_slot_equals_a_slot_of_a_full_64_slot_batch() -> None:
    """Sized for one slot vs one slot among 64: different row counts, same bits (kernels.matmul)."""
    pcm = torch.randn(3 * CHUNK, generator=torch.Generator().manual_seed(8)) * 0.3
    alone = featurize_stream(DMelFeaturizer(CFG, 1), pcm, slot=0, batch=1)
    full = featurize_stream(DMelFeaturizer(CFG, 64), pcm, slot=37, batch=64)
    assert torch.equal(alone[0], full[0]) and torch.equal(alone[1], full[1])


def test_reset_restarts_one_slot_and_keeps_the_others() -> None:
    featurizer = DMelFeaturizer(CFG, 4)
    assert [t.shape[0] for t in featurizer.state_tensors()] == [4]
    loud = torch.randn(2, CHUNK) * 0.5
    log_mel = torch.empty(2, FRAMES, MELS)
    bins = torch.empty(2, FRAMES, MELS, dtype=torch.long)
    featurizer.featurize(loud, log_mel, bins)
    kept = featurizer.tail[1].clone()
    featurizer.reset(0)
    assert torch.all(featurizer.tail[0] == 0) and torch.equal(featurizer.tail[1], kept)
    featurizer.featurize(torch.zeros(2, CHUNK), log_mel, bins)
    assert torch.all(bins[0] == 0)  # slot 0 starts from silence: no leftover of the loud tick
    assert bins[1, 0].max() > 0  # slot 1's first frame still overlaps its previous tick


def tone(freq: float, ticks: int, rate: int = 24_000) -> torch.Tensor:
    t = torch.arange(ticks * rate // 5, dtype=torch.float64) / rate
    return torch.sin(2 * math.pi * freq * t).float()


def resample_stream(resampler: Resampler24kTo16k, pcm24: torch.Tensor, slot: int = 0,
                    batch: int | None = None) -> torch.Tensor:
    batch = slot + 1 if batch is None else batch
    noise = torch.Generator().manual_seed(5)
    chunk, out = resampler.chunk_in, torch.empty(batch, resampler.chunk_out)
    pieces = []
    for tick in range(pcm24.shape[0] // chunk):
        block = torch.randn(batch, chunk, generator=noise) * 0.1
        block[slot] = pcm24[tick * chunk:(tick + 1) * chunk]
        resampler.resample(block, out)
        pieces.append(out[slot].clone())
    return torch.cat(pieces)


def test_resampler_keeps_a_440hz_sine() -> None:
    resampler = Resampler24kTo16k(1)
    out = resample_stream(resampler, tone(440.0, ticks=5)).double()
    m = torch.arange(out.shape[0], dtype=torch.float64)
    delay = resampler.half_width / 24_000  # the filter's delay, in seconds
    expected = torch.sin(2 * math.pi * 440.0 * (m / 16_000 - delay))
    settled = slice(2 * resampler.half_width, None)
    assert (out[settled] - expected[settled]).abs().max() < 1e-4


def gain_db(freq: float) -> float:
    out = resample_stream(Resampler24kTo16k(1), tone(freq, ticks=3))[400:].double()
    return 20 * math.log10(out.pow(2).mean().sqrt().item() / math.sqrt(0.5) + 1e-12)


@pytest.mark.parametrize("freq", [100.0, 3000.0, 6000.0])
def test_resampler_passband_is_flat(freq: float) -> None:
    assert abs(gain_db(freq)) < 0.05


def test_resampler_7khz_is_still_passed() -> None:
    assert gain_db(7000.0) > -1.5  # 7 kHz is below the 8 kHz Nyquist: the transition band


@pytest.mark.parametrize("freq", [8500.0, 10_000.0, 11_500.0])
def test_resampler_rejects_tones_above_8khz(freq: float) -> None:
    assert gain_db(freq) < -60.0  # they would alias into 4.5 .. 7.5 kHz


def test_resampler_streaming_matches_one_long_chunk() -> None:
    pcm = torch.randn(4 * 4800, generator=torch.Generator().manual_seed(1)) * 0.3
    chunked = resample_stream(Resampler24kTo16k(1), pcm)
    whole = torch.empty(1, 4 * 3200)
    Resampler24kTo16k(1, chunk_in=4 * 4800).resample(pcm[None], whole)
    assert torch.allclose(chunked, whole[0], atol=1e-6)


@pytest.mark.parametrize("batch", [3, 8, 64])
def test_resampler_is_bitwise_batch_invariant(batch: int) -> None:
    pcm = torch.randn(3 * 4800, generator=torch.Generator().manual_seed(2)) * 0.3
    alone = resample_stream(Resampler24kTo16k(64), pcm, batch=1)
    assert torch.equal(alone, resample_stream(Resampler24kTo16k(64), pcm, batch=batch))


def test_resampler_alone_in_one_slot_equals_a_slot_of_a_full_64_slot_batch() -> None:
    pcm = torch.randn(3 * 4800, generator=torch.Generator().manual_seed(9)) * 0.3
    alone = resample_stream(Resampler24kTo16k(1), pcm, batch=1)
    assert torch.equal(alone, resample_stream(Resampler24kTo16k(64), pcm, slot=37, batch=64))


def test_resampler_allocates_nothing_and_resets_a_slot() -> None:
    resampler = Resampler24kTo16k(8)
    pcm, out = torch.randn(4, 4800), torch.empty(4, 3200)
    resampler.resample(pcm, out)
    with count_tensor_allocations() as report:
        resampler.resample(pcm, out)
    assert report.count == 0, dict(report.by_op)
    assert [t.shape[0] for t in resampler.state_tensors()] == [8]
    resampler.reset(2)
    assert torch.all(resampler.tail[2] == 0) and resampler.tail[3].abs().sum() > 0
