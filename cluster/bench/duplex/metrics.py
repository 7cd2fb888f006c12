"""Full-Duplex-Bench v1 metrics on one timeline: the user's ground truth and the model's speech.

Everything here is pure (seconds on the user-audio timeline, no cluster), so that the rules can
be checked on hand-made timelines. The rules follow FD-Bench v1's evaluation scripts
(`eval_smooth_turn_taking.py`, `eval_pause_handling.py`, `eval_user_interruption.py`,
`eval_backchannel.py`); where we deviate, the docstring says so and why.

- takeover TO of an output (`takeover`): no words -> 0; words spanning < 1 s (first word start
  to last word end) with <= 3 words -> 0; else 1. Exactly 1 s is a takeover (FD-Bench tests
  `duration < 1`); spans are rounded to the microsecond first so that float noise cannot move a
  case across that edge.
- smooth turn-taking: TO over the output from the user's turn end on (speech playing at the
  turn end or starting later); latency = its first start - the turn end, only where TO = 1,
  negative (already speaking at the turn end) clamped to 0. Deviation, as DESIGN.md words the
  target ("first model speech after the user's turn end"): FD-Bench takes the whole output, so a
  blurt that started and ended inside the user's turn (say in the gap between two sentences, cut
  short when the user went on) counts as an answer with latency 0. That number is kept apart as
  `turn_taking_latency_fdbench_*`, and such blurts are counted as `early_start`.
- pause handling: TO over the output that starts while the user holds the floor (before the
  final turn end; our pause scripts end in a real turn end, which FD-Bench's inputs do not).
  `pause_onset` is stricter: any model speech starting inside the user's turn at all, however
  short (FD-Bench forgives a blurt of < 1 s and <= 3 words; DESIGN.md's pause target does not).
- user interruption: stop latency (v1.5's t_stop) = end of the model speech that was playing at
  the interruption onset - the onset; TO (v1) over the output after the interruption ends (the
  audio is cropped there, as FD-Bench's ASR step does), response latency = its first start -
  the interruption end, only where TO = 1, clamped at 0.
- backchannel (the user says "mm-hm" while the model speaks): `stopped` = the model's speech
  that was playing at the backchannel onset ended within `BACKCHANNEL_STOP_WINDOW_S` of it, i.e.
  the user's backchannel took the floor from the model. `backchannel TO` is FD-Bench's
  eval_backchannel rule on the model's own speech while the user holds the floor (the user's
  lead-in turn, before its turn end): per speech segment, > 3 s -> takeover; else > 3 words ->
  takeover; else < 1 s with <= 2 words -> a model backchannel (not a takeover); else takeover.
  Deviation: FD-Bench's loop lets a later short segment overwrite an earlier segment's verdict
  (only a > 3 s segment stops the loop); here any takeover segment makes TO = 1.
  `kept` (FD-Bench v1.5 "user backchannel"): where the model spoke at the backchannel onset,
  was it speaking `KEEP_AFTER_S` after the backchannel ended? Any segment covering that moment
  counts, so an engine that holds its audio for a few ticks on an onset and resumes (its segment
  ends at the onset, a new one starts 0.2-0.6 s later) keeps; one that yielded does not. Such a
  hold also ends the playing segment, so `stopped` counts holds too: read `kept`.
- early starts (`early_start`, every scenario with a turn end to answer: turn-taking,
  interruption and backchannel context turns): model speech that begins inside the user's turn
  (floor start <= start < turn end), a blurt between sentences of one turn.
- turn-taking scenarios end in a question or a statement (`Truth.ending`); their latencies are
  also reported apart, since a rising question end sounds like a mid-turn pause to a detector.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from foreground.engine.percentiles import percentile

Kind = Literal["pause", "turn_taking", "interruption", "backchannel"]
KINDS: tuple[Kind, ...] = ("pause", "turn_taking", "interruption", "backchannel")
Ending = Literal["question", "statement"]
ENDINGS: tuple[Ending, ...] = ("question", "statement")

TAKEOVER_MIN_SPAN_S = 1.0  # FD-Bench turn_duration_threshold
TAKEOVER_MAX_WORDS = 3  # FD-Bench turn_num_words_threshold
BACKCHANNEL_MAX_SPAN_S = 3.0  # eval_backchannel time_threshold: longer is formal speech
BACKCHANNEL_MAX_WORDS = 2
BACKCHANNEL_STOP_WINDOW_S = 1.0
KEEP_AFTER_S = 0.5  # FD-Bench v1.5: still speaking this long after the user's backchannel ended


@dataclass(frozen=True)
class Segment:
    """One stretch of model speech on the user-audio timeline, with its word count."""

    start_s: float
    end_s: float
    words: int

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class Truth:
    """What the user did, from the rendered script (seconds on the user-audio timeline).

    `turn_end_s` is the user turn end the model should answer (pause: the end of the long turn;
    interruption: the end of the context turn; backchannel: the end of the lead-in); `cue_*` is
    the interruption or the backchannel; `ending` says how a turn-taking turn ends."""

    kind: Kind
    floor_start_s: float
    turn_end_s: float
    pauses: tuple[tuple[float, float], ...] = ()
    cue_start_s: float | None = None
    cue_end_s: float | None = None
    ending: Ending | None = None


@dataclass
class Score:
    """One scenario's FD-Bench numbers (None: not applicable or not measurable)."""

    kind: Kind
    takeover: int | None = None  # TO for the kind's window (backchannel: FD-Bench's backchannel rule)
    latency_s: float | None = None  # turn-taking latency, or interruption response latency
    stop_latency_s: float | None = None  # interruption / backchannel: model speech end - cue onset
    model_speaking_at_cue: bool | None = None
    stopped: bool | None = None  # backchannel: the model stopped within the window
    kept: bool | None = None  # backchannel: still speaking KEEP_AFTER_S after the backchannel ended
    pause_onset: bool | None = None
    early_start: bool | None = None  # model speech started inside the user's turn (not pause)
    ending: Ending | None = None  # turn-taking: the user's turn ended in a question or a statement
    fdbench_latency_s: float | None = None  # turn-taking latency by FD-Bench's whole-output rule
    model_backchannels: int | None = None
    window: list[Segment] = field(default_factory=list)  # the output the TO was decided on


