"""The channel vocoder: spectrum, silence, continuity across ticks, level against the
featuriser, no allocations on the hot path, and bitwise batch invariance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cluster.speech import synthesize
from foreground.engine.allocations import count_tensor_allocations
from foreground.model.audio_features import (DMelFeaturizer, Resampler24kTo16k,
                                             mel_centre_frequencies)
from foreground.model.config import AudioConfig
from foreground.model.vocoder import ChannelVocoder, carrier_frequencies

CFG = AudioConfig()
FRAMES, MELS = CFG.frames_per_tick, CFG.n_mels
SAMPLES, CHUNK_IN = CFG.output_samples_per_tick, CFG.input_samples_per_tick


def vocode_stream(vocoder: ChannelVocoder, log_mel: torch.Tensor, slot: int = 0,
                  batch: int | None = None) -> torch.Tensor:
    """Synthesize `log_mel` [ticks * 5, n_mels] tick by tick in `slot` (other rows: noise)."""
    batch = slot + 1 if batch is None else batch
    noise = torch.Generator().manual_seed(11)
    out, pieces = torch.empty(batch, SAMPLES), []
    for tick in range(log_mel.shape[0] // FRAMES):
        block = torch.randn(batch, FRAMES, MELS, generator=noise) * 3
        block[slot] = log_mel[tick * FRAMES:(tick + 1) * FRAMES]
        vocoder.synthesize(block, out)
        pieces.append(out[slot].clone())
    return torch.cat(pieces)


def speech_log_mel(rms: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """espeak-ng speech at 16 kHz and its featuriser log-mel, [ticks * 5, n_mels]."""
    pcm = synthesize("Hello there, how are you doing today? I would like a table for two.")
    pcm = torch.tensor(pcm / np.sqrt(np.mean(pcm**2)) * rms, dtype=torch.float32)
    pcm = pcm[:pcm.shape[0] // CHUNK_IN * CHUNK_IN]
    featurizer, frames = DMelFeaturizer(CFG, 1), []
    log_mel = torch.empty(1, FRAMES, MELS)
    bins = torch.empty(1, FRAMES, MELS, dtype=torch.long)
    for chunk in pcm.split(CHUNK_IN):
        featurizer.featurize(chunk[None], log_mel, bins)
        frames.append(log_mel[0].clone())
    return pcm, torch.cat(frames)


def one_channel(channel: int, level: float, ticks: int) -> torch.Tensor:
    log_mel = torch.full((ticks * FRAMES, MELS), CFG.log_mel_floor)
    log_mel[:, channel] = level
    return log_mel


def test_carriers_hold_whole_periods_per_tick() -> None:
    freqs = carrier_frequencies(CFG)
    assert freqs.shape == (MELS,) and len(set(freqs.tolist())) == MELS
    assert torch.all(freqs * SAMPLES % CFG.output_rate == 0)
    assert freqs.max() < CFG.input_rate / 2


def test_a_1khz_channel_puts_its_energy_near_1khz() -> None:
    centres = np.array(mel_centre_frequencies(MELS, 0.0, CFG.input_rate / 2))
    channel = int(np.argmin(np.abs(centres - 1000.0)))
    pcm = vocode_stream(ChannelVocoder(CFG, 1), one_channel(channel, 8.0, ticks=3))
    steady = pcm[SAMPLES:].double()  # after the fade-in from the reset state
    power = torch.fft.rfft(steady * torch.hann_window(steady.shape[0], dtype=torch.float64))
    power = power.abs() ** 2
    hz = torch.arange(power.shape[0]) * CFG.output_rate / steady.shape[0]
    near = (hz > 900) & (hz < 1100)
    assert power[near].sum() / power.sum() > 0.99
    expected_amplitude = math.sqrt(math.exp(8.0) - math.exp(CFG.log_mel_floor)) * math.sqrt(
        32 / (3 * CFG.n_fft_in**2))
    assert steady.abs().max() == pytest.approx(expected_amplitude, rel=0.01)


def test_log_mel_at_or_below_the_floor_is_silent() -> None:
    vocoder = ChannelVocoder(CFG, 2)
    at_floor = torch.full((2 * FRAMES, MELS), CFG.log_mel_floor)
    assert torch.all(vocode_stream(vocoder, at_floor) == 0)
    vocoder.reset(0)
    log_clamp_silence = torch.full((2 * FRAMES, MELS), math.log(1e-10))  # featuriser of zeros
    assert torch.all(vocode_stream(vocoder, log_clamp_silence) == 0)


def test_output_is_continuous_across_tick_boundaries() -> None:
    _, log_mel = speech_log_mel()
    pcm = vocode_stream(ChannelVocoder(CFG, 1), log_mel)
    steps = pcm.diff().abs()
    boundaries = torch.arange(SAMPLES, pcm.shape[0], SAMPLES) - 1
    typical = steps.quantile(0.99)
    assert steps[boundaries].max() <= typical, (steps[boundaries].max(), typical)


def test_a_loud_tick_fades_out_without_a_click() -> None:
    log_mel = one_channel(3, 9.0, ticks=2)  # a low carrier: small steps within the tick
    log_mel[FRAMES:] = CFG.log_mel_floor  # then silence
    pcm = vocode_stream(ChannelVocoder(CFG, 1), log_mel)
    steps = pcm.diff().abs()
    loud_steps = steps[SAMPLES // 2:SAMPLES - 1]
    assert steps[SAMPLES - 1] <= loud_steps.max() * 1.01  # across the boundary: no jump
    assert torch.all(pcm[SAMPLES + CFG.hop_out // 2:] == 0)  # faded out at the 1st frame centre


def test_vocoder_of_featuriser_log_mel_keeps_the_level_and_spectrum() -> None:
    pcm16k, log_mel = speech_log_mel(rms=0.1)
    pcm24k = vocode_stream(ChannelVocoder(CFG, 1), log_mel)
    rms = pcm24k.pow(2).mean().sqrt().item()
    assert 0.05 < rms < 0.2  # documented scale: about the input RMS (0.1)
    resampler, featurizer = Resampler24kTo16k(1), DMelFeaturizer(CFG, 1)
    back, out16 = [], torch.empty(1, CHUNK_IN)
    again = torch.empty(1, FRAMES, MELS)
    bins = torch.empty(1, FRAMES, MELS, dtype=torch.long)
    for chunk in pcm24k.split(SAMPLES):
        resampler.resample(chunk[None], out16)
        featurizer.featurize(out16, again, bins)
        back.append(again[0].clone())
    again_all = torch.cat(back)
    active = log_mel > CFG.log_mel_floor + 2
    corr = np.corrcoef(log_mel[active].numpy(), again_all[active].numpy())[0, 1]
    assert corr > 0.8


def test_to_pcm16_rounds_and_saturates() -> None:
    vocoder = ChannelVocoder(CFG, 2)
    pcm = torch.zeros(2, SAMPLES)
    pcm[0, :6] = torch.tensor([-1.0, 1.0, 0.5, -0.25, 1.4 / 32767, 2.0])
    out = torch.empty(2, SAMPLES, dtype=torch.int16)
    vocoder.to_pcm16(pcm, out)
    assert out[0, :6].tolist() == [-32767, 32767, 16384, -8192, 1, 32767]
    assert torch.all(out[1] == 0)


def test_synthesize_and_to_pcm16_allocate_nothing_after_warmup() -> None:
    vocoder = ChannelVocoder(CFG, 16)
    log_mel = torch.randn(8, FRAMES, MELS) * 3
    pcm, pcm16 = torch.empty(8, SAMPLES), torch.empty(8, SAMPLES, dtype=torch.int16)
    vocoder.synthesize(log_mel, pcm)
    vocoder.to_pcm16(pcm, pcm16)
    with count_tensor_allocations() as report:
        vocoder.synthesize(log_mel, pcm)
        vocoder.to_pcm16(pcm, pcm16)
    assert report.count == 0, dict(report.by_op)


@pytest.mark.parametrize("batch", [2, 3, 8, 11, 64])
def test_synthesize_is_bitwise_batch_invariant(batch: int) -> None:
    log_mel = torch.randn(3 * FRAMES, MELS, generator=torch.Generator().manual_seed(3)) * 3
    alone = vocode_stream(ChannelVocoder(CFG, 64), log_mel, batch=1)
    assert torch.equal(alone, vocode_stream(ChannelVocoder(CFG, 64), log_mel, batch=batch))


def test_synthesize_alone_in_one_slot_equals_a_slot_of_a_full_64_slot_batch() -> None:
    """Sized for one slot vs one slot among 64: different row counts, same bits (kernels.matmul)."""
    log_mel = torch.randn(3 * FRAMES, MELS, generator=torch.Generator().manual_seed(4)) * 3
    alone = vocode_stream(ChannelVocoder(CFG, 1), log_mel, batch=1)
    assert torch.equal(alone, vocode_stream(ChannelVocoder(CFG, 64), log_mel, slot=37, batch=64))


def test_reset_fades_a_new_session_in_from_silence() -> None:
    vocoder = ChannelVocoder(CFG, 3)
    assert [t.shape[0] for t in vocoder.state_tensors()] == [3]
    loud = torch.full((2, FRAMES, MELS), 8.0)
    out = torch.empty(2, SAMPLES)
    vocoder.synthesize(loud, out)
    kept = vocoder.last_amplitude[1].clone()
    vocoder.reset(0)
    assert torch.all(vocoder.last_amplitude[0] == 0)
    assert torch.equal(vocoder.last_amplitude[1], kept)
    vocoder.synthesize(loud, out)
    assert out[0, 0] == 0  # knot 0 of a fresh slot is silence
    assert out[1, 0].abs() > 0  # the other slot carries on
