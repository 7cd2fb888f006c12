"""flite and festival: two more synthesisers, so that turn-taking is not learned from one voice engine.

espeak-ng (`cluster.speech`, from a wheel) is a formant synthesiser with its own habits (it
always drops its pitch at a sentence end, and ends a question with its comma rise). flite
(diphone `kal`, clustergen `awb`, `rms`, `slt`) and festival (diphone `kal_diphone`, HTS
`cmu_us_slt_arctic_hts`) are Debian programs with other prosody models; both run as a
subprocess. A voice is named `flite:NAME` or `festival:NAME`; `cluster.speech.synthesize`
routes such names here.

Neither honours SSML `<break>`. A mid-sentence pause is made with the voice's own continuation
prosody instead: each `<break>` becomes a comma, the short gap the synthesiser leaves there is
located in its audio (the silent gap nearest to where the text puts it) and stretched to the
break's length (FACTS.md, "Turn-taking off the bench").
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
FESTIVAL_VOICES = ("kal_diphone", "cmu_us_slt_arctic_hts")
DEBIAN_PACKAGES = "flite festival festvox-kallpc16k festvox-us-slt-hts"
NATURAL_WPM = 170  # the rate at which a duration stretch of 1.0 is taken to speak
_BREAK = re.compile(r'<break\s+time="(\d+)ms"\s*/>')
_TAG = re.compile(r"<[^>]+>")
_GAP_FRAME_S, _GAP_DB, _MIN_GAP_S = 0.005, -45.0, 0.03


class SynthesizerMissing(RuntimeError):
    """flite or festival is not installed; the message says which Debian packages bring it."""


@dataclass(frozen=True)
class PlainText:
    """SSML reduced to what flite and festival read: text with a comma at each break."""

    text: str
    breaks: tuple[tuple[int, float], ...]  # (character offset of the comma, seconds)


def is_external(voice: str) -> bool:
    return voice.startswith(("flite:", "festival:"))


def plain_text(ssml_or_text: str) -> PlainText:
    """`<speak>A <break time="600ms"/> B</speak>` -> "A, B" with the comma's offset and 0.6 s."""
    text, breaks, cursor = "", [], 0
    for m in _BREAK.finditer(ssml_or_text):
        text += _TAG.sub("", ssml_or_text[cursor:m.start()]).rstrip()
        text = text.rstrip(",;") + ","
        breaks.append((len(text) - 1, int(m.group(1)) / 1000.0))
        text += " "
        cursor = m.end()
    text += _TAG.sub("", ssml_or_text[cursor:]).strip()
    return PlainText(" ".join(text.split()), tuple(breaks))


def synthesize_external(text: str, voice: str, rate_wpm: int, pitch_percent: int = 0) -> tuple[np.ndarray, int]:
    """(float32 audio, its sample rate) from flite or festival, breaks stretched in."""
    engine, _, name = voice.partition(":")
    plain = plain_text(text)
    stretch = NATURAL_WPM / max(60, rate_wpm)
    with tempfile.TemporaryDirectory(prefix="microturn-tts-") as tmp:
        out = Path(tmp) / "out.wav"
        if engine == "flite":
            _flite(plain.text, name, stretch, pitch_percent, out)
        else:
            _festival(plain.text, name, stretch, out)
        audio, rate = _read_wav(out)
    return stretch_breaks(audio, rate, plain), rate


def stretch_breaks(audio: np.ndarray, rate: int, plain: PlainText) -> np.ndarray:
    """Lengthen the gap at each break's comma to the break's length (gaps found by energy)."""
    if not plain.breaks or len(audio) == 0:
        return audio
    gaps = _silent_gaps(audio, rate)
    if not gaps:
        return audio
    total = max(1, len(plain.text))
    used: set[int] = set()
    inserts: list[tuple[int, int]] = []  # (sample, samples of silence to add)
    for offset, seconds in plain.breaks:
        expected = offset / total * len(audio)
        best = min((i for i in range(len(gaps)) if i not in used),
                   key=lambda i: abs((gaps[i][0] + gaps[i][1]) / 2 - expected), default=None)
        if best is None:
            break
        used.add(best)
        start, end = gaps[best]
        inserts.append(((start + end) // 2, max(0, round(seconds * rate) - (end - start))))
    pieces, cursor = [], 0
    for at, extra in sorted(inserts):
        pieces += [audio[cursor:at], np.zeros(extra, np.float32)]
        cursor = at
    pieces.append(audio[cursor:])
    return np.concatenate(pieces)


def _silent_gaps(audio: np.ndarray, rate: int) -> list[tuple[int, int]]:
    """Stretches (samples) quieter than _GAP_DB below the peak, inside the utterance."""
    frame = max(1, int(rate * _GAP_FRAME_S))
    n = len(audio) // frame
    rms = np.sqrt((audio[: n * frame].reshape(n, frame).astype(np.float64) ** 2).mean(axis=1))
    quiet = rms < max(rms.max(), 1e-9) * 10 ** (_GAP_DB / 20)
    voiced = np.flatnonzero(~quiet)
    if len(voiced) == 0:
        return []
    gaps, run = [], None
    for i in range(int(voiced[0]), int(voiced[-1]) + 1):
        if quiet[i] and run is None:
            run = i
        elif not quiet[i] and run is not None:
            if (i - run) * _GAP_FRAME_S >= _MIN_GAP_S:
                gaps.append((run * frame, i * frame))
            run = None
    return gaps


def _flite(text: str, voice: str, stretch: float, pitch_percent: int, out: Path) -> None:
    if voice not in FLITE_VOICES:
        raise ValueError(f"flite has no voice {voice!r} (it has {', '.join(FLITE_VOICES)})")
    args = [_program("flite"), "-voice", voice, "--setf", f"duration_stretch={stretch:.3f}"]
    if pitch_percent:
        mean = {"slt": 170.0}.get(voice, 105.0) * (1 + pitch_percent / 100)
        args += ["--setf", f"int_f0_target_mean={mean:.1f}"]
    _run(args + ["-t", text, "-o", str(out)], None)


def _festival(text: str, voice: str, stretch: float, out: Path) -> None:
    if voice not in FESTIVAL_VOICES:
        raise ValueError(f"festival has no voice {voice!r} (it has {', '.join(FESTIVAL_VOICES)})")
    # text2wave evaluates one expression; the HTS voice ignores Duration_Stretch (its rate is its own)
    setup = f"(begin (voice_{voice}) (Parameter.set 'Duration_Stretch {stretch:.3f}))"
    _run([_program("text2wave"), "-eval", setup, "-o", str(out)], text)


def _program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SynthesizerMissing(f"`{name}` is not installed: `apt-get install {DEBIAN_PACKAGES}` "
                                 "(the Makefile's `system-packages` target)")
    return path


def _run(args: list[str], stdin: str | None) -> None:
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr.strip()[-500:]}")


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        rate, data = w.getframerate(), w.readframes(w.getnframes())
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0, rate
