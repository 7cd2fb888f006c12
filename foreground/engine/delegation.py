"""The delegate hook: where the foreground hands a job to the background pool.

The foreground only builds a `microturn.v1.Job` and gives it to a `JobSink`; the cluster
connects the sink to the `mt:jobs` stream on Redis. `CollectingJobSink` keeps jobs in memory
(for tests and for a replica with no bus).
"""

from __future__ import annotations

import time
import uuid
from typing import Protocol

from protos.microturn.v1 import events_pb2


class JobSink(Protocol):
    def submit(self, job: events_pb2.Job) -> None: ...


class CollectingJobSink:
    def __init__(self) -> None:
        self.jobs: list[events_pb2.Job] = []

    def submit(self, job: events_pb2.Job) -> None:
        self.jobs.append(job)


def make_job(session_id: str, epoch: int, conversation: list[tuple[str, str, int]],
             tool: str = "", arguments_json: str = "", urgent: bool = False) -> events_pb2.Job:
    return events_pb2.Job(
        session_id=session_id,
        job_id=uuid.uuid4().hex,
        epoch=epoch,
        conversation=[events_pb2.ConversationTurn(role=r, text=t, tick=k) for r, t, k in conversation],
        requested_tool=events_pb2.ToolRequest(tool=tool, arguments_json=arguments_json),
        urgent=urgent,
        created_unix_ms=int(time.time() * 1000),
    )