def takeover(segments: Sequence[Segment]) -> int:
    """FD-Bench v1 TO over an output: only segments with words count (it reads ASR words)."""
    worded = [s for s in segments if s.words > 0]
    if not worded:
        return 0
    span = round(max(s.end_s for s in worded) - min(s.start_s for s in worded), 6)
    words = sum(s.words for s in worded)
    if span < TAKEOVER_MIN_SPAN_S and words <= TAKEOVER_MAX_WORDS:
        return 0
    return 1


def first_start(segments: Sequence[Segment]) -> float | None:
    worded = [s.start_s for s in segments if s.words > 0]
    return min(worded) if worded else None


def clamped_latency(segments: Sequence[Segment], reference_s: float) -> float | None:
    """First output start - reference, clamped at 0, where TO = 1 (else None)."""
    start = first_start(segments)
    if start is None or not takeover(segments):
        return None
    return max(0.0, round(start - reference_s, 6))


def backchannel_segment_takeover(segment: Segment) -> int:
    """eval_backchannel's per-segment verdict: 1 = the model took the floor, 0 = a backchannel."""
    if segment.duration_s > BACKCHANNEL_MAX_SPAN_S or segment.words > TAKEOVER_MAX_WORDS:
        return 1
    if round(segment.duration_s, 6) < TAKEOVER_MIN_SPAN_S and segment.words <= BACKCHANNEL_MAX_WORDS:
        return 0
    return 1


def crop(segments: Sequence[Segment], from_s: float) -> list[Segment]:
    """The output from `from_s` on, as FD-Bench crops the audio before its ASR; a segment cut in
    two keeps the share of its words that falls after the cut (rounded half up)."""
    out = []
    for s in segments:
        if s.end_s <= from_s:
            continue
        if s.start_s >= from_s:
            out.append(s)
            continue
        share = (s.end_s - from_s) / s.duration_s if s.duration_s > 0 else 0.0
        out.append(Segment(from_s, s.end_s, math.floor(s.words * share + 0.5)))
    return out


def playing_at(segments: Sequence[Segment], t: float) -> Segment | None:
    """The segment that was playing at `t` (start <= t < end)."""
    return next((s for s in segments if s.start_s <= t < s.end_s), None)


def early_start(truth: Truth, segments: Sequence[Segment]) -> bool:
    """Model speech began inside the user's turn (a blurt before the turn end it should answer)."""
    return any(truth.floor_start_s <= s.start_s < truth.turn_end_s for s in segments)


def score(truth: Truth, segments: Sequence[Segment]) -> Score:
    segments = sorted(segments, key=lambda s: s.start_s)
    return _SCORERS[truth.kind](truth, segments)


def _score_turn_taking(truth: Truth, segments: list[Segment]) -> Score:
    answer = [s for s in segments if s.end_s > truth.turn_end_s]
    return Score("turn_taking", takeover=takeover(answer), latency_s=clamped_latency(answer, truth.turn_end_s),
                 early_start=early_start(truth, segments), ending=truth.ending,
                 fdbench_latency_s=clamped_latency(segments, truth.turn_end_s), window=answer)


def _score_pause(truth: Truth, segments: list[Segment]) -> Score:
    window = [s for s in segments if s.start_s < truth.turn_end_s]
    onset = any(truth.floor_start_s <= s.start_s for s in window)
    return Score("pause", takeover=takeover(window), pause_onset=onset, window=window)


def _score_interruption(truth: Truth, segments: list[Segment]) -> Score:
    assert truth.cue_start_s is not None and truth.cue_end_s is not None, "an interruption needs its cue"
    playing = playing_at(segments, truth.cue_start_s)
    after = crop(segments, truth.cue_end_s)
    return Score("interruption", takeover=takeover(after), latency_s=clamped_latency(after, truth.cue_end_s),
                 stop_latency_s=round(playing.end_s - truth.cue_start_s, 6) if playing else None,
                 model_speaking_at_cue=playing is not None, early_start=early_start(truth, segments),
                 window=after)


