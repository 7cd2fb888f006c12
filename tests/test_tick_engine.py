"""The tick engine: rates and shapes, joins and leaves, late chunks, bad input, long sessions."""

import math

import numpy as np
import psutil
import pytest
import torch

from cluster.speech import synthesize
from foreground.engine.allocations import count_tensor_allocations
from foreground.engine.input_validation import InvalidInput
from foreground.engine.session_slots import SessionsFull, UnknownSession
from foreground.engine.tick_scheduler import TickScheduler
from foreground.model.family import ReferenceFamily
from foreground.engine.turn_policy import TurnEventKind, TurnPolicyConfig
from foreground.model.checkpoint import load_checkpoint, write_seeded_checkpoint

IN_SAMPLES, OUT_SAMPLES = 3200, 4800


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_checkpoint(write_seeded_checkpoint(tmp_path_factory.mktemp("ck"), "tiny", seed=0))


def _engine(model, slots=4, **turn):
    return TickScheduler(ReferenceFamily(model), max_slots=slots, turn=TurnPolicyConfig(**turn))


def _tone(freq=220.0, rate=16_000, amp=0.2) -> bytes:
    n = rate // 5
    t = np.arange(n) / rate
    return (amp * np.sin(2 * math.pi * freq * t) * 32767).astype("<i2").tobytes()


def test_every_session_gets_200ms_of_24khz_audio_each_tick(model):
    engine = _engine(model)
    for name in ("a", "b", "c"):
        engine.join(name)
    for _ in range(3):
        for name in ("a", "b", "c"):
            engine.submit_audio(name, _tone())
        outputs = engine.tick()
        assert [o.session_id for o in outputs] == ["a", "b", "c"]
        assert all(len(o.pcm16) == 2 * OUT_SAMPLES for o in outputs)
    assert {o.tick for o in outputs} == {2}


def test_24khz_input_is_accepted_and_resampled(model):
    engine = _engine(model)
    engine.join("hi-rate", input_rate=24_000)
    engine.submit_audio("hi-rate", _tone(rate=24_000))
    assert len(engine.tick()) == 1
    assert engine.slots.get("hi-rate").late_chunks == 0


def test_a_missing_chunk_becomes_silence_and_is_counted(model):
    engine = _engine(model)
    engine.join("a")
    engine.join("b")
    engine.tick()  # nobody has sent anything yet: not late, just not started
    assert engine.slots.get("b").late_chunks == 0
    for name in ("a", "b"):
        engine.submit_audio(name, _tone())
    engine.tick()
    engine.submit_audio("a", _tone())
    engine.tick()  # b sent nothing
    assert engine.slots.get("b").late_chunks == 1 and engine.slots.get("a").late_chunks == 0
    assert torch.count_nonzero(engine.audio.pcm16k[1]) == 0


def _speech_chunks(count: int) -> list[bytes]:
    """`count` 200 ms chunks of synthesised speech with no pause in them."""
    pcm = synthesize("the quick brown fox jumps over the lazy dog again and again", rate_wpm=200)
    pcm16 = (np.clip(pcm, -1, 1) * 32767).astype("<i2")
    start = int(np.argmax(np.abs(pcm16) > 1000))  # from the first sound on
    return [pcm16[start + k * IN_SAMPLES: start + (k + 1) * IN_SAMPLES].tobytes() for k in range(count)]


def test_a_session_behind_real_time_catches_up_in_a_pause(model):
    engine = _engine(model)
    engine.join("slipped")
    silence = bytes(2 * IN_SAMPLES)
    for chunk in (*_speech_chunks(2), silence, silence):  # a backlog: two chunks too many
        engine.submit_audio("slipped", chunk)
    engine.tick()
    engine.tick()  # speech is never skipped, even when behind
    assert engine.slots.get("slipped").skipped_chunks == 0
    engine.tick()  # behind and silent: one chunk is skipped to catch up
    record = engine.slots.get("slipped")
    assert record.skipped_chunks == 1 and record.state.queue_size == 0


