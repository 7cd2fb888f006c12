"""`microturn bench duplex`: FD-Bench v1's rules on hand-made timelines with known answers, the
speech detectors on hand-made recordings, backgrounds at their SNR, and (slow) 2 short scenarios
through a live cluster."""

import asyncio
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cluster.bench.duplex.metrics import Segment, Truth, crop, score, summarize, takeover
from cluster.bench.duplex.scenarios import ROUND, make_scenarios, render, voiced_mask, with_background
from cluster.bench.duplex.speech_out import agreement, analyse, count_words, energy_spans, events_match, with_words
from cluster.conversation import ConversationRecording, ReceivedAudio, SpeechSpan, Timeline, Track
from protos.microturn.v1 import interaction_pb2 as pb

MS = 1_000_000


def seg(start: float, end: float, words: int) -> Segment:
    return Segment(start, end, words)


# -- the takeover rule ------------------------------------------------------------------------

def test_no_output_is_no_takeover():
    assert takeover([]) == 0
    assert takeover([seg(1.0, 1.1, 0)]) == 0  # audio without a word: FD-Bench reads ASR words


def test_takeover_edges_at_one_second_and_three_words():
    assert takeover([seg(2.0, 2.999, 3)]) == 0  # < 1 s with <= 3 words: not a takeover
    assert takeover([seg(2.0, 2.999, 4)]) == 1  # a 4th word makes it one
    assert takeover([seg(2.0, 3.0, 3)]) == 1  # exactly 1 s: FD-Bench tests `duration < 1`
    assert takeover([seg(1.3, 2.3, 1)]) == 1  # 2.3 - 1.3 is 0.9999999999999998 in floats: still 1 s
    assert takeover([seg(2.0, 2.4, 1), seg(2.6, 2.9, 1)]) == 0  # spans are first start .. last end
    assert takeover([seg(2.0, 2.4, 1), seg(3.0, 3.3, 1)]) == 1  # two blurts 1.3 s apart
    assert takeover([seg(2.0, 2.5, 2), seg(2.6, 2.9, 2)]) == 1  # 4 words in 0.9 s


# -- smooth turn-taking -----------------------------------------------------------------------

def test_turn_taking_latency_is_clamped_at_zero_and_only_counts_takeovers():
    truth = Truth("turn_taking", floor_start_s=0.5, turn_end_s=3.0)
    late = score(truth, [seg(3.9, 6.0, 5)])
    early = score(truth, [seg(2.7, 5.0, 6)])  # started before the turn end
    blip = score(truth, [seg(3.4, 3.8, 1)])  # < 1 s, 1 word: no takeover, no latency
    silent = score(truth, [])
    assert (late.takeover, late.latency_s) == (1, pytest.approx(0.9))
    assert (early.takeover, early.latency_s) == (1, 0.0)
    assert (blip.takeover, blip.latency_s) == (0, None)
    assert (silent.takeover, silent.latency_s) == (0, None)

    summary = summarize([late, early, blip, silent])
    assert summary["turn_taking_tor"] == 0.5
    assert summary["turn_taking_latency_mean_s"] == pytest.approx(0.45)  # (0.9 + 0) / 2: blip excluded
    assert summary["turn_taking_latency_p50_s"] == 0.0  # nearest rank on [0, 0.9]
    assert summary["turn_taking_n"] == 4


def test_a_blurt_inside_the_users_turn_is_an_early_start_not_an_answer_at_zero():
    truth = Truth("turn_taking", floor_start_s=0.5, turn_end_s=3.0)
    blurt_then_answer = score(truth, [seg(1.6, 2.0, 1), seg(3.9, 6.0, 5)])  # gap between two sentences
    only_blurt = score(truth, [seg(1.6, 2.9, 4)])  # ended before the turn end: never answered
    assert (blurt_then_answer.takeover, blurt_then_answer.latency_s) == (1, pytest.approx(0.9))
    assert blurt_then_answer.early_start and blurt_then_answer.fdbench_latency_s == 0.0  # FD-Bench's clamp
    assert (only_blurt.takeover, only_blurt.latency_s, only_blurt.early_start) == (0, None, True)
    summary = summarize([blurt_then_answer, only_blurt])
    assert summary["turn_taking_latency_p50_s"] == pytest.approx(0.9)
    assert summary["turn_taking_latency_fdbench_p50_s"] == 0.0
    assert summary["turn_taking_early_start_rate"] == 1.0 and summary["turn_taking_tor"] == 0.5


