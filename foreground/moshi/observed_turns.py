"""Turn events for a model that takes turns by itself (the Moshi family).

A full-duplex Moshi model listens and speaks at once and decides alone when to talk: the
engine neither gates its audio nor makes it yield. What it still owes clients is the same
turn events, with causes, as the reference model's policies: this observer derives them from
what the model does (its text stream: words, or padding) and from the Silero VAD on the user.

- the model speaks from its first word until `model_quiet_ms` pass without one;
- the user speaks from a VAD window over `vad_threshold` until `user_silence_ms` of silence;
- user speech that starts while the model speaks: if the model falls quiet while the user is
  still talking, it was interrupted (INTERRUPTED, epoch + 1); if the user's speech ends first,
  within `backchannel_max_ms`, and the model went on, it was an acknowledgement
  (BACKCHANNEL_HEARD). Cause "model" for the model's own moves, "vad" for the user's.
"""

from __future__ import annotations

from dataclasses import dataclass

from foreground.engine.turn_policy import TickDecision, TurnEvent, TurnEventKind, TurnState

VAD_WINDOW_MS = 32.0


@dataclass(frozen=True)
class ObservedTurnsConfig:
    tick_ms: float = 80.0
    vad_threshold: float = 0.5
    user_silence_ms: float = 320.0
    model_quiet_ms: float = 480.0
    backchannel_max_ms: float = 600.0


class ObservedTurns:
    def __init__(self, cfg: ObservedTurnsConfig) -> None:
        self.cfg = cfg

    def decide(self, turn: TurnState, tick: int, vad: list[float], model_words: bool) -> TickDecision:
        cfg, events = self.cfg, []

        def emit(kind: TurnEventKind, cause: str) -> None:
            events.append(TurnEvent(kind, cause, turn.epoch))
            turn.decisions.append((tick, kind.value, cause))
            del turn.decisions[:-32]

        user_was, model_was = turn.user_speaking, turn.model_speaking
        # the user's side, from the VAD windows of this tick
        heard = [p > cfg.vad_threshold for p in vad]
        if any(heard):
            trailing = len(heard) - 1 - max(i for i, h in enumerate(heard) if h)
            turn.silence_ms = trailing * VAD_WINDOW_MS
            if not user_was:
                turn.user_speaking = turn.user_spoke = True
                emit(TurnEventKind.USER_SPEECH_STARTED, "vad")
        else:
            turn.silence_ms += cfg.tick_ms
            if user_was and turn.silence_ms >= cfg.user_silence_ms:
                turn.user_speaking = False
                emit(TurnEventKind.USER_SPEECH_STOPPED, "vad")
        # the model's side, from its text stream
        turn.turn_ticks = 0 if model_words else turn.turn_ticks + 1
        if model_words and not model_was:
            turn.model_speaking = True
            emit(TurnEventKind.MODEL_SPEECH_STARTED, "model")
        elif model_was and turn.turn_ticks * cfg.tick_ms >= cfg.model_quiet_ms:
            turn.model_speaking = False
            emit(TurnEventKind.MODEL_SPEECH_STOPPED, "model")
        self._overlap(turn, user_was, model_was, emit)
        return TickDecision(speak=turn.model_speaking, delegate=False, events=events)

    def _overlap(self, turn: TurnState, user_was: bool, model_was: bool, emit) -> None:
        """Who gave way when both spoke: the barge-in and the acknowledgement. `held_ticks`
        counts the ticks since user speech began over the model's (0: no overlap watched)."""
        if turn.user_speaking and not user_was and model_was:
            turn.held_ticks = 1
        elif turn.held_ticks == 0:
            return
        if not turn.model_speaking and turn.user_speaking:
            turn.epoch += 1
            emit(TurnEventKind.INTERRUPTED, "model")
            turn.held_ticks = 0
        elif not turn.user_speaking:
            spoke_ms = turn.held_ticks * self.cfg.tick_ms - self.cfg.user_silence_ms
            if turn.model_speaking and spoke_ms <= self.cfg.backchannel_max_ms:
                emit(TurnEventKind.BACKCHANNEL_HEARD, "model")
            turn.held_ticks = 0
        else:
            turn.held_ticks += 1
