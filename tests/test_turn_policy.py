"""Turn policies on hand-made VAD and head signals: who takes the floor, when, and why."""

from foreground.engine.turn_policy import (
    TurnEventKind as K,
    TurnPolicy,
    TurnPolicyConfig,
    TurnState,
    resolve_policy,
)

SPEECH, SILENCE = [0.9] * 6, [0.05] * 6
HEAD_LISTEN, HEAD_SPEAK = [2.0, -2.0, -2.0], [-2.0, 2.0, -2.0]


def _run(policy, state, ticks, head=HEAD_LISTEN, delegate=-5.0):
    return [policy.decide(state, i, vad, head, delegate) for i, vad in enumerate(ticks)]


def _kinds(decision):
    return [(e.kind, e.cause) for e in decision.events]


def test_vad_policy_takes_the_floor_after_the_silence_threshold():
    policy = TurnPolicy(TurnPolicyConfig(policy="vad", silence_threshold_ms=600))
    state = TurnState()
    decisions = _run(policy, state, [SPEECH] * 3 + [SILENCE] * 5)
    speaking = [d.speak for d in decisions]
    # A silent tick is 200 ms of silence: 600 ms is reached in the 3rd silent tick.
    assert speaking == [False] * 5 + [True] * 3
    assert (K.MODEL_SPEECH_STARTED, "threshold") in _kinds(decisions[5])
    assert (K.USER_SPEECH_STOPPED, "vad") in _kinds(decisions[3])


def _speaking(policy, head=HEAD_LISTEN):
    """A state in which the model has just taken the floor (after the user's turn)."""
    state = TurnState()
    _run(policy, state, [SPEECH, SILENCE, SILENCE], head=head)
    assert state.model_speaking
    return state


ONSET = [0.1, 0.1, 0.1, 0.95, 0.97, 0.9]  # the user starts late in the tick


def test_a_barge_in_silences_the_model_at_once_and_stops_it_after_backchannel_max_ms():
    policy = TurnPolicy(TurnPolicyConfig(policy="hybrid", silence_threshold_ms=200, backchannel_max_ms=600))
    state = _speaking(policy, HEAD_SPEAK)
    ticks = [ONSET, SPEECH, SPEECH, SPEECH, SPEECH, SPEECH]
    decisions = [policy.decide(state, 3 + i, vad, HEAD_SPEAK, -5.0) for i, vad in enumerate(ticks)]
    assert [d.speak for d in decisions] == [False] * 6  # silent from the onset tick
    assert [state.held_ticks, state.model_speaking] == [0, False]
    # 3 ticks after the onset's (600 ms): still a possible backchannel; 4 (800 ms): a barge-in
    assert [(K.INTERRUPTED, "vad") in _kinds(d) for d in decisions] == [False] * 4 + [True, False]
    assert (K.MODEL_SPEECH_STOPPED, "vad") in _kinds(decisions[4]) and state.epoch == 1
    assert (K.USER_SPEECH_STARTED, "vad") in _kinds(decisions[0])


def test_a_backchannel_holds_the_floor_and_the_model_resumes_in_the_same_epoch():
    policy = TurnPolicy(TurnPolicyConfig(policy="vad", silence_threshold_ms=200))
    state = _speaking(policy)
    ticks = [ONSET, SPEECH, SILENCE, SILENCE]
    decisions = [policy.decide(state, 3 + i, vad, HEAD_LISTEN, -5.0) for i, vad in enumerate(ticks)]
    assert [d.speak for d in decisions] == [False, False, True, True]
    assert state.model_speaking and state.epoch == 0 and state.held_ticks == 0
    assert _kinds(decisions[2]) == [(K.USER_SPEECH_STOPPED, "vad"), (K.BACKCHANNEL_HEARD, "vad")]
    assert not any(e.kind in (K.INTERRUPTED, K.MODEL_SPEECH_STOPPED) for d in decisions for e in d.events)
    assert not state.user_spoke  # an acknowledgement is not a turn the model must answer


def test_the_model_policy_holds_on_the_detector_and_zero_turns_the_hold_off():
    talk, quiet = [5.0, -9.0], [-5.0, -3.0]
    policy = TurnPolicy(TurnPolicyConfig(policy="model", head_calibrated=True))
    state = TurnState(model_speaking=True)
    held = policy.decide(state, 0, SPEECH, HEAD_LISTEN, -5.0, detector_logits=talk)
    resumed = policy.decide(state, 1, SPEECH, HEAD_LISTEN, -5.0, detector_logits=quiet)  # the VAD alone: no
    assert [held.speak, resumed.speak] == [False, True] and state.epoch == 0
    assert (K.BACKCHANNEL_HEARD, "head") in _kinds(resumed)
    at_once = TurnPolicy(TurnPolicyConfig(policy="model", head_calibrated=True, backchannel_max_ms=0))
    state = TurnState(model_speaking=True)
    stop = at_once.decide(state, 0, SPEECH, HEAD_LISTEN, -5.0, detector_logits=talk)
    assert not stop.speak and (K.INTERRUPTED, "head") in _kinds(stop) and state.epoch == 1


def test_under_the_model_policy_sound_the_vad_does_not_call_speech_is_not_the_user():
    talk = [5.0, -9.0]
    policy = TurnPolicy(TurnPolicyConfig(policy="model", head_calibrated=True))
    state = TurnState(model_speaking=True)
    decisions = [policy.decide(state, i, SILENCE, HEAD_LISTEN, -5.0, detector_logits=talk) for i in range(6)]
    assert all(d.speak for d in decisions) and not state.user_speaking and state.epoch == 0
    assert not any(e.kind in (K.USER_SPEECH_STARTED, K.INTERRUPTED) for d in decisions for e in d.events)


