"""Offline turn-taking evaluation: the tick engine, tick by tick, on unseen voices and sentences.

Each dialogue (one per test voice x test sentence): a turn with mid-turn pauses, silence while
the model answers, a barge-in while it speaks, silence again. Every dialogue is a session of
one engine per policy (vad, hybrid, model), fed one 200 ms chunk per tick; no cluster, no
network. Times are decided at tick boundaries: a decision of tick k heard the user up to the
end of chunk k, and its audio leaves when the tick ends, so each latency is the chunk end minus
the moment, and the tick's own compute time (reported) comes on top.

- pause takeover: pauses (gaps >= 0.3 s inside a turn) in which the model started speaking
  (decided at a chunk end in (pause start, pause end + one chunk]);
- turn-taking latency (Full-Duplex-Bench v1): turn end -> the model's first speech, where it
  takes that turn before the user's next onset; reported for the dialogue's main turns and,
  apart, for the short barge-in utterances ("Hold on, what about the moon?"), whose ends follow
  the model's interrupted turn;
- interruption stop: user onset while the model speaks -> the first silent model chunk.

Every number is also given per voice and per kind of turn end (`by_ending`: the main turn is a
question or a statement). espeak-ng ends a question with nearly the rise it puts before a comma
(its last 0.4 s differ from the comma version's by ~1.2 semitones, a statement's fall by ~2.3),
and across sentences and voices the two do not separate (README, "Learned turn-taking"), so
question ends are where the detector waits longest, often until the silence outlasts any pause.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cluster.conversation.script import voiced_extent
from cluster.training.turn_corpus import TEST_INTERRUPTIONS, TEST_TURNS, TEST_VOICES, test_utterance
from cluster.training.turn_synth import SynthRequest, synthesize_fresh
from foreground.engine.tick_scheduler import TickScheduler
from foreground.model.family import ReferenceFamily
from foreground.engine.turn_policy import TurnPolicyConfig
from foreground.model.checkpoint import ensure_seeded_checkpoint, load_checkpoint

log = logging.getLogger(__name__)

RATE, TICK = 16_000, 3200
LEAD_S, ANSWER_GAP_S, TAIL_S = 0.6, 2.0, 2.6


@dataclass
class Dialogue:
    voice: str
    question: bool  # the main turn ends with "?"
    pcm16: np.ndarray
    pauses: list[tuple[int, int]]
    turn_ends: list[int]  # [the main turn's end, the barge-in's end]
    onsets: list[int]


def build_dialogues(voices: tuple[str, ...] = TEST_VOICES, seed: int = 0) -> list[Dialogue]:
    rng = random.Random(seed)
    plans = []
    for v, voice in enumerate(voices):
        for i in range(len(TEST_TURNS)):
            turn = test_utterance(i, voice, rng)
            barge = replace(turn, parts=(TEST_INTERRUPTIONS[(i + v) % len(TEST_INTERRUPTIONS)],), breaks_s=())
            plans.append((voice, turn, barge))
    requests = [SynthRequest(u.ssml(), u.voice, u.rate_wpm) for _, t, b in plans for u in (t, b)]
    audio = synthesize_fresh(requests, RATE)
    return [_lay_out(voice, turn.parts[-1].endswith("?"), audio[2 * k], audio[2 * k + 1])
            for k, (voice, turn, _) in enumerate(plans)]


def _lay_out(voice: str, question: bool, turn: np.ndarray, barge: np.ndarray) -> Dialogue:
    """[lead] turn [gap: the model answers] barge-in [tail]; ground truth from the audio."""
    dialogue = Dialogue(voice, question, np.zeros(0, np.int16), [], [], [])
    parts, cursor = [], round(LEAD_S * RATE)
    parts.append(np.zeros(cursor, np.float32))
    for audio, gap in ((turn, ANSWER_GAP_S), (barge, TAIL_S)):
        first, last, pauses = voiced_extent(audio, RATE)
        clip = audio[: last + 160]
        dialogue.onsets.append(cursor + first)
        dialogue.pauses += [(cursor + a, cursor + b) for a, b in pauses]
        dialogue.turn_ends.append(cursor + last)
        parts += [clip, np.zeros(round(gap * RATE), np.float32)]
        cursor += len(clip) + round(gap * RATE)
    pcm = np.concatenate(parts)
    pcm = np.concatenate([pcm, np.zeros(-len(pcm) % TICK, np.float32)])
    dialogue.pcm16 = np.clip(np.round(pcm * 32767.0), -32768, 32767).astype(np.int16)
    return dialogue


def run_policy(model, dialogues: list[Dialogue], turn: TurnPolicyConfig) -> dict:
    """All dialogues as sessions of one engine; per-session speech flags by tick."""
    engine = TickScheduler(ReferenceFamily(model), max_slots=len(dialogues), turn=turn)
    names = [f"d{i}" for i in range(len(dialogues))]
    for name in names:
        engine.join(name, seed=0)
    ticks = max(len(d.pcm16) for d in dialogues) // TICK
    speech = np.zeros((len(dialogues), ticks), bool)
    tick_ms = []
    for k in range(ticks):
        for name, d in zip(names, dialogues, strict=True):
            chunk = d.pcm16[k * TICK:(k + 1) * TICK]
            engine.submit_audio(name, np.pad(chunk, (0, TICK - len(chunk))).astype("<i2").tobytes())
        started = time.perf_counter()
        outputs = {o.session_id: o for o in engine.tick()}
        tick_ms.append((time.perf_counter() - started) * 1000)
        for i, name in enumerate(names):
            speech[i, k] = outputs[name].speech
    return {"speech": speech, "tick_ms_p50": statistics.median(tick_ms)}


def measure(dialogues: list[Dialogue], speech: np.ndarray) -> dict:
    taken_pauses, latencies, missed, stops, unstopped = 0, ([], []), [0, 0], [], 0
    n_pauses = sum(len(d.pauses) for d in dialogues)
    for d, row in zip(dialogues, speech, strict=True):
        starts = [k for k in range(len(row)) if row[k] and (k == 0 or not row[k - 1])]
        decided = [TICK * (k + 1) for k in starts]  # the chunk end each start was decided at
        taken_pauses += sum(1 for a, b in d.pauses if any(a < t <= b + TICK for t in decided))
        for which, end in enumerate(d.turn_ends):
            nxt = min([o for o in d.onsets if o > end], default=len(row) * TICK)
            first = next((t for t in decided if t > end), None)
            if first is not None and first <= nxt + TICK:
                latencies[which].append((first - end) / RATE)
            else:
                missed[which] += 1
        for onset in d.onsets:
            k = onset // TICK  # the tick whose chunk holds the onset
            if k == 0 or not row[k - 1]:
                continue  # the model was not speaking when the user started
            stop = next((j for j in range(k, len(row)) if not row[j]), None)
            if stop is None:
                unstopped += 1
            else:
                stops.append((TICK * (stop + 1) - onset) / RATE)
    q = (lambda xs, p: round(float(np.percentile(xs, p)), 3) if xs else None)
    main, after_barge = latencies
    return {"pause_takeover": round(taken_pauses / max(1, n_pauses), 3), "pauses": n_pauses,
            "turn_taking_latency_p50_s": q(main, 50), "turn_taking_latency_p90_s": q(main, 90),
            "taken_within_0_3_s": round(sum(1 for x in main if x <= 0.3) / max(1, len(dialogues)), 3),
            "turn_ends_taken": len(main), "turn_ends_missed": missed[0],
            "after_barge_in_latency_p50_s": q(after_barge, 50), "after_barge_in_missed": missed[1],
            "interruption_stop_p50_s": q(stops, 50), "interruptions": len(stops), "never_stopped": unstopped}


def evaluate(checkpoint: Path | None = None, policies: tuple[str, ...] = ("vad", "hybrid", "model"),
             voices: tuple[str, ...] = TEST_VOICES, seed: int = 0) -> dict:
    """Per policy (and per voice), on the test voices and the held-out sentences."""
    model = load_checkpoint(checkpoint or ensure_seeded_checkpoint())
    dialogues = build_dialogues(voices, seed)
    result: dict = {"checkpoint": str(checkpoint or "seeded default"), "calibrated": model.cfg.turn_head_calibrated,
                    "voices": list(voices), "dialogues": len(dialogues), "policies": {}}
    for policy in policies:
        turn = TurnPolicyConfig(policy=policy, head_calibrated=model.cfg.turn_head_calibrated)
        run = run_policy(model, dialogues, turn)
        summary = measure(dialogues, run["speech"])
        summary["tick_ms_p50"] = round(run["tick_ms_p50"], 1)
        summary["by_voice"] = {v: _measure_where(dialogues, run["speech"], lambda d, v=v: d.voice == v)
                               for v in voices}
        summary["by_ending"] = {name: _measure_where(dialogues, run["speech"], lambda d, q=q: d.question == q)
                                for name, q in (("question", True), ("statement", False))}
        result["policies"][policy] = summary
        log.info("%s: %s", policy, {k: v for k, v in summary.items() if not k.startswith("by_")})
    return result


def _measure_where(dialogues: list[Dialogue], speech: np.ndarray, keep) -> dict:
    mask = [bool(keep(d)) for d in dialogues]
    return measure([d for d, m in zip(dialogues, mask, strict=True) if m], speech[mask])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.training.turn_eval", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="default: the seeded checkpoint (trained detector merged)")
    parser.add_argument("--policy", action="append", choices=["vad", "hybrid", "model"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = evaluate(args.checkpoint, tuple(args.policy or ("vad", "hybrid", "model")), seed=args.seed)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