def _score_backchannel(truth: Truth, segments: list[Segment]) -> Score:
    assert truth.cue_start_s is not None and truth.cue_end_s is not None, "a backchannel needs its cue"
    playing = playing_at(segments, truth.cue_start_s)
    kept = playing_at(segments, truth.cue_end_s + KEEP_AFTER_S) is not None if playing else None
    stop = round(playing.end_s - truth.cue_start_s, 6) if playing else None
    window = [s for s in segments if s.start_s < truth.turn_end_s]
    verdicts = [backchannel_segment_takeover(s) for s in window]  # FD-Bench: every VAD segment
    return Score("backchannel", takeover=int(any(verdicts)), stop_latency_s=stop,
                 model_speaking_at_cue=playing is not None,
                 stopped=None if stop is None else stop <= BACKCHANNEL_STOP_WINDOW_S, kept=kept,
                 early_start=early_start(truth, segments),
                 model_backchannels=sum(1 for v in verdicts if v == 0), window=window)


_SCORERS = {"pause": _score_pause, "turn_taking": _score_turn_taking,
            "interruption": _score_interruption, "backchannel": _score_backchannel}


# -- per situation --------------------------------------------------------------------------------

def summarize(scores: Sequence[Score]) -> dict:
    """TOR and latencies per situation, as FD-Bench reports them (mean) plus p50 (nearest rank)."""
    by = {k: [s for s in scores if s.kind == k] for k in KINDS}
    tt, pa, ir, bc = by["turn_taking"], by["pause"], by["interruption"], by["backchannel"]
    tt_lat = _latencies(tt)
    by_ending = {e: [s for s in tt if s.ending == e] for e in ENDINGS}
    answerable = tt + ir + bc
    tt_fdbench = [s.fdbench_latency_s for s in tt if s.fdbench_latency_s is not None]
    stops = [s.stop_latency_s for s in ir if s.stop_latency_s is not None]
    responses = [s.latency_s for s in ir if s.takeover == 1 and s.latency_s is not None]
    bc_speaking = [s for s in bc if s.model_speaking_at_cue]
    return {
        "turn_taking_tor": _mean([s.takeover for s in tt]),
        "turn_taking_latency_p50_s": _p50(tt_lat),
        "turn_taking_latency_mean_s": _mean(tt_lat),
        "turn_taking_latency_fdbench_p50_s": _p50(tt_fdbench),
        "turn_taking_early_start_rate": _mean([int(bool(s.early_start)) for s in tt]),
        "turn_taking_n": len(tt),
        "question_latency_p50_s": _p50(_latencies(by_ending["question"])),
        "question_tor": _mean([s.takeover for s in by_ending["question"]]),
        "question_n": len(by_ending["question"]),
        "statement_latency_p50_s": _p50(_latencies(by_ending["statement"])),
        "statement_tor": _mean([s.takeover for s in by_ending["statement"]]),
        "statement_n": len(by_ending["statement"]),
        "early_start_rate": _mean([int(bool(s.early_start)) for s in answerable]),
        "early_start_n": sum(1 for s in answerable if s.early_start),
        "pause_tor": _mean([s.takeover for s in pa]),
        "pause_onset_rate": _mean([int(bool(s.pause_onset)) for s in pa]),
        "pause_n": len(pa),
        "interruption_tor": _mean([s.takeover for s in ir]),
        "interruption_stop_latency_p50_s": _p50(stops),
        "interruption_stop_latency_mean_s": _mean(stops),
        "interruption_response_latency_p50_s": _p50(responses),
        "interruption_response_latency_mean_s": _mean(responses),
        "interruption_model_silent_at_onset": sum(1 for s in ir if s.model_speaking_at_cue is False),
        "interruption_n": len(ir),
        "backchannel_tor": _mean([s.takeover for s in bc]),
        "backchannel_keep_rate": _mean([int(bool(s.kept)) for s in bc_speaking]),
        "backchannel_stop_rate": _mean([int(bool(s.stopped)) for s in bc_speaking]),
        "backchannel_stop_latency_p50_s": _p50([s.stop_latency_s for s in bc_speaking if s.stopped]),
        "backchannel_model_backchannels": sum(s.model_backchannels or 0 for s in bc),
        "backchannel_model_silent_at_cue": sum(1 for s in bc if s.model_speaking_at_cue is False),
        "backchannel_n": len(bc),
    }


def _latencies(scores: Sequence[Score]) -> list[float]:
    """Turn-taking latencies where the model took the turn (TO = 1)."""
    return [s.latency_s for s in scores if s.takeover == 1 and s.latency_s is not None]


def _mean(values: Sequence[float | int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(sum(present) / len(present), 3) if present else None


def _p50(values: Sequence[float]) -> float | None:
    return round(percentile(list(values), 50), 3) if values else None
