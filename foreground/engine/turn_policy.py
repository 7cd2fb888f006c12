"""Who holds the floor, decided at every tick boundary, with the cause of every decision.

- `model`: the turn head alone decides (the announcement's intent).
- `vad`: the Silero VAD on the user's stream decides everything: take a free floor after a
  silence threshold, go silent as soon as the user speaks (see "the hold").
- `hybrid`: the VAD guards the user's side (the model goes silent in the tick the user starts and
  never starts over the user); the turn head decides when to take a free floor, falling back to
  the silence threshold while the head is uncalibrated (seeded weights).
- `auto` (the configured default, resolved once per replica by `resolve_policy`): `model` when
  the checkpoint's turn head is trained, `hybrid` when it is not.

With a calibrated checkpoint (`head_calibrated`: its end-of-turn detector was trained, see
`foreground.model.turn_detector`), "the head" is the detector: its SPEECH logit > 0 says the user
speaks, its END logit > 0 (the threshold is folded into its bias) that a silence is a turn end.
Under `model` the user speaks only when the Silero VAD hears speech in the same tick: the
detector, trained with background sound, still takes a loud steady tone (a -17 dBFS sine at a
voice's pitch) for speech, which Silero does not, and a false "the user speaks" holds the floor
and every background result.
`model` then takes the floor on a turn end and stops on user speech (barge-in), the VAD only
confirming that speech is speech; `hybrid` takes a free floor on a turn end and keeps the VAD
guard (the VAD alone says when the user speaks). The seeded backbone cannot end its own turn, so
`max_turn_ticks` caps the model's turns under every policy then.

The hold (every policy but `model` on an uncalibrated head, whose head alone decides): user
speech while the model speaks does not stop it at once. A first decision hears at most one tick
(200 ms) of that speech, too little to tell an acknowledgement ("mm-hm", "yeah":
Full-Duplex-Bench v1.5's user backchannel; a published system resumes after 93% of them) from a
barge-in. So the model keeps the floor but goes silent in that very tick (the stop latency a
listener hears does not grow); if the speech ends within `backchannel_max_ms` it resumes
(BACKCHANNEL_HEARD, same epoch), if it goes on longer it stops as before (INTERRUPTED, epoch + 1).

Causes: "head", "vad", "threshold", "length" (a turn reached `max_turn_ticks`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

log = logging.getLogger(__name__)

LISTEN, SPEAK, BACKCHANNEL = 0, 1, 2  # turn head classes
DETECTOR_SPEECH, DETECTOR_END = 0, 1  # turn detector logits (foreground.model.turn_detector)
VAD_WINDOW_MS = 32.0


def resolve_policy(requested: str, head_calibrated: bool) -> str:
    """`auto` -> `model` with a trained turn head: the model decides by itself, as the
    announcement intends, and measured it answers and stops sooner than `hybrid` at the same
    pause takeover (README, "Learned turn-taking"). A seeded head cannot take turns, so
    `hybrid` stands in."""
    if requested != "auto":
        return requested
    return "model" if head_calibrated else "hybrid"


class TurnEventKind(str, Enum):
    USER_SPEECH_STARTED = "USER_SPEECH_STARTED"
    USER_SPEECH_STOPPED = "USER_SPEECH_STOPPED"
    MODEL_SPEECH_STARTED = "MODEL_SPEECH_STARTED"
    MODEL_SPEECH_STOPPED = "MODEL_SPEECH_STOPPED"
    INTERRUPTED = "INTERRUPTED"
    YIELDED = "YIELDED"
    BACKCHANNEL = "BACKCHANNEL"
    BACKCHANNEL_HEARD = "BACKCHANNEL_HEARD"  # the user's speech while the model spoke was short: it resumed
    DELEGATED = "DELEGATED"


@dataclass(frozen=True)
class TurnEvent:
    kind: TurnEventKind
    cause: str
    epoch: int


@dataclass(frozen=True, slots=True)
class TurnPolicyConfig:
    policy: Literal["model", "vad", "hybrid"] = "hybrid"
    head_calibrated: bool = False
    vad_threshold: float = 0.5
    silence_threshold_ms: float = 600.0
    # hybrid with a calibrated detector: the floor is free once the VAD's last windows are
    # silent (the tick that holds a turn's last syllable is not "the user speaks now")
    vad_trailing_silence_ms: float = 64.0
    # the detector's turn end is taken only once the user has been silent this long (the VAD's
    # trailing windows): 0 lets the detector alone decide; raising it trades answer latency for
    # fewer starts in the gaps between a speaker's sentences (README, "Learned turn-taking")
    min_end_silence_ms: float = 0.0
    max_turn_ticks: int = 25  # a seeded model never ends a turn by itself: cap it at 5 s
    # user speech while the model speaks: held (silent) until it has lasted longer than this,
    # counted in whole ticks after the onset tick; 0 turns the hold off (stop in the onset tick)
    backchannel_max_ms: float = 600.0
    # a background result waits for the user's speech to end at most this long (TickScheduler)
    weave_max_wait_ms: float = 1000.0
    delegate_threshold: float = 0.9
    delegate_cooldown_ticks: int = 25
    tick_ms: float = 200.0


@dataclass
class TurnState:
    """One session's floor state (moves with the session's slot)."""

    model_speaking: bool = False
    user_speaking: bool = False
    user_spoke: bool = False  # the user said something since the model last spoke
    silence_ms: float = 0.0  # trailing user silence, from VAD windows
    turn_ticks: int = 0
    held_ticks: int = 0  # ticks of user speech the model has been silent for, keeping the floor
    epoch: int = 0
    ticks_since_delegate: int = 1 << 30
    decisions: list[tuple[int, str, str]] = field(default_factory=list)  # (tick, what, cause), recent


@dataclass(frozen=True)
class TickDecision:
    speak: bool  # the model's audio and text go out this tick (not while it holds the floor silently)
    delegate: bool
    events: list[TurnEvent]


class TurnPolicy:
    def __init__(self, config: TurnPolicyConfig) -> None:
        self.config = config

    def decide(self, state: TurnState, tick: int, vad_probs: list[float], turn_logits: list[float],
               delegate_logit: float, detector_logits: list[float] | None = None) -> TickDecision:
        cfg, events = self.config, []
        if cfg.head_calibrated and detector_logits is not None and cfg.policy != "vad":
            self._floor_by_detector(state, tick, vad_probs, detector_logits, events)
        else:
            self._floor_by_head(state, tick, vad_probs, turn_logits, events)
        delegate = self._delegate(state, delegate_logit)
        if delegate:
            events.append(TurnEvent(TurnEventKind.DELEGATED, "head", state.epoch))
        voiced = state.model_speaking and not state.held_ticks
        return TickDecision(speak=voiced, delegate=delegate, events=events)

    def _floor_by_detector(self, state: TurnState, tick: int, vad_probs: list[float],
                           detector_logits: list[float], events: list[TurnEvent]) -> None:
        cfg = self.config
        speech = detector_logits[DETECTOR_SPEECH] > 0.0
        if cfg.policy == "model":  # speech, not sound: Silero must hear speech in this tick too
            speech = speech and any(p >= cfg.vad_threshold for p in vad_probs)
            user_active = self._track_user_by_detector(state, speech, vad_probs, events)
            cause, user_now = "head", user_active
        else:
            user_active = self._track_user(state, vad_probs, events)
            cause, user_now = "vad", state.silence_ms < cfg.vad_trailing_silence_ms
        turn_ended = (not speech and detector_logits[DETECTOR_END] > 0.0
                      and state.silence_ms >= cfg.min_end_silence_ms)
        if state.model_speaking:
            state.turn_ticks += 1
            if not self._hold(state, tick, user_active, cause, events):
                self._yield_if_done(state, tick, False, events)
        elif turn_ended and state.user_spoke and not user_now:
            self._start(state, tick, "head", events)

    def _floor_by_head(self, state: TurnState, tick: int, vad_probs: list[float], turn_logits: list[float],
                       events: list[TurnEvent]) -> None:
        cfg = self.config
        user_active = self._track_user(state, vad_probs, events)
        p_turn = _softmax(turn_logits)
        head_says_speak = p_turn[SPEAK] >= max(p_turn[LISTEN], p_turn[BACKCHANNEL])

        if state.model_speaking:
            state.turn_ticks += 1
            if cfg.policy == "model":  # the turn head alone yields, whoever speaks
                if not head_says_speak:
                    kind = TurnEventKind.INTERRUPTED if user_active else TurnEventKind.YIELDED
                    self._stop(state, tick, kind, "head", events)
                    if user_active:
                        state.epoch += 1
            elif not self._hold(state, tick, user_active, "vad", events):
                head_done = cfg.policy == "hybrid" and cfg.head_calibrated and not head_says_speak
                self._yield_if_done(state, tick, head_done, events)
        else:
            cause = self._take_floor_cause(state, user_active, head_says_speak)
            if cause:
                self._start(state, tick, cause, events)
            elif cfg.policy == "model" and user_active and p_turn[BACKCHANNEL] > max(p_turn[LISTEN], p_turn[SPEAK]):
                events.append(TurnEvent(TurnEventKind.BACKCHANNEL, "head", state.epoch))

    def _hold(self, state: TurnState, tick: int, user_active: bool, cause: str,
              events: list[TurnEvent]) -> bool:
        """While the model speaks: user speech silences it and holds the floor, until the speech
        has lasted longer than `backchannel_max_ms` (a barge-in: stop) or ends (a backchannel:
        resume). True while the speech decides this tick (held, or stopped)."""
        if user_active:
            state.held_ticks += 1
            lasted_ms = (state.held_ticks - 1) * self.config.tick_ms  # whole ticks after the onset's
            if self.config.backchannel_max_ms <= 0 or lasted_ms > self.config.backchannel_max_ms:
                self._stop(state, tick, TurnEventKind.INTERRUPTED, cause, events)
                state.epoch += 1
            return True
        if state.held_ticks:
            state.held_ticks, state.user_spoke = 0, False  # an acknowledgement is not a turn
            events.append(TurnEvent(TurnEventKind.BACKCHANNEL_HEARD, cause, state.epoch))
            _record(state, tick, "backchannel heard", cause)
        return False

    def _yield_if_done(self, state: TurnState, tick: int, head_done: bool, events: list[TurnEvent]) -> None:
        if head_done:
            self._stop(state, tick, TurnEventKind.YIELDED, "head", events)
        elif state.turn_ticks >= self.config.max_turn_ticks:
            self._stop(state, tick, TurnEventKind.YIELDED, "length", events)

    def _track_user(self, state: TurnState, vad_probs: list[float], events: list[TurnEvent]) -> bool:
        user_active = any(p >= self.config.vad_threshold for p in vad_probs)
        if user_active:
            state.silence_ms = _trailing_silence_ms(vad_probs, self.config.vad_threshold)
            state.user_spoke = True
            if not state.user_speaking:
                state.user_speaking = True
                events.append(TurnEvent(TurnEventKind.USER_SPEECH_STARTED, "vad", state.epoch))
        else:
            state.silence_ms += self.config.tick_ms  # the whole tick was silent
            if state.user_speaking:
                state.user_speaking = False
                events.append(TurnEvent(TurnEventKind.USER_SPEECH_STOPPED, "vad", state.epoch))
        return user_active

    def _track_user_by_detector(self, state: TurnState, speaking: bool, vad_probs: list[float],
                                events: list[TurnEvent]) -> bool:
        """The `model` policy's ears: the detector's "user speaking" class instead of the VAD
        (whose windows still time the silence after the last one that heard speech)."""
        if speaking:
            state.silence_ms, state.user_spoke = _trailing_silence_ms(vad_probs, self.config.vad_threshold), True
            if not state.user_speaking:
                state.user_speaking = True
                events.append(TurnEvent(TurnEventKind.USER_SPEECH_STARTED, "head", state.epoch))
        else:
            state.silence_ms += self.config.tick_ms
            if state.user_speaking:
                state.user_speaking = False
                events.append(TurnEvent(TurnEventKind.USER_SPEECH_STOPPED, "head", state.epoch))
        return speaking

    def _take_floor_cause(self, state: TurnState, user_active: bool, head_says_speak: bool) -> str | None:
        cfg = self.config
        if cfg.policy == "model":
            return "head" if head_says_speak else None
        if user_active or not state.user_spoke:
            return None  # never start over the user, nor before they said anything
        if cfg.policy == "hybrid" and cfg.head_calibrated:
            return "head" if head_says_speak else None
        return "threshold" if state.silence_ms >= cfg.silence_threshold_ms else None

    def _delegate(self, state: TurnState, logit: float) -> bool:
        state.ticks_since_delegate += 1
        if _sigmoid(logit) < self.config.delegate_threshold:
            return False
        if state.ticks_since_delegate < self.config.delegate_cooldown_ticks:
            return False
        state.ticks_since_delegate = 0
        return True

    def _start(self, state: TurnState, tick: int, cause: str, events: list[TurnEvent]) -> None:
        state.model_speaking, state.turn_ticks, state.user_spoke = True, 0, False
        events.append(TurnEvent(TurnEventKind.MODEL_SPEECH_STARTED, cause, state.epoch))
        _record(state, tick, "take floor", cause)

    def _stop(self, state: TurnState, tick: int, kind: TurnEventKind, cause: str,
              events: list[TurnEvent]) -> None:
        state.model_speaking, state.held_ticks = False, 0
        events.append(TurnEvent(kind, cause, state.epoch))
        events.append(TurnEvent(TurnEventKind.MODEL_SPEECH_STOPPED, cause, state.epoch))
        _record(state, tick, kind.value.lower(), cause)


def _record(state: TurnState, tick: int, what: str, cause: str) -> None:
    log.debug("tick %d: %s (cause: %s)", tick, what, cause)
    state.decisions.append((tick, what, cause))
    del state.decisions[:-32]


def _trailing_silence_ms(vad_probs: list[float], threshold: float) -> float:
    """How long the tick ends in silence: its VAD windows after the last one that heard speech."""
    trailing = next((i for i, p in enumerate(reversed(vad_probs)) if p >= threshold), len(vad_probs))
    return trailing * VAD_WINDOW_MS


def _softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    total = sum(exps)
    return [e / total for e in exps]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
