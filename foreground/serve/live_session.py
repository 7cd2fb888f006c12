"""One session's server side: numbered messages, an outbox, and a replay buffer.

Every server message gets the next `seq`. The latest messages, up to `replay_bytes` (sized to
cover the resume grace: 15 s of 24 kHz audio is 720 kB), are kept so that a client that lost
its stream can reconnect with `resume_after_seq` and miss nothing; what was dropped before it came
back is announced (an `Error` with code DATA_LOSS naming the missing seqs), never silent. The
outbox is bounded: a client that stops reading loses its oldest messages (counted), not the
replica's memory.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections import deque

from foreground.serve.session_limits import RateWindow
from protos.microturn.v1 import events_pb2, interaction_pb2

REPLAY_BYTES = 2 << 20
OUTBOX = 64


class LiveSession:
    def __init__(self, session_id: str | None = None, token: str | None = None,
                 replay_bytes: int = REPLAY_BYTES, tool_requests_per_minute: int = 20) -> None:
        self.session_id = session_id or uuid.uuid4().hex
        self.token = token or secrets.token_urlsafe(24)
        self.seq = 0
        self.tick = 0
        self.replay: deque[tuple[interaction_pb2.ServerMessage, int]] = deque()
        self.replay_bytes, self._replayed_bytes = replay_bytes, 0
        self.tool_requests = RateWindow(tool_requests_per_minute)
        self.outbox: asyncio.Queue | None = None
        self.dropped_messages = 0
        self.last_client_activity = time.monotonic()
        self.detached_at: float | None = time.monotonic()
        self.closed = False

    def emit(self, **payload) -> interaction_pb2.ServerMessage:
        self.seq += 1
        message = interaction_pb2.ServerMessage(seq=self.seq, tick=self.tick, **payload)
        size = message.ByteSize()
        self.replay.append((message, size))
        self._replayed_bytes += size
        while self._replayed_bytes > self.replay_bytes and len(self.replay) > 1:
            self._replayed_bytes -= self.replay.popleft()[1]
        if self.outbox is not None:
            if self.outbox.full():
                self.outbox.get_nowait()
                self.dropped_messages += 1
            self.outbox.put_nowait(message)
        return message

    def attach(self, after_seq: int = 0) -> asyncio.Queue:
        """A fresh outbox for a (re)connected stream, holding what it missed."""
        self.outbox = None  # the gap notice goes into the replay buffer, then out with the rest
        oldest = self.replay[0][0].seq if self.replay else self.seq + 1
        if after_seq and after_seq + 1 < oldest:
            self.emit(error=events_pb2.Error(
                code="DATA_LOSS", field="open.resume_after_seq",
                message=f"messages {after_seq + 1}..{oldest - 1} are no longer held (limit `limits.replay_bytes`); "
                        "the stream goes on from the next one"))
        self.outbox = asyncio.Queue(maxsize=OUTBOX)
        for message, _ in self.replay:
            if message.seq > after_seq and not self.outbox.full():
                self.outbox.put_nowait(message)
        self.detached_at = None
        self.touch()
        return self.outbox

    def detach(self, outbox: asyncio.Queue) -> None:
        if self.outbox is outbox:  # a newer stream may have taken over already
            self.outbox = None
            self.detached_at = time.monotonic()

    def touch(self) -> None:
        self.last_client_activity = time.monotonic()
