"""Deciding the detector's threshold on other voices, by event, as the engine would decide.

The engine runs the detector at tick ends only (every 5th frame) and the tick grid falls
anywhere relative to the speech, so each pause and turn end is judged at all 5 phases:
- a pause is taken over (at a phase) if any decision inside it says "turn ended";
- a turn end's latency (at a phase) is the first decision that says so, minus the end of
  the voiced audio (the Full-Duplex-Bench turn end), up to the tick boundary: what the tick
  adds (compute, transport) comes on top.

A decision says "turn ended" when the SPEECH logit is <= 0 and the END logit plus an offset is
> 0; the chosen offset is folded into the END bias, so the checkpoint's decision is a sign and
the policy needs no number of its own. It is the most eager offset whose pause takeover on the
validation voices stays within the target (FACTS.md trap 4: thresholds tuned on the training
voices transfer poorly).
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import asdict, dataclass

import numpy as np
import torch

from cluster.training.turn_data import RATE, TurnStreams
from foreground.model.turn_detector import END, ENDED, PAUSING, SPEAKING, SPEECH

log = logging.getLogger(__name__)

OFFSETS = [x / 4 for x in range(-48, 25)]  # -12 .. +6 nats on the END logit


@dataclass(frozen=True)
class Operating:
    """What one offset does on a set of streams (rates over events x tick phases)."""

    offset: float
    pause_takeover: float
    turn_end_latency_p50_s: float | None
    turn_end_latency_p90_s: float | None
    taken_within_0_3_s: float  # share of turn ends decided at most 0.3 s after they happened
    missed: float  # turn ends never decided before the next onset
    pauses: int
    turn_ends: int

    def to_json(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def operating_point(logits: torch.Tensor, streams: TurnStreams, offset: float, hop: int,
                    frames_per_tick: int) -> Operating:
    """logits [S, T, 2] (SPEECH, END) for every frame of `streams`."""
    says_end = ((logits[..., SPEECH] <= 0) & (logits[..., END] + offset > 0)).numpy()
    event = streams.event.numpy()
    taken, latencies, missed, n_pause, n_end = 0, [], 0, 0, 0
    for index, ev in enumerate(streams.events):
        frames = (event[ev.stream] == index).nonzero()[0]
        for phase in range(frames_per_tick):
            decisions = frames[frames % frames_per_tick == phase]
            hits = decisions[says_end[ev.stream, decisions]]
            if ev.kind == PAUSING:
                n_pause += 1
                taken += bool(len(hits))
            else:
                n_end += 1
                if len(hits):
                    latencies.append((hop * (int(hits[0]) + 1) - ev.start) / RATE)
                else:
                    missed += 1
    quantile = (lambda q: statistics.quantiles(latencies, n=10)[q] if len(latencies) > 1 else None)
    return Operating(
        offset=offset,
        pause_takeover=taken / max(1, n_pause),
        turn_end_latency_p50_s=statistics.median(latencies) if latencies else None,
        turn_end_latency_p90_s=quantile(8),
        taken_within_0_3_s=sum(1 for x in latencies if x <= 0.3) / max(1, n_end),
        missed=missed / max(1, n_end),
        pauses=n_pause // frames_per_tick,
        turn_ends=n_end // frames_per_tick,
    )


def choose_offset(logits: torch.Tensor, streams: TurnStreams, hop: int, frames_per_tick: int,
                  target_takeover: float) -> tuple[Operating, list[Operating]]:
    """The most eager offset with pause takeover <= target (the least eager one if none is)."""
    curve = [operating_point(logits, streams, o, hop, frames_per_tick) for o in OFFSETS]
    ok = [p for p in curve if p.pause_takeover <= target_takeover]
    chosen = max(ok, key=lambda p: p.offset) if ok else min(curve, key=lambda p: p.offset)
    return chosen, curve


def onset_detection(logits: torch.Tensor, streams: TurnStreams, hop: int, frames_per_tick: int) -> dict:
    """How soon the SPEECH logit turns positive after a turn starts (what barge-in stopping
    needs), and how often it is positive on a silent frame (a false stop)."""
    labels = streams.labels.numpy()
    says = np.where(logits[..., SPEECH].numpy() > 0, SPEAKING, PAUSING)
    delays, false_speech, silent = [], 0, 0
    for s in range(labels.shape[0]):
        row = labels[s]
        onsets = ((row[1:] == SPEAKING) & (row[:-1] == ENDED)).nonzero()[0] + 1
        for j in onsets:
            for phase in range(frames_per_tick):
                k = j + ((phase - j) % frames_per_tick)
                while k < len(row) and says[s, k] != SPEAKING and k < j + 25:
                    k += frames_per_tick
                delays.append((k - j + 1) * hop / RATE)
        quiet = (row != SPEAKING).nonzero()[0]
        false_speech += int((says[s, quiet] == SPEAKING).sum())
        silent += len(quiet)
    return {"onset_to_speaking_p50_s": round(statistics.median(delays), 3) if delays else None,
            "silent_frames_said_speaking": round(false_speech / max(1, silent), 4)}
