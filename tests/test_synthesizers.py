"""flite and festival voices beside espeak-ng, and the background sounds mixed into benches and
training: real programs, real audio."""

import numpy as np
import pytest

from cluster.backgrounds import BENCH_KINDS, KINDS, background, mix_at_snr, telephone
from cluster.conversation.script import voiced_extent
from cluster.speech import synthesize
from cluster.synthesizers import FESTIVAL_VOICES, FLITE_VOICES, plain_text

RATE = 16_000
TEXT = '<speak>When we reached the old harbour <break time="800ms"/> the boats were coming back.</speak>'


def test_ssml_breaks_become_commas_at_known_offsets():
    plain = plain_text(TEXT)
    assert plain.text == "When we reached the old harbour, the boats were coming back."
    assert plain.breaks == ((plain.text.index(","), 0.8),)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("voice", [f"flite:{v}" for v in FLITE_VOICES] + [f"festival:{v}" for v in FESTIVAL_VOICES])
def test_other_synthesisers_speak_with_the_pause_where_the_break_is(voice):
    audio = synthesize(TEXT, voice, 170, RATE)
    first, last, pauses = voiced_extent(audio, RATE)
    assert last - first > RATE  # more than a second of speech
    assert len(pauses) == 1, f"{voice}: pauses {pauses}"
    a, b = pauses[0]
    assert 0.6 <= (b - a) / RATE <= 1.1 and first < a and b < last  # the break, inside the sentence


@pytest.mark.timeout(60)
def test_slower_rates_speak_longer():
    fast, slow = (synthesize("The train from the mountains was delayed.", "flite:awb", r, RATE) for r in (200, 140))
    assert len(slow) > 1.2 * len(fast)


@pytest.mark.parametrize("kind", KINDS)
def test_each_background_mixes_in_at_the_requested_snr(kind):
    rng = np.random.default_rng(0)
    speech = synthesize("I was thinking about the weather.", "en-us", 170, RATE)
    voiced = np.abs(speech) > 0.01
    clips = [speech[voiced]] if kind == "babble" else None
    noise = background(kind, len(speech), RATE, rng, clips)
    mixed = mix_at_snr(speech, noise, 20.0, voiced)
    residual = mixed - speech
    snr = 10 * np.log10(np.mean(speech[voiced] ** 2) / np.mean(residual ** 2))
    assert abs(snr - 20.0) < 0.1
    assert set(BENCH_KINDS) - {"none"} <= set(KINDS)


def test_the_telephone_band_removes_what_lies_outside_it():
    t = np.arange(RATE) / RATE
    tones = (np.sin(2 * np.pi * 100 * t) + np.sin(2 * np.pi * 1000 * t) + np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    spectrum = np.abs(np.fft.rfft(telephone(tones, RATE)))
    assert spectrum[1000] > 1000 and spectrum[100] < 1 and spectrum[6000] < 1
