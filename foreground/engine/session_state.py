"""What the engine keeps for one session besides its tensor rows: typed, moved with its slot.

The tensors of a session (KV cache, codec state, audio buffers) live in rows of preallocated
batch tensors; this is the Python side: its turn state and policy, the text and background
results waiting to enter the model, its conversation so far, its jitter buffer's bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from foreground.engine.turn_policy import TurnState


@dataclass(frozen=True)
class WovenResult:
    """A background result whose first tokens entered the model's input this tick."""

    event_id: str
    job_id: str
    epoch: int
    published_ns: int
    received_ns: int = 0  # when the replica read it from the bus


@dataclass
class PendingResult:
    """A background result waiting to be woven in, token by token, at tick boundaries."""

    tokens: list[int]
    result: WovenResult
    urgent: bool
    submitted_tick: int
    started: bool = False  # its first token has entered: the rest follows whatever the user does


class TextDecoder(Protocol):
    """Turns the model's text tokens into text, keeping what a token split (UTF-8, pieces)."""

    def decode(self, token_ids: list[int]) -> str: ...


@dataclass
class SessionState:
    input_rate: int = 16_000  # the client's audio rate unless a chunk says otherwise
    policy: Any = None  # decides this session's turns (a TurnPolicy, or the family's own)
    text_out: TextDecoder | None = None
    turn: TurnState = field(default_factory=TurnState)
    text_in: list[int] = field(default_factory=list)  # the client's text, as model tokens
    results_in: list[PendingResult] = field(default_factory=list)
    conversation: list[tuple[str, str, int]] = field(default_factory=list)  # (who, text, tick)
    # the jitter buffer (ChunkQueue) of this session
    queue_head: int = 0
    queue_size: int = 0
    queue_meta: list[tuple] = field(default_factory=list)
    audio_started: bool = False  # a first chunk arrived: from now on a tick without one is late
    # the last tick's VAD heard speech in this session's audio (True until it has heard any:
    # what a client buffered before its first tick is never judged unheard)
    heard_speech: bool = True
    # this tick's
    input_meta: tuple[int, int] = (0, 0)  # (client seq, received ns) of the chunk it used
    woven_now: list[WovenResult] = field(default_factory=list)