def test_a_session_behind_under_a_steady_tone_catches_up_at_once(model):
    """A tone (or hum, or noise) never pauses: the VAD's "no speech" lets the session skip a
    chunk of it, instead of staying a tick late for the rest of its life."""
    engine = _engine(model)
    engine.join("hum")
    engine.submit_audio("hum", _tone())
    engine.tick()
    assert not engine.slots.get("hum").state.heard_speech
    engine.tick()  # the next chunk slips past this boundary: silence, counted late
    assert engine.slots.get("hum").late_chunks == 1
    for seq in (2, 3):  # ... and arrives with the one after it
        engine.submit_audio("hum", _tone(), seq=seq)
    outputs = engine.tick()
    record = engine.slots.get("hum")
    assert record.skipped_chunks == 1 and record.state.queue_size == 0
    assert outputs[0].input_seq == 3  # the newest: back on time


def test_a_backlog_of_speech_before_the_first_tick_is_kept(model):
    """What a client buffered while its session opened is played late rather than lost."""
    engine = _engine(model)
    engine.join("early")
    for chunk in _speech_chunks(3):
        engine.submit_audio("early", chunk)
    engine.tick()
    engine.tick()
    record = engine.slots.get("early")
    assert record.state.heard_speech and record.skipped_chunks == 0 and record.state.queue_size == 1


def test_a_flooding_client_loses_its_oldest_chunks_not_real_time(model):
    engine = _engine(model)
    engine.join("fast")
    for _ in range(6):
        engine.submit_audio("fast", _tone())
    engine.tick()
    record = engine.slots.get("fast")
    assert record.dropped_chunks == 2 and record.state.queue_size == 3


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"pcm16": b"\x00" * 6401}, "audio.pcm16"),
        ({"pcm16": b"\x00" * 6000}, "audio.pcm16"),
        ({"pcm16": b"\x00" * 6400, "sample_rate": 44_100}, "audio.sample_rate"),
    ],
)
def test_bad_audio_fails_naming_the_field_and_others_go_on(model, kwargs, field):
    engine = _engine(model)
    engine.join("bad")
    engine.join("good")
    with pytest.raises(InvalidInput) as err:
        engine.submit_audio("bad", **kwargs)
    assert err.value.field == field
    engine.submit_audio("good", _tone())
    outputs = engine.tick()
    assert [o.session_id for o in outputs] == ["bad", "good"]
    assert engine.slots.get("good").late_chunks == 0


def test_oversized_and_malformed_frames_are_refused(model):
    engine = _engine(model)
    engine.join("cam")
    with pytest.raises(InvalidInput, match="video"):
        engine.submit_video("cam", raw_rgb=b"\x00" * 12, width=5000, height=1)
    with pytest.raises(InvalidInput, match="video.raw.rgb"):
        engine.submit_video("cam", raw_rgb=b"\x00" * 10, width=2, height=2)
    engine.submit_video("cam", raw_rgb=bytes(range(48)), width=4, height=4)
    assert bool(engine.family.inputs.has_video[0])
    engine.tick()
    assert not bool(engine.family.inputs.has_video[0])  # a frame counts for one tick


def test_unknown_sessions_and_full_replicas(model):
    engine = _engine(model, slots=2)
    with pytest.raises(UnknownSession):
        engine.submit_audio("ghost", _tone())
    engine.join("a")
    engine.join("b")
    with pytest.raises(SessionsFull):
        engine.join("c")
    with pytest.raises(ValueError, match="already"):
        engine.join("b")
    engine.leave("a")
    assert engine.join("c").slot == 1


