"""The scripted conversation's ground truth and the metrics on a recording (no cluster needed)."""

from cluster.conversation import ConversationRecording, ReceivedAudio, Say, Script, Silence, measure
from cluster.conversation.script import SpeechSpan, Timeline
from protos.microturn.v1 import interaction_pb2 as pb

MS = 1_000_000


def test_render_finds_speech_pauses_and_turn_ends():
    track = Script([Silence(0.5),
                    Say('<speak>One two three, <break time="700ms"/> four five six.</speak>'),
                    Silence(1.0), Say("Stop.", barge_in=True)]).render()
    timeline = track.timeline
    first, second = timeline.speech
    assert 0.5 <= first.start / 16_000 < 0.6  # espeak's leading silence is not speech
    [(pause_start, pause_end)] = timeline.pauses
    assert 0.6 <= (pause_end - pause_start) / 16_000 <= 0.8
    assert first.start < pause_start < pause_end < first.end
    assert timeline.turn_ends == [first.end, second.end]
    assert timeline.barge_ins == [second.start]
    assert len(track.chunks()) * 3200 >= len(track.pcm16) > (len(track.chunks()) - 1) * 3200


def _audio(tick: int, speech: bool, received_ms: float, input_seq: int) -> ReceivedAudio:
    timing = pb.TickTiming(input_seq=input_seq, input_received_unix_ns=int((input_seq * 200 + 2) * MS),
                           tick_started_unix_ns=int((input_seq * 200 + 10) * MS),
                           tick_ended_unix_ns=int((input_seq * 200 + 30) * MS))
    message = pb.ServerMessage(seq=tick, tick=tick, audio=pb.AudioOut(audio_seq=tick, speech=speech, timing=timing))
    return ReceivedAudio(int(received_ms * MS), message)


def test_latencies_are_measured_from_the_real_time_moment_and_add_up():
    # The user speaks 0.2-1.0 s (a turn end at 1.0 s) and barges in at 3.1 s. Tick k uses chunk k
    # (ending at k * 200 ms) and arrives 32 ms later; the model speaks in ticks 9..15.
    timeline = Timeline(16_000, [SpeechSpan(0, "a", 3200, 16_000, True, False),
                                 SpeechSpan(1, "b", 49_600, 56_000, True, True)])
    recording = ConversationRecording("s", t0_ns=0, sample_rate=16_000, chunk_samples=3200, track_chunks=20,
                                      chunk_sent_ns=[(k + 1) * 200 * MS + MS for k in range(20)])
    recording.audio = [_audio(k, 9 <= k <= 15, k * 200 + 32, k) for k in range(1, 21)]
    closed = pb.ServerMessage(seq=99, closed=pb.SessionClosed(reason="done", ticks=20, late_chunks=1))
    recording.events = [(4000 * MS, closed)]

    metrics = measure(recording, timeline)
    assert metrics["ticks"] == 20 and metrics["late_chunks"] == 1
    assert metrics["turn_taking_latency_s"] == 0.832  # tick 9: 1.8 s + 32 ms - 1.0 s
    take, unanswered = metrics["turn_taking"]
    assert unanswered["latency_s"] is None  # the model did not take the floor after the barge-in
    assert take["breakdown_ms"]["heard"] == 800.0
    parts = sum(v for k, v in take["breakdown_ms"].items() if k != "total")
    assert abs(parts - take["breakdown_ms"]["total"]) < 0.5
    assert metrics["interruption_stop_latency_s"] == 0.132  # tick 16: 3.2 s + 32 ms - 3.1 s
    [stop] = metrics["interruptions"]
    assert stop["planned"] and stop["model_was_speaking"]
    assert metrics["model_speech_ticks"] == 7
