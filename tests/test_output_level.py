"""The output level stage: any voice level comes out near -20 dBFS RMS, peaks stay under
-1 dBFS without clipping, the gain moves without steps, rows do not mix, nothing is allocated."""

import numpy as np
import pytest
import torch

from foreground.engine.allocations import count_tensor_allocations
from foreground.engine.output_level import CEILING_DBFS, OutputLevel

SAMPLES = 4800


def _voice(level_db: float, ticks: int, seed: int = 0) -> torch.Tensor:
    """A voiced-sounding signal (a few partials under a syllable-rate envelope) at `level_db` RMS."""
    n = torch.arange(ticks * SAMPLES, dtype=torch.float64) / 24_000
    rng = np.random.default_rng(seed)
    wave = sum(torch.sin(2 * np.pi * f * n + float(rng.uniform(0, 6))) / k
               for k, f in enumerate((140.0, 280.0, 420.0, 910.0), start=1))
    wave = wave * (1.2 + torch.sin(2 * np.pi * 4.0 * n))
    wave = wave / wave.pow(2).mean().sqrt() * 10 ** (level_db / 20)
    return wave.float().view(ticks, SAMPLES)


def _run(stage: OutputLevel, ticks: torch.Tensor, slot: int = 0, batch: int = 1, speaking: bool = True):
    """Each tick through `stage` in row `slot` of a batch whose other rows carry other voices."""
    out, flags = [], torch.full((batch, 1), speaking)
    others = _voice(-35.0, ticks.shape[0], seed=9)
    for k in range(ticks.shape[0]):
        pcm = torch.stack([ticks[k] if row == slot else others[k] * (row + 1) for row in range(batch)])
        stage.apply(pcm, flags)
        out.append(pcm[slot].clone())
    return torch.cat(out)


def _db(x: torch.Tensor) -> tuple[float, float]:
    x = x.double()
    return 10 * float(torch.log10(x.pow(2).mean())), 20 * float(torch.log10(x.abs().max()))


@pytest.mark.parametrize("level_db", [-60.0, -53.0, -30.0, -6.0])
def test_any_voice_level_comes_out_near_minus_20_dbfs_under_the_ceiling(level_db):
    out = _run(OutputLevel(SAMPLES, 200, 1), _voice(level_db, 20))
    rms_db, peak_db = _db(out)
    assert -21.0 <= rms_db <= -19.0 and peak_db <= CEILING_DBFS + 1e-4, (rms_db, peak_db)


def test_a_sudden_loud_tick_is_held_under_the_ceiling():
    ticks = _voice(-50.0, 10)
    ticks[6] *= 100.0  # +40 dB for one tick: the slow level cannot follow, the ceiling must
    assert _db(_run(OutputLevel(SAMPLES, 200, 1), ticks))[1] <= CEILING_DBFS + 1e-4


def test_the_gain_follows_a_level_change_sample_by_sample():
    ticks = torch.cat([_voice(-50.0, 5), _voice(-35.0, 10)])
    out = _run(OutputLevel(SAMPLES, 200, 1), ticks).double()
    gain = out / ticks.reshape(-1).double()
    steps = (gain.diff().abs() / gain[1:])[ticks.reshape(-1)[1:].abs() > 1e-3]
    assert steps.max() < 1e-3  # ramped, never stepped, across every tick boundary
    assert -21.0 <= _db(out[-3 * SAMPLES:])[0] <= -19.0  # and settled at the target again


def test_silent_ticks_stay_silent_and_do_not_move_the_level():
    stage = OutputLevel(SAMPLES, 200, 1)
    _run(stage, _voice(-40.0, 5))
    level = stage.level.clone()
    assert torch.all(_run(stage, torch.zeros(3, SAMPLES)) == 0)
    _run(stage, _voice(-10.0, 3), speaking=False)  # not the model's speech (a fade-out tail)
    assert torch.equal(stage.level, level)


def test_a_row_is_bitwise_the_same_alone_and_in_a_batch_and_reset_starts_afresh():
    voice = _voice(-45.0, 6, seed=3)
    alone = _run(OutputLevel(SAMPLES, 200, 64), voice)
    assert torch.equal(alone, _run(OutputLevel(SAMPLES, 200, 64), voice, slot=37, batch=64))
    stage = OutputLevel(SAMPLES, 200, 2)
    _run(stage, _voice(-10.0, 4))
    stage.reset(0)
    assert torch.equal(_run(stage, voice), alone)


def test_apply_allocates_nothing_after_warmup():
    stage = OutputLevel(SAMPLES, 200, 16)
    pcm, speaking = _voice(-50.0, 8), torch.ones(8, 1, dtype=torch.bool)
    stage.apply(pcm, speaking)
    with count_tensor_allocations() as report:
        stage.apply(pcm, speaking)
    assert report.count == 0, dict(report.by_op)
