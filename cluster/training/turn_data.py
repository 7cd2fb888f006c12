"""Labelled log-mel streams for the end-of-turn detector, featurised exactly as the engine does.

Utterances (with SSML mid-turn breaks) are laid end to end per stream with a silence after each
turn end, cut into 200 ms ticks, quantised to PCM16 as a client sends them, and featurised tick
by tick by the engine's own `DMelFeaturizer` and `PitchSalience` (all streams as one batch of
slots): the features are the ones the tick engine would compute for that audio.

Labels, per 40 ms frame (the detector decides at the frame's end; the engine at every 5th):
SPEAKING while the frame overlaps voiced audio of a turn, PAUSING in a mid-turn pause (a gap
of >= 0.3 s inside a turn, as `cluster.conversation` measures it), ENDED after a turn end and
before the first turn. Every silent frame also records how long the silence has lasted and
which pause or turn end it belongs to, for calibration by event.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from cluster.conversation.script import voiced_extent
from cluster.training.turn_corpus import Utterance
from cluster.training.turn_scenes import SceneConfig, add_backgrounds, dress_utterance
from cluster.training.turn_synth import SynthRequest, synthesize_fresh
from foreground.model.audio_features import DMelFeaturizer
from foreground.model.config import ModelConfig
from foreground.model.pitch_salience import PitchSalience
from foreground.model.turn_detector import ENDED, PAUSING, SPEAKING

log = logging.getLogger(__name__)

RATE = 16_000
GAP_AFTER_TURN_S = (1.0, 2.2)
LEAD_S = (0.2, 0.6)
GAIN_DB = (-12.0, 3.0)  # clean streams (scenes=None); dressed ones: turn_scenes
ROOM_TAIL = RATE * 3 // 10
ONSET_MARGIN = 320  # samples of speech a frame needs before it counts as SPEAKING (20 ms)


@dataclass(frozen=True)
class Event:
    """A silence the detector must judge: a mid-turn pause or a turn end (samples in its stream)."""

    stream: int
    kind: int  # PAUSING or ENDED
    start: int  # end of the voiced audio before it
    end: int  # the next onset (or the end of the stream)
    voice: str = ""
    ending: str = ""  # the text's last character before the silence ("," "." "?" "!" or a letter)


@dataclass
class TurnStreams:
    log_mel: torch.Tensor  # [S, T, C]: frame j ends at sample hop * (j + 1)
    pitch: torch.Tensor  # [S, T, P]: the frames' pitch-salience maps
    labels: torch.Tensor  # [S, T] int64
    silence_s: torch.Tensor  # [S, T]: seconds since the voiced audio ended (0 while speaking)
    event: torch.Tensor  # [S, T] int64: index into `events` (-1: none)
    events: list[Event] = field(default_factory=list)
    seconds: float = 0.0
    scenes: list[str] = field(default_factory=list)  # what each stretch of the streams got


@dataclass
class _Placed:
    audio: np.ndarray
    start: int  # first voiced sample (stream coordinates)
    segments: list[tuple[int, int]]  # voiced spans between mid-turn pauses
    voice: str
    endings: list[str]  # per segment: the last character of its text


def synthesize_utterances(utterances: list[Utterance]) -> list[np.ndarray]:
    requests = [SynthRequest(u.ssml(), u.voice, u.rate_wpm, u.pitch_percent) for u in utterances]
    return synthesize_fresh(requests, RATE)


def build_streams(utterances: list[Utterance], audio: list[np.ndarray], n_streams: int,
                  model_cfg: ModelConfig, seed: int, scenes: SceneConfig | None = None) -> TurnStreams:
    """Lay the utterances out on `n_streams` streams, dress them in `scenes` (levels, rooms,
    backgrounds: `turn_scenes`; None: clean, at random levels), featurise and label them."""
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    order = list(range(len(utterances)))
    rng.shuffle(order)
    tracks: list[list[_Placed]] = [[] for _ in range(n_streams)]
    cursor = [round(rng.uniform(*LEAD_S) * RATE) for _ in range(n_streams)]
    for k, i in enumerate(order):
        s = min(range(n_streams), key=lambda j: (cursor[j], j))  # keep streams equally long
        a = audio[i]
        first, last, pauses = voiced_extent(a, RATE)
        if last <= first:
            continue
        if scenes is None:
            clip = a[: last + 160] * 10 ** (rng.uniform(*GAIN_DB) / 20)
        else:  # room tails ring on into the silence after the turn
            clip = dress_utterance(np.concatenate([a[: last + 160], np.zeros(ROOM_TAIL, np.float32)]),
                                   RATE, np_rng, scenes)
        bounds = [first] + [x for p in pauses for x in p] + [last]
        segments = [(cursor[s] + bounds[j], cursor[s] + bounds[j + 1]) for j in range(0, len(bounds), 2)]
        endings = [part.strip()[-1] for part in utterances[i].parts]
        if len(endings) != len(segments):  # espeak merged or split a pause: judge by voice only
            endings = [""] * len(segments)
        tracks[s].append(_Placed(clip, cursor[s], segments, utterances[i].voice, endings))
        cursor[s] += len(clip) + round(rng.uniform(*GAP_AFTER_TURN_S) * RATE)
    audio_cfg = model_cfg.audio
    tick = audio_cfg.input_samples_per_tick
    total = -(-max(cursor) // tick) * tick
    pcm = np.zeros((n_streams, total), np.float32)
    voiced = np.zeros((n_streams, total), bool)
    for s, placed in enumerate(tracks):
        for p in placed:
            pcm[s, p.start: p.start + len(p.audio)] += p.audio
            for a, b in p.segments:
                voiced[s, a:b] = True
    scene_names = add_backgrounds(pcm, voiced, RATE, np_rng, audio, scenes) if scenes is not None else []
    del voiced
    pcm16 = np.clip(np.round(pcm * 32767.0), -32768, 32767).astype(np.int16)
    log_mel, pitch = featurize(pcm16, model_cfg)
    labels, silence, event, events = _label(tracks, total, audio_cfg.hop_in, audio_cfg.n_fft_in)
    return TurnStreams(log_mel, pitch, labels, silence, event, events, seconds=n_streams * total / RATE,
                       scenes=scene_names)


def featurize(pcm16: np.ndarray, model_cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """[S, samples] PCM16 -> log-mel [S, frames, n_mels] and pitch salience [S, frames, P],
    tick by tick, as the engine's `_featurize` does."""
    audio_cfg = model_cfg.audio
    streams, samples = pcm16.shape
    tick, f = audio_cfg.input_samples_per_tick, audio_cfg.frames_per_tick
    featurizer = DMelFeaturizer(audio_cfg, streams)
    salience = PitchSalience(audio_cfg, model_cfg.turn_detector, streams * f)
    ticks = samples // tick
    log_mel = torch.zeros(streams, ticks * f, audio_cfg.n_mels)
    pitch = torch.zeros(streams, ticks * f, model_cfg.turn_detector.pitch_candidates)
    mel_tick = torch.zeros(streams, f, audio_cfg.n_mels)
    pitch_tick = torch.zeros(streams, f, model_cfg.turn_detector.pitch_candidates)
    bins = torch.zeros(streams, f, audio_cfg.n_mels, dtype=torch.int64)
    chunk = torch.zeros(streams, tick)
    pcm = torch.from_numpy(pcm16)
    for k in range(ticks):
        chunk.copy_(pcm[:, k * tick:(k + 1) * tick]).div_(32768.0)  # as `_gather` does
        featurizer.featurize(chunk, mel_tick, bins)
        salience.compute(featurizer.power_rows(), streams * f, out=pitch_tick)
        log_mel[:, k * f:(k + 1) * f] = mel_tick
        pitch[:, k * f:(k + 1) * f] = pitch_tick
    return log_mel, pitch