def test_questions_and_statements_are_reported_apart():
    def tt(ending: str, answer_at: float | None) -> object:
        truth = Truth("turn_taking", floor_start_s=0.5, turn_end_s=3.0, ending=ending)
        return score(truth, [seg(answer_at, answer_at + 2.0, 5)] if answer_at else [])

    scores = [tt("question", 4.2), tt("question", 4.0), tt("question", None), tt("statement", 3.2),
              tt("statement", 3.3)]
    assert [s.ending for s in scores] == ["question"] * 3 + ["statement"] * 2
    summary = summarize(scores)
    assert summary["question_latency_p50_s"] == pytest.approx(1.0)  # nearest rank on [1.0, 1.2]
    assert summary["statement_latency_p50_s"] == pytest.approx(0.2)
    assert summary["turn_taking_latency_p50_s"] == pytest.approx(0.3)  # all four takes: [0.2, 0.3, 1.0, 1.2]
    assert (summary["question_n"], summary["statement_n"]) == (3, 2)
    assert (summary["question_tor"], summary["statement_tor"]) == (pytest.approx(0.667), 1.0)


def test_early_starts_count_over_every_turn_the_model_should_answer():
    blurt = [seg(1.6, 2.0, 1), seg(3.9, 6.0, 5)]  # model speech began inside the user's turn
    answered = [seg(3.9, 6.0, 5)]
    cue = {"cue_start_s": 5.0, "cue_end_s": 5.4}
    scores = [score(Truth("turn_taking", 0.5, 3.0, ending="statement"), blurt),
              score(Truth("interruption", 0.5, 3.0, **cue), blurt),
              score(Truth("backchannel", 0.5, 3.0, **cue), answered),
              score(Truth("turn_taking", 0.5, 3.0, ending="question"), answered),
              score(Truth("pause", 0.5, 3.0, pauses=((1.5, 2.2),)), blurt)]  # pauses are pause_onset's
    assert [s.early_start for s in scores] == [True, True, False, False, None]
    assert score(Truth("turn_taking", 0.5, 3.0), [seg(0.2, 0.4, 1)]).early_start is False  # before the floor
    summary = summarize(scores)
    assert summary["early_start_rate"] == 0.5 and summary["early_start_n"] == 2
    assert summary["turn_taking_early_start_rate"] == 0.5


# -- pause handling ---------------------------------------------------------------------------

def test_pause_takeover_is_judged_before_the_turn_end_only():
    truth = Truth("pause", floor_start_s=0.5, turn_end_s=7.0, pauses=((2.0, 2.9), (4.0, 4.5)))
    answered = score(truth, [seg(7.9, 10.0, 5)])  # answering the real turn end is not a pause takeover
    blurt = score(truth, [seg(2.8, 3.2, 1), seg(7.9, 10.0, 5)])  # cut short by the VAD: FD-Bench forgives it
    taken = score(truth, [seg(2.8, 4.0, 3)])
    assert (answered.takeover, answered.pause_onset) == (0, False)
    assert (blurt.takeover, blurt.pause_onset) == (0, True)
    assert (taken.takeover, taken.pause_onset) == (1, True)
    summary = summarize([answered, blurt, taken])
    assert summary["pause_tor"] == pytest.approx(0.333)
    assert summary["pause_onset_rate"] == pytest.approx(0.667)


# -- user interruption ------------------------------------------------------------------------

