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


def test_barge_in_stops_the_model_in_the_same_tick_and_raises_the_epoch():
    policy = TurnPolicy(TurnPolicyConfig(policy="hybrid", silence_threshold_ms=200))
    state = TurnState()
    _run(policy, state, [SPEECH, SILENCE, SILENCE])
    assert state.model_speaking
    barge = policy.decide(state, 3, [0.1, 0.1, 0.1, 0.95, 0.97, 0.9], HEAD_SPEAK, -5.0)
    assert not barge.speak
    assert (K.INTERRUPTED, "vad") in _kinds(barge) and state.epoch == 1


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