def _label(tracks: list[list[_Placed]], total: int, hop: int, n_fft: int):
    frames = total // hop
    ends = (np.arange(frames) + 1) * hop  # sample at which each frame ends
    labels = np.full((len(tracks), frames), ENDED, np.int64)
    silence = np.zeros((len(tracks), frames), np.float32)
    event = np.full((len(tracks), frames), -1, np.int64)
    events: list[Event] = []
    for s, placed in enumerate(tracks):
        spans = [(seg, j == len(p.segments) - 1, p.voice, p.endings[j]) for p in placed
                 for j, seg in enumerate(p.segments)]
        onsets = [span[0][0] for span in spans[1:]] + [total]
        for (seg, final, voice, ending), next_onset in zip(spans, onsets, strict=True):
            start, end = seg
            speaking = (ends >= start + ONSET_MARGIN) & (ends < end + n_fft)
            labels[s, speaking] = SPEAKING
            silent = (ends >= end + n_fft) & (ends < next_onset + ONSET_MARGIN)
            kind = ENDED if final else PAUSING
            labels[s, silent] = kind
            silence[s, silent] = (ends[silent] - end) / RATE
            event[s, silent] = len(events)
            events.append(Event(s, kind, end, next_onset, voice, ending))
    return torch.from_numpy(labels), torch.from_numpy(silence), torch.from_numpy(event), events