def test_interruption_stop_latency_and_response_after_the_interruption():
    truth = Truth("interruption", floor_start_s=0.5, turn_end_s=3.0, cue_start_s=5.0, cue_end_s=6.0)
    stopped = score(truth, [seg(3.9, 5.25, 3), seg(6.8, 9.0, 6)])
    assert stopped.stop_latency_s == pytest.approx(0.25)
    assert stopped.model_speaking_at_cue
    assert (stopped.takeover, stopped.latency_s) == (1, pytest.approx(0.8))

    kept_talking = score(truth, [seg(3.9, 8.9, 12)])  # never stopped: the crop starts at the cue end
    assert kept_talking.stop_latency_s == pytest.approx(3.9)
    assert (kept_talking.takeover, kept_talking.latency_s) == (1, 0.0)
    assert kept_talking.window == [seg(6.0, 8.9, 7)]  # 12 words * 2.9 / 5.0 = 6.96 -> 7

    not_yet = score(truth, [seg(5.2, 5.4, 0)])  # the model had not started when the user cut in
    assert not_yet.stop_latency_s is None and not_yet.model_speaking_at_cue is False
    assert not_yet.takeover == 0

    summary = summarize([stopped, kept_talking, not_yet])
    assert summary["interruption_stop_latency_p50_s"] == 0.25
    assert summary["interruption_stop_latency_mean_s"] == pytest.approx(2.075)
    assert summary["interruption_tor"] == pytest.approx(0.667)
    assert summary["interruption_response_latency_mean_s"] == pytest.approx(0.4)
    assert summary["interruption_model_silent_at_onset"] == 1


def test_crop_keeps_the_share_of_words_after_the_cut():
    assert crop([seg(1.0, 2.0, 4), seg(3.0, 4.0, 2)], 1.5) == [seg(1.5, 2.0, 2), seg(3.0, 4.0, 2)]
    assert crop([seg(1.0, 2.0, 4)], 2.0) == []


# -- backchannel ------------------------------------------------------------------------------

def test_backchannel_stop_and_fd_bench_backchannel_tor():
    truth = Truth("backchannel", floor_start_s=0.5, turn_end_s=4.0, cue_start_s=6.0, cue_end_s=6.4)
    yielded = score(truth, [seg(4.9, 6.3, 3), seg(7.1, 9.0, 5)])  # stopped 0.3 s into "mm-hm"
    kept_on = score(truth, [seg(4.9, 9.9, 12)])  # kept the floor (a 5 s turn)
    model_bc = score(truth, [seg(2.0, 2.6, 1), seg(4.9, 9.9, 12)])  # a model "mm-hm" while the user spoke
    took_over = score(truth, [seg(2.0, 3.2, 3), seg(4.9, 9.9, 12)])  # 1.2 s with 3 words: a takeover
    long_silent = score(truth, [seg(1.0, 4.5, 0)])  # > 3 s is formal speech whatever the words
    assert (yielded.stopped, yielded.stop_latency_s, yielded.takeover) == (True, pytest.approx(0.3), 0)
    assert (kept_on.stopped, kept_on.stop_latency_s, kept_on.takeover) == (False, pytest.approx(3.9), 0)
    assert (yielded.kept, kept_on.kept) == (False, True)  # speaking at cue end + 0.5 s = 6.9 s?
    assert (model_bc.takeover, model_bc.model_backchannels) == (0, 1)
    assert took_over.takeover == 1
    assert long_silent.takeover == 1

    summary = summarize([yielded, kept_on, model_bc, took_over])
    assert summary["backchannel_tor"] == 0.25
    assert summary["backchannel_stop_rate"] == 0.25
    assert summary["backchannel_stop_latency_p50_s"] == 0.3
    assert summary["backchannel_model_backchannels"] == 1
    assert summary["backchannel_keep_rate"] == 0.75  # yielded is the one that let go


