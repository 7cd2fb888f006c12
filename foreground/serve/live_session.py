"""One session's server side: numbered messages, an outbox, and a replay buffer.

Every server message gets the next `seq`. The latest messages, up to `replay_bytes` (sized to
cover the resume grace: 15 s of 24 kHz audio is 720 kB), are kept so that a client that lost
its stream can reconnect with `resume_after_seq` and miss nothing; what was dropped before it came
back is announced (an `Error` with code DATA_LOSS naming the missing seqs), never silent. The
outbox is bounded: a client that stops reading loses its oldest messages (counted), not the
replica's memory.

A session restored on another replica after its own died (`session_journal`) starts with
`seq` where its journal (or the client, if it saw more) left off and the journalled tail of
non-audio messages in its replay buffer; what the client missed that neither holds (the audio
of the last moments, anything past the tail) is announced the same way, seq by seq.
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
GAP_RANGES_NAMED = 64  # a notice names at most this many missing ranges (then counts the rest)


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
        self.input_rate = 0  # as opened (0: the replica's default); journalled
        self.turn_policy = ""  # as opened ("": the replica's default); journalled
        self.end_silence_ms: int | None = None  # as opened (None: the replica's); journalled
        self.restored_through = 0  # restored from a journal: seqs up to this one were sent by a lost replica
        self.events_after = ""  # the last entry of its event stream handed to it (journalled)

    def restore(self, seq: int, tail: list[interaction_pb2.ServerMessage]) -> None:
        """Carry on from a journal: the next message gets seq + 1; the journalled messages
        (none after `seq`) go into the replay buffer for the client's resume."""
        self.seq = self.restored_through = seq
        for message in tail:
            if message.seq <= seq:
                size = message.ByteSize()
                self.replay.append((message, size))
                self._replayed_bytes += size

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
        missing = self.missing_after(after_seq) if after_seq else []
        if missing:
            lost = missing[0][0] <= self.restored_through
            why = ("the replica that held the session was lost, and audio (like anything past the journal's "
                   "tail) is not journalled" if lost else "limit `limits.replay_bytes`")
            self.emit(error=events_pb2.Error(
                code="DATA_LOSS", field="open.resume_after_seq",
                message=f"messages {_ranges(missing)} are no longer held ({why}); the stream goes on from the next one"))
        replayed = [message for message, _ in self.replay if message.seq > after_seq]
        self.outbox = asyncio.Queue(maxsize=OUTBOX + len(replayed))  # the whole replay fits, then the bound
        for message in replayed:
            self.outbox.put_nowait(message)
        self.detached_at = None
        self.touch()
        return self.outbox

    def missing_after(self, after_seq: int) -> list[tuple[int, int]]:
        """The seqs after `after_seq`, up to the last one sent, that the replay buffer no longer
        holds, as inclusive ranges."""
        missing, expected = [], after_seq + 1
        for message, _ in self.replay:
            if message.seq > expected:
                missing.append((expected, message.seq - 1))
            expected = max(expected, message.seq + 1)
        if expected <= self.seq:
            missing.append((expected, self.seq))
        return missing

    def detach(self, outbox: asyncio.Queue) -> None:
        if self.outbox is outbox:  # a newer stream may have taken over already
            self.outbox = None
            self.detached_at = time.monotonic()

    def touch(self) -> None:
        self.last_client_activity = time.monotonic()


def _ranges(missing: list[tuple[int, int]]) -> str:
    named = ", ".join(f"{a}..{b}" if b > a else f"{a}" for a, b in missing[:GAP_RANGES_NAMED])
    rest = missing[GAP_RANGES_NAMED:]
    if rest:
        named += f" and {sum(b - a + 1 for a, b in rest)} more up to {rest[-1][1]}"
    return named