def test_leaving_moves_the_last_session_with_all_its_state(model):
    engine = _engine(model, slots=3)
    for name in ("a", "b", "c"):
        engine.join(name)
    for _ in range(4):
        for name in ("a", "b", "c"):
            engine.submit_audio(name, _tone(300 if name == "c" else 200))
        engine.tick()
    c_before = engine.slots.get("c")
    kv_before = engine.family.cache.k[0][2].clone()
    pos_before = int(engine.family.cache.next_pos[2])
    ticks_before = c_before.ticks
    engine.leave("a")
    c = engine.slots.get("c")
    assert c.slot == 0 and engine.slots.live == 2
    assert torch.equal(engine.family.cache.k[0][0], kv_before) and int(engine.family.cache.next_pos[0]) == pos_before
    assert c.ticks == ticks_before
    engine.join("d")  # takes slot 2, fresh
    assert engine.slots.get("d").slot == 2 and int(engine.family.cache.next_pos[2]) == 0
    for name in ("b", "c", "d"):
        engine.submit_audio(name, _tone())
    assert [o.session_id for o in engine.tick()] == ["c", "b", "d"]


def _chunks(pcm: np.ndarray) -> list[np.ndarray]:
    """16 kHz float speech as 200 ms chunks (the last one padded with silence)."""
    pcm = np.pad(pcm, (0, -len(pcm) % IN_SAMPLES))
    return [pcm[i : i + IN_SAMPLES] for i in range(0, len(pcm), IN_SAMPLES)]


