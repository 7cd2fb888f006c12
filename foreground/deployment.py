"""The foreground as a Ray Serve deployment.

Serve owns each replica's lifecycle, health, placement and scaling; the latency-critical
session stream does not go through Serve's proxy. Measured here (Ray 2.60, 2 cores, 6,400-byte
echo): Serve's gRPC proxy relays a bidirectional stream at 2.85 ms per message for one stream
and ~25 ms median / 47 ms p99 at 16 streams (the replica pulls every inbound message from the
proxy with a separate Ray call), while a plain `grpc.aio` server inside the replica stays at
2-3 ms median / 5-7 ms p99 at 16. So each replica runs its own `grpc.aio` server on its own
port; a session is opened by a routed call (`open_session` through the deployment handle,
which picks a replica with room and records `session -> address` in Redis), then streamed
straight to that port, or through a gateway that looks the session up.

Every replica journals its sessions in Redis (`serve.session_journal`); a routed open that names
a session whose replica was lost restores it here (`SessionHost`).

That port takes API keys like every entry point (`protos.api_keys`), and TLS or mTLS when the
config's `tls` section names certificates (`protos.tls`). Under `microturn up` it listens on
loopback only: the gateway beside it is its one caller there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
import ray
import torch
from ray import serve
from ray.serve.config import RequestRouterConfig

from foreground.engine.input_validation import InvalidInput
from foreground.engine.percentiles import percentile
from foreground.engine.session_slots import SessionsFull
from foreground.engine.tick_scheduler import TickScheduler
from foreground.engine.warm_up import warm_up
from foreground.engine.turn_policy import TurnPolicyConfig, resolve_policy
from foreground.family_loader import load_family
from foreground.serve.free_slot_router import FreeSlotRouter
from foreground.serve.interaction_service import ReplicaInteractionService
from foreground.serve.job_sink import RedisJobSink
from foreground.serve.metrics import ForegroundMetrics
from foreground.serve.result_follower import ResultFollower
from foreground.serve.session_directory import SessionDirectory
from foreground.serve.session_host import (
    BusUnavailable,
    HostSettings,
    SessionElsewhere,
    SessionHost,
    SessionNotFound,
    WrongToken,
)
from foreground.serve.session_journal import SessionJournal
from foreground.serve.session_limits import SessionLimits
from protos.api_keys import ApiKeyInterceptor, ApiKeys
from protos.event_bus import EventBus
from protos.gc_pauses import freeze_startup_objects
from protos.job_stream import JobStream
from protos.microturn.v1 import interaction_pb2, interaction_pb2_grpc
from protos.standard_services import add_standard_services, mark_not_serving, mark_serving
from protos.tls import add_port

if TYPE_CHECKING:
    from cluster.config import TlsConfig

log = logging.getLogger(__name__)

GIL_SWITCH_INTERVAL_S = 0.0005
INTERACTION = interaction_pb2.DESCRIPTOR.services_by_name["Interaction"].full_name
ANY_INTERFACE = ("0.0.0.0", "::", "[::]")


@dataclass(frozen=True)
class ReplicaSettings:
    """What a replica needs to start (plain values: it crosses into a Ray actor)."""

    max_sessions: int = 64
    preset: str = "tiny"
    device: str = "cpu"
    dtype: str = "float32"
    checkpoint: str | None = None
    turn_policy: str = "auto"
    backchannel_max_ms: float = 600.0
    min_end_silence_ms: float = 0.0
    weave_max_wait_ms: float = 1000.0
    invariant_kernels: bool = True
    tick_ms: int = 200
    redis_url: str | None = None
    threads: int = 0  # torch intra-op threads; 0: one per CPU the replica was given
    idle_timeout_s: float = 30.0
    resume_grace_s: float = 15.0
    limits: dict = field(default_factory=dict)  # SessionLimits' fields (`limits:` in the config)
    drain_grace_s: float = 2.0
    bind_host: str | None = None  # unset: see `session_bind_host`
    gateway_node_ip: str | None = None  # `microturn up`'s gateway runs on this node
    api_key_hashes: tuple[str, ...] = ()  # SHA-256 of each accepted API key
    auth_disabled: bool = False
    tls: TlsConfig | None = None  # the session port's certificates (`tls:` in the config); None: plaintext


class ForegroundReplica:
    """One replica: a tick engine with `max_sessions` slots and its own session port."""

    async def __init__(self, settings: ReplicaSettings) -> None:
        self.settings = settings
        # The tick runs in a worker thread; chunks arrive on the event loop thread. Python
        # hands the GIL over every 5 ms by default, which showed up as 5-8 ms p99 inbound
        # latency: ask for 0.5 ms.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        torch.set_num_threads(settings.threads or max(1, int(os.environ.get("OMP_NUM_THREADS", "0"))
                                                      or len(os.sched_getaffinity(0))))
        family = load_family(settings.checkpoint, settings.preset, settings.device, settings.dtype)
        self.bus = EventBus.from_url(settings.redis_url) if settings.redis_url else None
        jobs = RedisJobSink(JobStream(self.bus.redis), asyncio.get_running_loop()) if self.bus else None
        # A checkpoint with a trained end-of-turn detector (the seeded default ships one) says so.
        calibrated = family.head_calibrated
        turn = TurnPolicyConfig(policy=resolve_policy(settings.turn_policy, calibrated), head_calibrated=calibrated,
                                backchannel_max_ms=settings.backchannel_max_ms,
                                min_end_silence_ms=settings.min_end_silence_ms,
                                weave_max_wait_ms=settings.weave_max_wait_ms)
        log.info("turn policy %s (configured: %s; turn head %s)", turn.policy, settings.turn_policy,
                 "trained" if calibrated else "seeded")
        limits = SessionLimits(**settings.limits)
        engine = TickScheduler(family, settings.max_sessions, turn, jobs=jobs,
                               text_queue_bytes=limits.text_queue_bytes,
                               invariant_kernels=settings.invariant_kernels)
        warm_up(engine)  # first-use costs before the first live tick
        keys = ApiKeys(settings.api_key_hashes, required=not settings.auth_disabled)
        self.server = grpc.aio.server(interceptors=[ApiKeyInterceptor(keys)])
        host = session_bind_host(settings)
        port = add_port(self.server, f"{host}:0", settings.tls)
        advertised = ray.util.get_node_ip_address() if host in ANY_INTERFACE else host
        self.address = f"{advertised}:{port}"
        self.replica_id = _replica_id()
        self.directory = (SessionDirectory.from_url(settings.redis_url, limits.events_kept_after_close_s)
                          if settings.redis_url else None)
        self.journal = (SessionJournal.from_url(settings.redis_url, self.replica_id, self.address)
                        if settings.redis_url else None)
        self.host = SessionHost(engine, HostSettings(
            replica_id=self.replica_id, address=self.address, tick_ms=family.shape.tick_ms,
            idle_timeout_s=settings.idle_timeout_s, resume_grace_s=settings.resume_grace_s,
            limits=limits, tls=settings.tls), self.directory,
            ForegroundMetrics(self.replica_id, family.shape.tick_ms), journal=self.journal)
        if jobs is not None:  # a job Redis would not take reaches its client as an error
            jobs.on_lost = self.host.delegation_failed
        interaction_pb2_grpc.add_InteractionServicer_to_server(ReplicaInteractionService(self.host), self.server)
        self.health = add_standard_services(self.server, [INTERACTION])
        follower = ResultFollower(self.bus, lambda: list(self.host.sessions), self.host.on_event) if self.bus else None
        await self.host.start(follower)
        await self.server.start()
        await mark_serving(self.health, [INTERACTION])
        freeze_startup_objects(f"foreground replica {self.replica_id}")
        log.info("foreground replica %s: %d slots, sessions on %s", self.replica_id, settings.max_sessions,
                 self.address)

    async def open_session(self, request: bytes, avoid: tuple[str, ...] = ()) -> tuple[bytes, str, str, str]:
        """The routed open: reserve a slot here, or restore a session whose replica was lost
        (the request names it). Returns (serialized `SessionOpened`, this replica's id, "", "")
        or (b"", id, code, detail) where code is a gRPC status name: RESOURCE_EXHAUSTED when
        this replica is full (the caller retries with this id in `avoid`, which
        `FreeSlotRouter` reads), FAILED_PRECONDITION when the session lives on a replica that
        is alive (detail: its address), else NOT_FOUND, PERMISSION_DENIED, INVALID_ARGUMENT,
        UNAVAILABLE (Redis), with the reason as detail."""
        try:
            session, resumed = await self.host.open(interaction_pb2.SessionOpen.FromString(request))
        except SessionsFull as e:
            return b"", self.replica_id, "RESOURCE_EXHAUSTED", str(e)
        except SessionElsewhere as e:
            return b"", self.replica_id, "FAILED_PRECONDITION", e.address
        except SessionNotFound as e:
            return b"", self.replica_id, "NOT_FOUND", str(e.args[0])
        except WrongToken as e:
            return b"", self.replica_id, "PERMISSION_DENIED", f"open.token: {e}"
        except InvalidInput as e:
            return b"", self.replica_id, "INVALID_ARGUMENT", str(e)
        except BusUnavailable as e:
            return b"", self.replica_id, "UNAVAILABLE", str(e)
        return self.host.opened_message(session, resumed).SerializeToString(), self.replica_id, "", ""

    def session_state(self, session_id: str) -> dict | None:
        """A held session as the engine has it (operators, tests): None if not held here."""
        session = self.host.sessions.get(session_id)
        if session is None or session_id not in self.host.engine.slots:
            return None
        state = self.host.engine.slots.get(session_id).state
        return {"replica_id": self.replica_id, "address": self.address, "seq": session.seq,
                "epoch": state.turn.epoch, "model_speaking": state.turn.model_speaking,
                "conversation": [list(entry) for entry in state.conversation],
                "restored": session.restored_through > 0}

    def describe(self) -> dict:
        stats = self.host.ticker.stats
        return {"replica_id": self.replica_id, "address": self.address, "pid": os.getpid(), "niceness": os.nice(0),
                "max_sessions": self.settings.max_sessions, "live": self.host.engine.slots.live,
                "sessions": sorted(self.host.sessions), "restored_sessions": self.host.restored,
                "ticks": stats.ticks, "overruns": stats.overruns,
                "tick_ms_p50": round(percentile(stats.tick_ms, 50), 2) if stats.tick_ms else None,
                "tick_ms_p99": round(percentile(stats.tick_ms, 99), 2) if stats.tick_ms else None,
                "tick_start_lag_ms_p50": round(percentile(stats.start_lag_ms, 50), 2) if stats.start_lag_ms else None,
                "tick_start_lag_ms_p99": round(percentile(stats.start_lag_ms, 99), 2) if stats.start_lag_ms else None}

    def record_routing_stats(self) -> dict:
        """What `FreeSlotRouter` routes opens by."""
        return {"free_slots": self.host.engine.slots.free, "at": time.monotonic()}

    async def check_health(self) -> None:
        """Serve's health probe: a replica whose tick loop died is replaced. A Redis outage
        does not fail it: the replica's Redis loops back off and go on (`SessionHost`), and
        replacing the replica would only drop its sessions."""
        if not self.host.running:
            raise RuntimeError("the tick loop has stopped")

    async def __del__(self) -> None:
        """Drain: fail health checks, tell clients to reconnect, then stop."""
        await mark_not_serving(self.health, [INTERACTION])
        await self.host.drain()
        await self.server.stop(grace=self.settings.drain_grace_s)
        await self.host.stop()
        if self.directory:
            try:
                await self.directory.withdraw_replica(self.replica_id)
            except Exception as e:  # Redis is down: the key expires by itself (REPLICA_TTL_S)
                log.warning("could not withdraw replica %s from the directory: %s", self.replica_id, e)
            await self.directory.close()
        if self.journal:  # the journals stay: the sessions can be reopened elsewhere
            await self.journal.close()
        if self.bus:
            await self.bus.close()


def session_bind_host(settings: ReplicaSettings) -> str:
    """Where the session port listens: `bind_host` when set; else loopback for a replica on the
    node of `microturn up`'s gateway (nothing else on the machine or the network needs it), and
    every interface for any other replica (a cluster's gateways reach it across nodes)."""
    if settings.bind_host:
        return settings.bind_host
    if settings.gateway_node_ip and settings.gateway_node_ip == ray.util.get_node_ip_address():
        return "127.0.0.1"
    return "0.0.0.0"


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside Serve (tests build the class directly)
        return f"local-{os.getpid()}"


ForegroundDeployment = serve.deployment(
    ForegroundReplica, name="foreground", graceful_shutdown_timeout_s=10,
    request_router_config=RequestRouterConfig(request_router_class=FreeSlotRouter,
                                              request_routing_stats_period_s=1.0))