def test_backchannel_keep_at_half_a_second_after_the_acknowledgement_ends():
    truth = Truth("backchannel", floor_start_s=0.5, turn_end_s=4.0, cue_start_s=6.0, cue_end_s=6.4)
    held = score(truth, [seg(4.9, 6.2, 3), seg(6.6, 9.0, 6)])  # audio held 0.4 s on the onset, then resumed
    late = score(truth, [seg(4.9, 6.2, 3), seg(7.0, 9.0, 5)])  # silent at 6.9 s: took the turn anew, not kept
    ended = score(truth, [seg(4.9, 6.8, 5)])  # finished during the 0.5 s
    silent = score(truth, [seg(4.9, 5.9, 3), seg(6.5, 9.0, 6)])  # not speaking at the onset: not judged
    assert (held.kept, held.stopped) == (True, True)  # a hold ends the playing segment: `stopped` counts it
    assert (late.kept, ended.kept, silent.kept) == (False, False, None)
    summary = summarize([held, late, ended, silent])
    assert summary["backchannel_keep_rate"] == pytest.approx(0.333)
    assert summary["backchannel_model_silent_at_cue"] == 1


def test_summary_has_every_situation_even_when_empty():
    summary = summarize([])
    for key in ("turn_taking_latency_p50_s", "turn_taking_tor", "interruption_stop_latency_p50_s",
                "interruption_tor", "pause_tor", "backchannel_tor", "question_latency_p50_s",
                "statement_latency_p50_s", "backchannel_keep_rate", "early_start_rate"):
        assert summary[key] is None


# -- the model's speech, read from a recording ------------------------------------------------

def _audio(seq: int, speech: bool, received_ms: float, level: int = 2000) -> ReceivedAudio:
    pcm = (np.full(4800, level if speech else 0, np.int16) * np.where(np.arange(4800) % 2, 1, -1)).astype("<i2")
    message = pb.ServerMessage(seq=seq, tick=100 + seq, audio=pb.AudioOut(
        audio_seq=seq, speech=speech, pcm16=pcm.tobytes(), timing=pb.TickTiming(input_seq=seq)))
    return ReceivedAudio(int(received_ms * MS), message)


def _turn(seq: int, kind: str, received_ms: float) -> tuple[int, pb.ServerMessage]:
    return int(received_ms * MS), pb.ServerMessage(seq=1000 + seq, tick=100 + seq, turn=pb.TurnEvent(
        kind=pb.TurnEvent.Kind.Value(kind), cause="threshold"))


def test_energy_and_flags_agree_on_a_hand_made_recording():
    recording = ConversationRecording("s", t0_ns=0, sample_rate=16_000, chunk_samples=3200, track_chunks=10)
    recording.audio = [_audio(k, 4 <= k <= 6, k * 200 + 30) for k in range(1, 10)]
    recording.events = [_turn(4, "MODEL_SPEECH_STARTED", 830), _turn(7, "MODEL_SPEECH_STOPPED", 1430),
                        (int(900 * MS), pb.ServerMessage(seq=5, tick=105, text=pb.TextOut(text="\ufffd\ufffd")))]
    speech = analyse(recording)
    assert speech.flags == [(0.83, 1.43)]
    assert speech.energy == [(0.83, 1.43)]
    check = agreement(speech.energy, speech.flags)
    assert (check["matched"], check["agreed"]) == (1, 1)
    assert events_match(speech) == {"events_checked": 2, "events_matched": 2}
    segments, sources = with_words(speech.energy, speech.texts)
    assert segments == [Segment(0.83, 1.43, 2)] and sources == ["estimate"]  # 0.6 s * 2.5 = 1.5 -> 2


def _recording(levels: list[int]) -> ConversationRecording:
    """One AudioOut per 200 ms tick at each level (RMS in int16 units; 0 is digital silence)."""
    recording = ConversationRecording("s", t0_ns=0, sample_rate=16_000, chunk_samples=3200, track_chunks=10)
    recording.audio = [_audio(k + 1, level > 0, (k + 1) * 200, level) for k, level in enumerate(levels)]
    return recording