def _pcm16(chunk: np.ndarray) -> bytes:
    return (np.clip(chunk, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.mark.timeout(120)
def test_speech_then_silence_gets_an_answer_and_a_barge_in_stops_it(model):
    engine = _engine(model, slots=2, policy="hybrid", silence_threshold_ms=600)
    engine.join("talker")
    ticks = _chunks(synthesize("Hello there, could you tell me the weather today?", sample_rate=16_000))
    onset = len(ticks) + 6
    stream = ticks + [np.zeros(IN_SAMPLES, np.float32)] * 6 + ticks
    timeline = []
    for tick, chunk in enumerate(stream):
        engine.submit_audio("talker", _pcm16(chunk))
        [out] = engine.tick()
        timeline.append((tick, out.speech, [(e.kind, e.cause) for e in out.events]))
    started = [t for t, _, ev in timeline if (TurnEventKind.MODEL_SPEECH_STARTED, "threshold") in ev]
    interrupted = [t for t, _, ev in timeline if (TurnEventKind.INTERRUPTED, "vad") in ev]
    assert started and len(ticks) <= started[0] <= len(ticks) + 4
    # silent within one tick of the onset; stopped once the speech outlasted a backchannel (4 ticks more)
    assert interrupted and onset + 4 <= interrupted[0] <= onset + 5
    speaking_ticks = [t for t, speech_out, _ in timeline if speech_out]
    assert speaking_ticks and all(started[0] <= t <= onset for t in speaking_ticks)


@pytest.fixture(scope="module")
def replies(model):
    """The default policy (`model`: the shipped detector decides) on real speech, two sessions of
    one engine: a statement, silence until the model has spoken for two ticks, then "Mm-hm."
    (ack) or a long barge-in (barge), then silence. Per session: the reply's onset tick and
    (speech, events, pcm16) per tick."""
    engine = _engine(model, slots=2, policy="model", head_calibrated=model.cfg.turn_head_calibrated)
    statement = _chunks(synthesize("I would like to book a table for two people tonight at eight."))
    said = {"ack": _chunks(synthesize("Mm-hm.")),
            "barge": _chunks(synthesize("Actually I would rather hear about the trains to Paris tomorrow morning."))}
    silence = [np.zeros(IN_SAMPLES, np.float32)]
    queued, onset, timeline = {n: list(statement) for n in said}, {}, {n: [] for n in said}
    for name in said:
        engine.join(name)
    for tick in range(80):
        for name in said:
            if not queued[name] and name not in onset and [o[0] for o in timeline[name][-2:]] == [True, True]:
                onset[name], queued[name] = tick, said[name] + silence * 6
            engine.submit_audio(name, _pcm16(queued[name].pop(0) if queued[name] else silence[0]))
        for out in engine.tick():
            timeline[out.session_id].append((out.speech, [(e.kind, e.cause, e.epoch) for e in out.events], out.pcm16))
        if len(onset) == len(said) and not any(queued.values()):
            break  # both replies and the silence after them are in
    assert set(onset) == set(said), "the model never took the floor after the statement"
    return onset, timeline


@pytest.mark.timeout(180)
def test_a_backchannel_keeps_the_floor_and_a_barge_in_stops_it(replies):
    onset, timeline = replies
    ack = timeline["ack"][onset["ack"]:]
    kinds = [[kind for kind, _, _ in events] for _, events, _ in ack]
    assert not any(TurnEventKind.INTERRUPTED in k or TurnEventKind.YIELDED in k for k in kinds[:8])
    heard = [i for i, k in enumerate(kinds) if TurnEventKind.BACKCHANNEL_HEARD in k]
    assert heard and heard[0] <= 6 and all(speech for speech, _, _ in ack[heard[0]:heard[0] + 3])  # resumed
    assert all(epoch == 0 for _, events, _ in timeline["ack"] for _, _, epoch in events)
    barge = timeline["barge"][onset["barge"]:]
    [heard] = [i for i, (_, events, _) in enumerate(barge) if (TurnEventKind.USER_SPEECH_STARTED, "head", 0) in events]
    stops = [i for i, (_, events, _) in enumerate(barge) if (TurnEventKind.INTERRUPTED, "head", 0) in events]
    assert heard <= 2 and stops and stops[0] == heard + 4  # 800 ms of speech after the tick it was heard in
    assert not any(speech for speech, _, _ in barge[heard:stops[0] + 1])  # silent from that very tick on


@pytest.mark.timeout(180)
def test_the_voice_plays_at_a_normal_level(replies):
    _, timeline = replies
    pcm = np.concatenate([np.frombuffer(pcm16, "<i2") for ticks in timeline.values()
                          for speech, _, pcm16 in ticks if speech]).astype(np.float64) / 32768
    rms_db, peak_db = 10 * np.log10(np.mean(pcm**2)), 20 * np.log10(np.abs(pcm).max())
    assert len(pcm) >= 8 * OUT_SAMPLES and -23 <= rms_db <= -17 and peak_db < -1, (rms_db, peak_db)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_thousand_ticks_of_one_session_keep_memory_flat(model):
    engine = _engine(model, slots=1, policy="vad", silence_threshold_ms=400)
    engine.join("long")
    chunks = [_tone(180), _tone(180), bytes(2 * IN_SAMPLES), bytes(2 * IN_SAMPLES), bytes(2 * IN_SAMPLES)]
    process = psutil.Process()
    rss = []
    allocations = 0
    for tick in range(2100):
        engine.submit_audio("long", chunks[tick % len(chunks)])
        if tick % 500 == 250:
            with count_tensor_allocations() as report:
                engine.tick()
            allocations += report.count
        else:
            engine.tick()
        if tick in (300, 2099):  # after the first counted tick (the counter loads code once)
            rss.append(process.memory_info().rss)
    assert allocations == 0
    assert rss[1] <= rss[0] * 1.01
    tokens = 2100 * model.cfg.tokens_per_tick
    assert int(engine.family.cache.next_pos[0]) == tokens  # the ring wrapped ~100 times
    entries = sorted(engine.family.cache.entry_pos[0].tolist())
    sinks, window = model.cfg.attention_sinks, model.cfg.attention_window
    assert entries == list(range(sinks)) + list(range(tokens - window, tokens))


def test_the_delegate_head_hands_a_job_to_the_sink(tmp_path):
    model = load_checkpoint(write_seeded_checkpoint(tmp_path, "tiny", seed=0))
    model.interaction.delegate_head.bias.fill_(10.0)  # a head that always wants help
    engine = TickScheduler(ReferenceFamily(model), max_slots=2, turn=TurnPolicyConfig(delegate_cooldown_ticks=5))
    engine.join("asker")
    engine.submit_text("asker", "what is the weather in Paris?")
    delegated = [out.delegated_job_id for _ in range(6) for out in engine.tick()]
    jobs = engine.jobs.jobs
    assert len(jobs) == 2 and delegated[0] == jobs[0].job_id and delegated[5] == jobs[1].job_id
    assert jobs[0].session_id == "asker" and jobs[0].epoch == 0
    assert jobs[0].conversation[0].text == "what is the weather in Paris?"


def _text_ids(engine, slot=0):
    return engine.family.inputs.text_ids[slot].tolist()


def test_results_are_woven_at_a_tick_boundary_before_the_clients_text(model):
    from foreground.engine.tick_scheduler import WovenResult
    from foreground.model.config import PAD_ID

    engine = _engine(model)
    engine.join("s")
    engine.submit_text("s", "hi")
    engine.submit_result("s", "abc", WovenResult("ev-1", "job-1", 0, 123))
    first = engine.tick()[0]
    assert _text_ids(engine) == [ord("a"), ord("b")] and [w.event_id for w in first.woven] == ["ev-1"]
    second = engine.tick()[0]
    assert _text_ids(engine) == [ord("c"), ord("h")] and second.woven == []
    engine.tick()
    assert _text_ids(engine) == [ord("i"), PAD_ID]


def test_a_result_waits_for_the_user_at_most_weave_max_wait_ms(model):
    """A speech detector stuck on (steady background sound) must not hold results forever."""
    from foreground.engine.tick_scheduler import WovenResult
    from foreground.model.config import PAD_ID

    engine = _engine(model, weave_max_wait_ms=1000)  # 5 ticks
    engine.join("s")
    turn = engine.slots.get("s").state.turn
    engine.submit_result("s", "late", WovenResult("ev-1", "j", 0, 1))
    woven, text = [], []
    for _ in range(7):
        turn.user_speaking = True  # as the detector says each tick
        woven.append([w.event_id for w in engine.tick()[0].woven])
        text.append(_text_ids(engine))
    assert woven == [[]] * 5 + [["ev-1"], []]
    assert text == [[PAD_ID, PAD_ID]] * 5 + [[ord("l"), ord("a")], [ord("t"), ord("e")]]


def test_an_older_epochs_result_still_waits_for_the_user(model):
    from foreground.engine.tick_scheduler import WovenResult

    engine = _engine(model, weave_max_wait_ms=200)
    engine.join("s")
    turn = engine.slots.get("s").state.turn
    engine.submit_result("s", "stale", WovenResult("ev-1", "j", 0, 1))
    turn.epoch = 1  # the user barged in since the job started
    for _ in range(4):
        turn.user_speaking = True
        assert engine.tick()[0].woven == []
    turn.user_speaking = False
    assert [w.event_id for w in engine.tick()[0].woven] == ["ev-1"]


def test_results_wait_while_the_user_speaks_unless_urgent(model):
    from foreground.engine.tick_scheduler import WovenResult
    from foreground.model.config import PAD_ID

    engine = _engine(model)
    engine.join("s")
    engine.slots.get("s").state.turn.user_speaking = True
    engine.submit_result("s", "later", WovenResult("ev-1", "j", 0, 1))
    engine.tick()
    assert _text_ids(engine) == [PAD_ID, PAD_ID]
    engine.slots.get("s").state.turn.user_speaking = True
    engine.submit_result("s", "now", WovenResult("ev-2", "j", 0, 1), urgent=True)
    out = engine.tick()[0]
    assert _text_ids(engine) == [ord("n"), ord("o")] and [w.event_id for w in out.woven] == ["ev-2"]
