"""One session's server side: numbered messages, an outbox, and a replay buffer.

Every server message gets the next `seq`. The last `REPLAY` messages are kept so that a client
that lost its stream can reconnect with `resume_after_seq` and miss nothing that is still
buffered. The outbox is bounded: a client that stops reading loses its oldest messages
(counted), not the replica's memory.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections import deque

from protos.microturn.v1 import interaction_pb2

REPLAY = 64
OUTBOX = 64


class LiveSession:
    def __init__(self, session_id: str | None = None, token: str | None = None) -> None:
        self.session_id = session_id or uuid.uuid4().hex
        self.token = token or secrets.token_urlsafe(24)
        self.seq = 0
        self.tick = 0
        self.replay: deque[interaction_pb2.ServerMessage] = deque(maxlen=REPLAY)
        self.outbox: asyncio.Queue | None = None
        self.dropped_messages = 0
        self.last_client_activity = time.monotonic()
        self.detached_at: float | None = time.monotonic()
        self.closed = False

    def emit(self, **payload) -> interaction_pb2.ServerMessage:
        self.seq += 1
        message = interaction_pb2.ServerMessage(seq=self.seq, tick=self.tick, **payload)
        self.replay.append(message)
        if self.outbox is not None:
            if self.outbox.full():
                self.outbox.get_nowait()
                self.dropped_messages += 1
            self.outbox.put_nowait(message)
        return message

    def attach(self, after_seq: int = 0) -> asyncio.Queue:
        """A fresh outbox for a (re)connected stream, holding what it missed."""
        self.outbox = asyncio.Queue(maxsize=OUTBOX)
        for message in self.replay:
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
