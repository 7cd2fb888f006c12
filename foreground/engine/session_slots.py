"""Preallocated session slots: joining, leaving and every tick allocate no tensor.

Live sessions always occupy slots 0..live-1, so a tick works on plain prefix views of every
buffer. A session that leaves is replaced by the last live one (its state rows are copied
over: a few hundred kilobytes, once per leave), the way Moshi's streaming modules flip a slot
mask instead of reallocating, but keeping the batch dense.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from foreground.engine.session_state import SessionState


class SlotState(Protocol):
    """Anything holding per-session tensors with a leading `max_slots` dimension."""

    def state_tensors(self) -> list[torch.Tensor]: ...

    def reset(self, slot: int) -> None: ...


class SessionsFull(RuntimeError):
    """Every slot is taken; the caller should retry later or on another replica."""


class UnknownSession(KeyError):
    def __str__(self) -> str:
        return f"unknown session {self.args[0]!r}"


@dataclass
class SessionRecord:
    """The Python-side part of a session (counters, turn state), moved along with its slot."""

    session_id: str
    slot: int
    ticks: int = 0
    late_chunks: int = 0  # ticks with no chunk (after the first one arrived): silence instead
    dropped_chunks: int = 0  # chunks dropped because the client sent faster than real time
    skipped_chunks: int = 0  # chunks that were not speech, skipped to catch up after a slip
    state: SessionState = field(default_factory=SessionState)


class SessionSlots:
    def __init__(self, max_slots: int, parts: Iterable[SlotState]) -> None:
        self.max_slots = max_slots
        self.parts = list(parts)
        self._tensors = [t for part in self.parts for t in part.state_tensors()]
        for t in self._tensors:
            if t.shape[0] != max_slots:
                raise ValueError(f"state tensor of shape {tuple(t.shape)} is not sized for {max_slots} slots")
        self._records: list[SessionRecord | None] = [None] * max_slots
        self._by_id: dict[str, SessionRecord] = {}
        self.lock = threading.Lock()  # held briefly by ingest and by the tick's gather

    @property
    def live(self) -> int:
        return len(self._by_id)

    @property
    def free(self) -> int:
        return self.max_slots - self.live

    def records(self) -> list[SessionRecord]:
        """Live sessions in slot order (slot i is row i of every batch)."""
        return [self._records[i] for i in range(self.live)]

    def get(self, session_id: str) -> SessionRecord:
        try:
            return self._by_id[session_id]
        except KeyError:
            raise UnknownSession(session_id) from None

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._by_id

    def join(self, session_id: str, state: SessionState | None = None) -> SessionRecord:
        """Take the next free slot (atomically: two sessions never share a slot)."""
        with self.lock:
            if session_id in self._by_id:
                raise ValueError(f"session {session_id!r} already holds slot {self._by_id[session_id].slot}")
            if self.live >= self.max_slots:
                raise SessionsFull(f"all {self.max_slots} slots are taken")
            slot = self.live
            for part in self.parts:
                part.reset(slot)
            record = SessionRecord(session_id=session_id, slot=slot, state=state or SessionState())
            self._records[slot] = record
            self._by_id[session_id] = record
            return record

    def leave(self, session_id: str) -> SessionRecord:
        """Free the session's slot; the last live session moves into it."""
        with self.lock:
            record = self.get(session_id)
            last = self.live - 1
            if record.slot != last:
                moved = self._records[last]
                for t in self._tensors:
                    t[record.slot].copy_(t[last])
                moved.slot = record.slot
                self._records[record.slot] = moved
            self._records[last] = None
            del self._by_id[session_id]
            return record
