"""Turn events for the Moshi family, derived from what the model does (ObservedTurns)."""

from __future__ import annotations

from foreground.engine.turn_policy import TurnEventKind as K
from foreground.engine.turn_policy import TurnState
from foreground.moshi.observed_turns import ObservedTurns, ObservedTurnsConfig

SPEECH, SILENCE = [0.9, 0.9], [0.05, 0.05]


def run(script: list[tuple[bool, bool]]) -> tuple[TurnState, list[tuple[int, K, str, int]]]:
    """script: per 80 ms tick, (the user speaks, the model says a word)."""
    turns, state, events = ObservedTurns(ObservedTurnsConfig()), TurnState(), []
    for tick, (user, words) in enumerate(script):
        decision = turns.decide(state, tick, SPEECH if user else SILENCE, words)
        events += [(tick, e.kind, e.cause, e.epoch) for e in decision.events]
        assert decision.speak == state.model_speaking and not decision.delegate
    return state, events


def kinds(events) -> list[K]:
    return [e[1] for e in events]


def test_the_model_speaks_from_its_first_word_until_it_falls_quiet():
    state, events = run([(False, False)] * 2 + [(False, True), (False, False), (False, True)] + [(False, False)] * 8)
    assert kinds(events) == [K.MODEL_SPEECH_STARTED, K.MODEL_SPEECH_STOPPED]
    assert events[0][0] == 2 and events[0][2] == "model"
    assert events[1][0] == 4 + 6  # 480 ms (6 ticks) after its last word
    assert not state.model_speaking


def test_user_speech_over_the_model_that_makes_it_stop_is_an_interruption():
    script = [(False, True)] * 5 + [(True, True)] * 2 + [(True, False)] * 10 + [(False, False)] * 6
    state, events = run(script)
    assert kinds(events) == [K.MODEL_SPEECH_STARTED, K.USER_SPEECH_STARTED, K.MODEL_SPEECH_STOPPED,
                             K.INTERRUPTED, K.USER_SPEECH_STOPPED]
    interrupted = events[3]
    assert interrupted[2] == "model" and interrupted[3] == 1 and state.epoch == 1


def test_a_short_acknowledgement_while_the_model_goes_on_is_a_backchannel():
    script = [(False, True)] * 5 + [(True, True)] * 3 + [(False, True)] * 8
    state, events = run(script)
    assert K.BACKCHANNEL_HEARD in kinds(events) and K.INTERRUPTED not in kinds(events)
    assert state.epoch == 0 and state.model_speaking


def test_long_user_speech_the_model_talks_through_is_no_backchannel():
    script = [(False, True)] * 3 + [(True, True)] * 15 + [(False, True)] * 6
    _, events = run(script)
    assert K.BACKCHANNEL_HEARD not in kinds(events) and K.INTERRUPTED not in kinds(events)
    assert K.USER_SPEECH_STOPPED in kinds(events)