def test_the_length_cap_applies_once_a_hold_resolves():
    policy = TurnPolicy(TurnPolicyConfig(policy="vad", silence_threshold_ms=200, max_turn_ticks=3))
    state = _speaking(policy)  # turn tick 0 was the take-over
    decisions = [policy.decide(state, 3 + i, vad, HEAD_LISTEN, -5.0)
                 for i, vad in enumerate([SILENCE, ONSET, SPEECH, SILENCE])]
    assert [d.speak for d in decisions] == [True, False, False, False]
    assert _kinds(decisions[3])[-3:] == [(K.BACKCHANNEL_HEARD, "vad"), (K.YIELDED, "length"),
                                         (K.MODEL_SPEECH_STOPPED, "length")]
    assert state.epoch == 0


def test_hybrid_never_starts_over_the_user_even_if_the_head_says_speak():
    policy = TurnPolicy(TurnPolicyConfig(policy="hybrid", head_calibrated=True))
    state = TurnState()
    assert not any(d.speak for d in _run(policy, state, [SPEECH] * 10, head=HEAD_SPEAK))
    assert policy.decide(state, 10, SILENCE, HEAD_SPEAK, -5.0).speak  # free floor: the head decides


def test_hybrid_with_an_uncalibrated_head_falls_back_to_the_threshold():
    policy = TurnPolicy(TurnPolicyConfig(policy="hybrid", head_calibrated=False, silence_threshold_ms=400))
    state = TurnState()
    decisions = _run(policy, state, [SPEECH, SILENCE, SILENCE, SILENCE], head=HEAD_SPEAK)
    assert [d.speak for d in decisions] == [False, False, True, True]


def test_model_policy_follows_the_head_alone():
    policy = TurnPolicy(TurnPolicyConfig(policy="model"))
    state = TurnState()
    assert policy.decide(state, 0, SPEECH, HEAD_SPEAK, -5.0).speak  # no VAD guard
    stop = policy.decide(state, 1, SILENCE, HEAD_LISTEN, -5.0)
    assert not stop.speak and (K.YIELDED, "head") in _kinds(stop)


def test_a_seeded_turn_is_capped_in_length():
    policy = TurnPolicy(TurnPolicyConfig(policy="vad", silence_threshold_ms=100, max_turn_ticks=3))
    state = TurnState()
    decisions = _run(policy, state, [SPEECH] + [SILENCE] * 6)
    assert [d.speak for d in decisions] == [False, True, True, True, False, False, False]
    assert (K.YIELDED, "length") in _kinds(decisions[4])


def test_the_model_does_not_speak_before_the_user_said_anything():
    policy = TurnPolicy(TurnPolicyConfig(policy="vad", silence_threshold_ms=100))
    assert not any(d.speak for d in _run(policy, TurnState(), [SILENCE] * 10))


def test_delegation_fires_above_threshold_with_a_cooldown():
    policy = TurnPolicy(TurnPolicyConfig(delegate_threshold=0.9, delegate_cooldown_ticks=3))
    state = TurnState()
    fired = [policy.decide(state, i, SILENCE, HEAD_LISTEN, 5.0).delegate for i in range(7)]
    assert fired == [True, False, False, True, False, False, True]


def test_auto_is_the_model_with_a_trained_head_and_hybrid_without_one():
    assert resolve_policy("auto", head_calibrated=True) == "model"
    assert resolve_policy("auto", head_calibrated=False) == "hybrid"
    for named in ("model", "vad", "hybrid"):  # a named policy is taken as it is
        assert resolve_policy(named, head_calibrated=True) == named
        assert resolve_policy(named, head_calibrated=False) == named


def test_min_end_silence_waits_for_that_much_silence_before_taking_a_turn_end():
    """The detector says "turn end" in the first silent tick; with min_end_silence_ms the model
    waits until the VAD has heard that much silence after the last speech (here the speech tick
    ends in two silent 32 ms windows, so 64 + 200 ms after one silent tick, 464 after two)."""
    talk, ended = [5.0, -9.0], [-5.0, 3.0]
    trailing = [0.9] * 4 + [0.05] * 2

    def first_take(min_end_silence_ms: float) -> int | None:
        policy = TurnPolicy(TurnPolicyConfig(policy="model", head_calibrated=True,
                                             min_end_silence_ms=min_end_silence_ms))
        state = TurnState()
        policy.decide(state, 0, trailing, HEAD_LISTEN, -5.0, detector_logits=talk)
        for tick in range(1, 5):
            decision = policy.decide(state, tick, SILENCE, HEAD_LISTEN, -5.0, detector_logits=ended)
            if decision.speak:
                assert (K.MODEL_SPEECH_STARTED, "head") in _kinds(decision)
                return tick
        return None

    assert first_take(0.0) == 1
    assert first_take(264.0) == 1  # 64 ms left in the speech tick + one silent tick
    assert first_take(265.0) == 2
    assert first_take(464.0) == 2
    assert first_take(700.0) == 4


def test_min_end_silence_restarts_when_the_user_speaks_again():
    """Speech in the gap (the next sentence) resets the wait: no start between sentences."""
    talk, ended = [5.0, -9.0], [-5.0, 3.0]
    policy = TurnPolicy(TurnPolicyConfig(policy="model", head_calibrated=True, min_end_silence_ms=400.0))
    state = TurnState()
    signals = [(SPEECH, talk), (SILENCE, ended), (SPEECH, talk), (SILENCE, ended), (SILENCE, ended)]
    spoke = [policy.decide(state, i, vad, HEAD_LISTEN, -5.0, detector_logits=logits).speak
             for i, (vad, logits) in enumerate(signals)]
    assert spoke == [False, False, False, False, True]
