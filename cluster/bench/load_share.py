"""What one `bench load` client process is asked to do: where the cluster is, how long to
stream, and its share of the sessions, each with its own timing draws. Plain picklable
dataclasses: they cross into spawned processes as they are."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cluster.bench.load_tally import CHUNK_S

RESULT_EVERY_S = 2.0  # a background result per session this often


@dataclass(frozen=True)
class LoadTarget:
    via: str  # "direct" | "gateway" | "realtime"
    gateway: str  # the gateway's gRPC address
    seconds: float  # of audio each session streams
    realtime_url: str | None = None  # http://host:port of /v1/realtime (via realtime)
    redis_url: str | None = None  # where background results are published (None: none are)
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class SessionPlan:
    index: int
    guard_s: float  # gRPC: how long before the replica's tick each chunk is sent (the chunk clock)
    result_phase_s: float  # when in RESULT_EVERY_S this session's background results come
    phase_s: float  # realtime: when in a tick this client's appends go out (it does not know the ticks)


def plan_sessions(sessions: int, seed: int = 0) -> list[SessionPlan]:
    """Clients cut their chunks a little before the replica's tick (`ClientSession.chunk_clock`),
    as the SDK does for a live microphone; how much before differs per client (20-80 ms), as
    their networks would. Results come at a random phase per session, as independent workers
    finish at any point of a tick. Realtime clients append at a random phase of their own."""
    rng = np.random.default_rng(seed)
    guards = rng.uniform(0.02, 0.08, sessions)
    result_phases = rng.uniform(0.0, RESULT_EVERY_S, sessions)
    phases = rng.uniform(0.0, CHUNK_S, sessions)
    return [SessionPlan(i, float(guards[i]), float(result_phases[i]), float(phases[i])) for i in range(sessions)]


def split(plans: list[SessionPlan], processes: int) -> list[list[SessionPlan]]:
    """Round-robin shares, none empty."""
    processes = max(1, min(processes, len(plans)))
    return [plans[k::processes] for k in range(processes)]
