"""What one session may hold or ask for, each bounded, each named when hit.

A client that sends faster or more than a conversation needs must not grow a replica's memory
or its background work: every per-session queue is bounded (here, and in the engine's jitter
buffer), and a request past a bound fails that request alone, with RESOURCE_EXHAUSTED and the
name of the limit (`limits.<key>` in the config) so an operator knows what to raise.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from foreground.engine.input_validation import LimitExceeded
from foreground.serve.session_directory import EVENTS_KEPT_AFTER_CLOSE_S


@dataclass(frozen=True)
class SessionLimits:
    text_queue_bytes: int = 16_384  # text waiting to enter the model (client text and results; the engine's)
    tool_requests_per_minute: int = 20
    replay_bytes: int = 2 << 20  # server messages kept for a resume: covers the resume grace
    open_deadline_s: float = 10.0  # a stream must send its opening message within this
    opens_per_key_per_second: float = 4.0  # new sessions per API key, after a burst (`open_rate`)
    opens_burst: int = 64
    event_bytes: int = 65_536  # one event a session publishes; one tool request's arguments
    events_kept_after_close_s: float = EVENTS_KEPT_AFTER_CLOSE_S  # a closed session's stream in Redis


class RateWindow:
    """At most `per_minute` events in any 60 s (a sliding window of their times)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.times: deque[float] = deque()

    def take(self, field: str, limit: str) -> None:
        now = time.monotonic()
        while self.times and now - self.times[0] >= 60.0:
            self.times.popleft()
        if len(self.times) >= self.per_minute:
            raise LimitExceeded(field, limit, f"more than {self.per_minute} a minute")
        self.times.append(now)