def test_energy_detection_is_relative_to_the_output_level_and_splits_on_a_hold():
    loud, quiet = 3300, 73  # about -20 and -53 dBFS RMS: the engine's output level now and before
    for level in (loud, quiet):
        spans = energy_spans(_recording([0, level, level, 0, level, level, 0]))  # one silent tick: a hold
        assert spans == [(0.4, 0.8), (1.0, 1.4)]
    ducked = energy_spans(_recording([0, loud, loud, loud // 100, loud, 0]))  # held 40 dB down, not zeroed
    assert ducked == [(0.4, 0.8), (1.0, 1.2)]
    assert energy_spans(_recording([0, loud, loud // 100, loud]), threshold_dbfs=-66.0) == [(0.4, 1.0)]  # fixed


def test_words_come_from_text_only_when_it_holds_words():
    assert count_words("well, that is a fair question") == 6
    assert count_words("\ufffd\ufffdR\ufffd\ufffdk\ufffd$") is None  # the seeded model's junk bytes
    assert count_words("   ") is None
    segments, sources = with_words([(1.0, 2.0)], [(1.05, "hello there "), (1.25, "friend")])
    assert segments == [Segment(1.0, 2.0, 3)] and sources == ["text"]


# -- scenarios --------------------------------------------------------------------------------

def test_scenarios_are_seeded_and_pause_turns_are_long_with_real_pauses():
    first = make_scenarios(10, seed=3)
    again = make_scenarios(10, seed=3)
    assert [s.script for s in first] == [s.script for s in again]
    assert [(s.kind, s.ending) for s in first] == list(ROUND) * 2
    assert [s.ending for s in first[:5]] == [None, "question", None, "statement", None]
    assert make_scenarios(10, seed=4) != first
    forty = make_scenarios(40)
    for kind, ending in ROUND:  # 8 of each, every kind meeting every test voice
        of_kind = [s for s in forty if (s.kind, s.ending) == (kind, ending)]
        assert len(of_kind) == 8 and len({s.voice for s in of_kind}) == 6
    pause = render(first[0])
    truth = pause.truth
    assert truth.turn_end_s - truth.floor_start_s > 5.0
    assert len(truth.pauses) == len(first[0].pause_breaks_s) >= 2
    for (a, b), scripted in zip(truth.pauses, first[0].pause_breaks_s, strict=True):
        # measured on the audio: the voice's own phrase-final lengthening and fades move it a little
        assert 0.4 <= scripted <= 1.0 and abs((b - a) - scripted) < 0.2
    cue = render(first[2]).truth  # an interruption: after the context turn, with a gap for the model
    assert cue.cue_start_s - cue.turn_end_s > 1.5


def test_every_kind_renders_with_a_festival_voice():
    """festival ignores SSML breaks (cluster.synthesizers stretches its comma gaps instead): the
    truth must still find the scripted pauses, the turn end and the cue."""
    for s in make_scenarios(5, seed=2, voices=("festival:kal_diphone",)):
        truth = render(s).truth
        assert 0.5 <= truth.floor_start_s < truth.turn_end_s and truth.ending == s.ending
        if s.kind == "pause":
            assert len(truth.pauses) == len(s.pause_breaks_s) >= 2
            for (a, b), scripted in zip(truth.pauses, s.pause_breaks_s, strict=True):
                assert abs((b - a) - scripted) < 0.2
        if s.kind in ("interruption", "backchannel"):
            assert truth.cue_start_s - truth.turn_end_s > 1.5 and truth.cue_end_s > truth.cue_start_s
        else:
            assert truth.cue_start_s is None


# -- backgrounds ------------------------------------------------------------------------------

def _speech_track(rate: int = 16_000) -> Track:
    """1 s silence, 2 s of "speech" with a 0.5 s pause in it, 1 s silence; its timeline."""
    t = np.arange(2 * rate) / rate
    voice = (0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    voice[rate // 2: rate] = 0.0  # the pause
    pcm = np.concatenate([np.zeros(rate), voice, np.zeros(rate)])
    span = SpeechSpan(1, "x", rate, 3 * rate, True, False, ((int(1.5 * rate), 2 * rate),))
    return Track(np.round(pcm * 32767).astype(np.int16), rate, Timeline(rate, [span]))


@pytest.mark.parametrize("kind", ["white", "pink", "hum", "babble"])
def test_background_is_mixed_at_the_requested_snr_over_the_whole_track(kind):
    clean = _speech_track()
    clips = [np.sin(np.linspace(0, 400 * (k + 1), 8000)).astype(np.float32) for k in range(3)]
    babble = clips if kind == "babble" else None
    for snr_db in (20.0, 10.0):
        noisy = with_background(clean, kind, snr_db, np.random.default_rng([0, 7]), babble)
        assert noisy.timeline is clean.timeline and noisy.pcm16.dtype == np.int16
        speech = clean.pcm16.astype(np.float64)
        added = noisy.pcm16.astype(np.float64) - speech
        voiced = voiced_mask(clean)
        assert voiced.sum() == 1.5 * 16_000  # the pause is not speech
        measured = 20 * np.log10(np.sqrt(np.mean(speech[voiced] ** 2)) / np.sqrt(np.mean(added ** 2)))
        assert measured == pytest.approx(snr_db, abs=0.5)
        assert np.sqrt(np.mean(added[:16_000] ** 2)) > 0  # the silences carry the background too
    again = with_background(clean, kind, 20.0, np.random.default_rng([0, 7]), babble)
    assert np.array_equal(again.pcm16, with_background(clean, kind, 20.0, np.random.default_rng([0, 7]),
                                                       babble).pcm16)


def test_noise_is_seeded_per_scenario_and_keeps_the_clean_truth():
    scenario = make_scenarios(2, seed=5)[1]
    clean, noisy = render(scenario), render(scenario, "white", 20.0, seed=5)
    assert noisy.truth == clean.truth and noisy.truth.ending == "question"
    assert not np.array_equal(noisy.track.pcm16, clean.track.pcm16)
    assert np.array_equal(render(scenario, "white", 20.0, seed=5).track.pcm16, noisy.track.pcm16)
    assert not np.array_equal(render(scenario, "white", 20.0, seed=6).track.pcm16, noisy.track.pcm16)
    with pytest.raises(ValueError, match="noise must be one of"):
        render(scenario, "rain")


# -- end to end -------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_duplex_runs_two_scenarios_against_a_live_cluster(ray_cluster, redis_server, tmp_path):
    from cluster.bench.duplex import run_duplex
    from cluster.config import load_config

    config = load_config(redis__url=redis_server.url, serve__grpc_port=0,
                         foreground__num_cpus=0.1, ray__address=ray_cluster)
    result = asyncio.run(run_duplex(config, scenarios=2, seed=1, policy="hybrid", runs_root=tmp_path))

    for key in ("turn_taking_latency_p50_s", "turn_taking_tor", "interruption_stop_latency_p50_s",
                "interruption_tor", "pause_tor", "backchannel_tor", "scenarios", "policy", "voices",
                "question_latency_p50_s", "statement_latency_p50_s", "backchannel_keep_rate", "early_start_rate",
                "noise", "snr_db",
                "speech_source", "word_source", "turn_taking_breakdown_ms", "speech_agreement"):
        assert key in result
    assert result["scenarios"] == 2 and result["kinds"] == {"pause": 1, "turn_taking": 1}
    assert result["errors"] == []
    assert result["turn_taking_tor"] == 1.0  # the model answers a turn end
    assert 0.0 <= result["turn_taking_latency_p50_s"] < 2.0
    breakdown = result["turn_taking_breakdown_ms"]
    assert set(breakdown["causes"]) <= {"head", "threshold"}  # trained detector, or its fallback
    if set(breakdown["causes"]) == {"threshold"}:
        assert breakdown["silence_threshold"] == 600.0
    json.dumps(result)

    run_dir = Path(result["run_dir"])
    assert run_dir.parent == tmp_path and run_dir.name.startswith("bench-")
    rows = list(csv.DictReader((run_dir / "scenarios.csv").open()))
    assert [r["kind"] for r in rows] == ["pause", "turn_taking"]
    assert (run_dir / "summary.md").read_text().startswith("# bench duplex")
    assert (run_dir / "timelines.png").stat().st_size > 0  # matplotlib is a dependency
    assert json.loads((run_dir / "summary.json").read_text())["scenarios"] == 2
    for row in rows:
        assert (run_dir / row["name"] / "output.wav").stat().st_size > 0
        assert (run_dir / row["name"] / "events.jsonl").stat().st_size > 0
