"""`microturn bench soak`: N concurrent sessions for M minutes, with churn, and every
process's memory.

Each of N workers holds one session at a time and replaces it when it ends: a session lives a
random 25-75 % of min(run, 2 min), then its worker opens the next one at once, so sessions close
and join throughout. While it lives, a session streams a 200 ms chunk in real time (cut to the
replica's tick, as `bench load` does), sends text every 4-10 s, a small JPEG frame (160x120)
every 3-8 s and a tool request (clock, calculator or a local web search) every 10-25 s, well
within `limits.tool_requests_per_minute`; the real background pool runs them. Workers
alternate between streaming straight to the replica and through the gateway (`--via mixed`).

The report: sessions opened and closed, messages received by kind, late chunks (a chunk that
waited more than one tick, or was never used; beside it the replicas' own count of ticks without
a chunk, which includes the 3 after each session's last chunk while it settles), errors by kind (`Error` messages by code and field, failed opens and streams by status,
tool results that carry an error, client exceptions), and the RSS of every process of the
cluster that runs on this machine (each foreground replica, the background pool, Serve's
controller, the gateway, redis-server, Ray's raylet and GCS when this bench started them, and
this client) at the end of the warm-up and at the end of the run, with the growth in %.
Processes are found from Ray's actor table (this client joins the cluster's Ray) and, for the
gateway and redis-server, by the port they listen on.
"""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import grpc
import numpy as np

from cluster.bench.load import _cluster_or_address
from cluster.client import ClientSession, InteractionClient
from cluster.config import MicroturnConfig
from cluster.local_api_key import find_api_key
from protos.microturn.v1 import interaction_pb2 as pb

log = logging.getLogger(__name__)

CHUNK_S = 0.2
SETTLE_S = 0.6  # after a session's last chunk: let it be used before closing
TEXT_EVERY_S = (4.0, 10.0)
VIDEO_EVERY_S = (3.0, 8.0)
TOOL_EVERY_S = (10.0, 25.0)  # at most 6 a minute: the limit is 20
TEXTS = ("hello there", "what is the weather like in Paris", "tell me more about that",
         "wait, one more thing", "can you check the time in Tokyo", "thanks, that helps")
TOOLS = (("clock", '{"timezone": "Europe/Paris"}'), ("calculator", '{"expression": "2 * (3 + 4) ** 2"}'),
         ("web_search", '{"query": "weather in Paris", "max_results": 2}'))
PROGRESS_EVERY_S = 30.0


@dataclass
class SoakTally:
    opened: int = 0
    closed: int = 0  # sessions whose `closed` came back
    live: int = 0
    messages: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)
    error_samples: list[str] = field(default_factory=list)
    chunks_sent: int = 0
    late_chunks: int = 0
    silent_ticks: int = 0  # SessionClosed.late_chunks: ticks without a chunk, ~3 a session after its last
    texts: int = 0
    frames: int = 0
    tool_requests: int = 0
    tool_results: int = 0
    replicas: set[str] = field(default_factory=set)  # session addresses seen (host:port)

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(f"{kind}: {detail}"[:300])


def _voice_chunk(i: int) -> bytes:
    t = np.arange(3200) / 16_000
    return (0.2 * np.sin(2 * math.pi * (120 + 7 * i) * t) * 32767).astype("<i2").tobytes()


def _frames(count: int = 4) -> list[bytes]:
    """Small JPEGs (160x120, as the console's camera sends), a few different ones."""
    from PIL import Image

    rng, frames = np.random.default_rng(7), []
    for _ in range(count):
        pixels = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=70)
        frames.append(buf.getvalue())
    return frames


class _Every:
    """A next-due time, drawn afresh after each use."""

    def __init__(self, rng: np.random.Generator, span: tuple[float, float], now: float) -> None:
        self.rng, self.span = rng, span
        self.due = now + rng.uniform(1.0, span[1])  # the first one early: short sessions send some too

    def take(self, now: float) -> bool:
        if now < self.due:
            return False
        self.due = now + self.rng.uniform(*self.span)
        return True


async def _worker(client: InteractionClient, i: int, direct: bool, start_at: float, stop_at: float,
                  lifetime_span: tuple[float, float], tally: SoakTally, frames: list[bytes]) -> None:
    rng = np.random.default_rng(1000 + i)
    chunk = _voice_chunk(i)
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    while time.monotonic() < stop_at - 1.0:
        lifetime = rng.uniform(*lifetime_span)
        end = min(stop_at, time.monotonic() + lifetime)
        try:
            await _one_session(client, direct, end, rng, chunk, tally, frames)
        except grpc.aio.AioRpcError as e:
            tally.error(f"stream:{e.code().name}", e.details() or "")
        except Exception as e:  # counted, not raised: one failing session must not end the soak
            tally.error(f"exception:{type(e).__name__}", str(e))
        await asyncio.sleep(rng.uniform(0.0, 0.5))  # the next user joins


async def _one_session(client: InteractionClient, direct: bool, end: float, rng: np.random.Generator,
                       chunk: bytes, tally: SoakTally, frames: list[bytes]) -> None:
    try:
        session = client.session(direct=direct)
        await session.__aenter__()
    except grpc.aio.AioRpcError as e:
        tally.error(f"open:{e.code().name}", e.details() or "")
        return
    try:
        tally.opened += 1
        tally.live += 1
        tally.replicas.add(session.opened.replica)
        receiver = asyncio.create_task(_receive(session, tally))
        now = time.monotonic()
        text, video, tool = (_Every(rng, TEXT_EVERY_S, now), _Every(rng, VIDEO_EVERY_S, now),
                             _Every(rng, TOOL_EVERY_S, now))
        t0 = session.chunk_clock(guard_s=float(rng.uniform(0.02, 0.08)), period_s=CHUNK_S)
        seq = 0
        while (now := time.monotonic()) < end and not receiver.done():
            seq += 1
            await asyncio.sleep(max(0.0, t0 + seq * CHUNK_S - now))
            await session.send_audio(chunk, seq=seq)
            now = time.monotonic()
            if text.take(now):
                await session.send_text(TEXTS[int(rng.integers(len(TEXTS)))])
                tally.texts += 1
            if video.take(now):
                frame = frames[int(rng.integers(len(frames)))]
                await session.send(pb.ClientMessage(video=pb.VideoFrame(seq=seq, jpeg=frame)))
                tally.frames += 1
            if tool.take(now):
                name, arguments = TOOLS[int(rng.integers(len(TOOLS)))]
                await session.request_tool(name, arguments)
                tally.tool_requests += 1
        await asyncio.sleep(SETTLE_S)
        await session.close("soak: the user leaves")
        await asyncio.wait_for(receiver, timeout=15)
    finally:
        tally.live -= 1
        await session.__aexit__(None, None, None)


async def _receive(session: ClientSession, tally: SoakTally) -> None:
    used: set[int] = set()
    async for _, message in session.messages():
        kind = message.WhichOneof("payload")
        tally.messages[kind] += 1
        if kind == "audio":
            timing = message.audio.timing
            if timing.input_seq:
                used.add(timing.input_seq)
                if timing.tick_started_unix_ns - timing.input_received_unix_ns > CHUNK_S * 1e9:
                    tally.late_chunks += 1
        elif kind == "error":
            e = message.error
            tally.error(f"error:{e.code}:{e.field}", e.message)
        elif kind == "tool_result":
            tally.tool_results += 1
            if message.tool_result.error:
                tally.error(f"tool_result:{message.tool_result.tool}", message.tool_result.error)
        elif kind == "go_away":
            tally.error("go_away", message.go_away.reason)
        elif kind == "closed":
            tally.closed += 1
            tally.silent_ticks += message.closed.late_chunks
            break
    tally.chunks_sent += len(session.sent_ns)
    tally.late_chunks += len(set(session.sent_ns) - used)


# -- the processes and their memory -------------------------------------------------------------


def _rss_mb(pid: int) -> float | None:
    import psutil

    try:
        return round(psutil.Process(pid).memory_info().rss / 2**20, 1)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _listener(port: int) -> int | None:
    """The pid of the process listening on this TCP port (on this machine)."""
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return conn.pid
    except psutil.AccessDenied:
        return None
    return None


def _port(address: str | None) -> int | None:
    if not address:
        return None
    try:
        return urlparse(address if "://" in address else f"//{address}").port
    except ValueError:
        return None


def cluster_processes(gateway: str | None, redis_url: str | None, replica_addresses=()) -> dict[str, int]:
    """label -> pid of each process of the cluster on this machine (see the module docstring)."""
    import psutil

    me = os.getpid()
    found: dict[str, int] = {}
    for label, address in (("gateway", gateway), ("redis-server", redis_url)):
        pid = _listener(_port(address)) if _port(address) else None
        if pid is not None and pid != me:
            found[label] = pid
    gateway_here = bool(_port(gateway)) and _listener(_port(gateway)) == me  # `LocalCluster` runs it here
    found["client+gateway" if gateway_here else "client"] = me
    try:
        import ray

        if ray.is_initialized():
            local_node = ray.get_runtime_context().get_node_id()
            from ray._private.state import actors

            for actor in actors().values():
                if actor.get("State") != "ALIVE" or not actor.get("Pid"):
                    continue
                if (actor.get("Address") or {}).get("NodeID") not in (None, local_node):
                    continue  # another machine: its RSS cannot be read from here
                name = actor.get("ActorClassName") or "actor"
                if name.startswith("ServeReplica:"):
                    app = name.split(":")[1]
                    name = {"foreground": "replica", "background": "background_pool"}.get(app, f"serve:{app}")
                label, n = name, 2
                while label in found:
                    label, n = f"{name}#{n}", n + 1
                found[label] = actor["Pid"]
    except Exception as e:  # no Ray here: replicas are still found by their session ports
        log.info("Ray's actor table is not readable (%s); finding replicas by their ports", e)
    pids = set(found.values())
    for address in replica_addresses:
        pid = _listener(_port(address)) if _port(address) else None
        if pid is not None and pid not in pids:
            found[f"replica@{address}"] = pid
            pids.add(pid)
    for child in psutil.Process(me).children(recursive=True):  # a Ray this bench started
        try:
            name = child.name()
        except psutil.Error:
            continue
        if name in ("raylet", "gcs_server") and child.pid not in pids:
            found[name] = child.pid
    return found


def _snapshot(processes: dict[str, int]) -> dict[str, float | None]:
    return {label: _rss_mb(pid) for label, pid in processes.items()}


# -- the run ------------------------------------------------------------------------------------


def default_warmup_s(total_s: float, longest_session_s: float, kept_after_close_s: float) -> float:
    """Until what the cluster holds is in its steady state: the first sessions have all closed
    and their event streams have expired from Redis (kept `limits.events_kept_after_close_s`),
    so from then on streams leave as fast as they come. At most 40 % of the run."""
    return min(longest_session_s + kept_after_close_s, 0.4 * total_s)


async def run_soak(config: MicroturnConfig, sessions: int, minutes: float, via: str = "mixed",
                   address: str | None = None, warmup_s: float | None = None) -> dict:
    sys.setswitchinterval(0.0005)  # this process also hosts Ray's driver threads: see deployment.py
    total_s = minutes * 60.0
    span = min(total_s, 120.0)
    lifetime_span = (max(5.0, 0.25 * span), max(6.0, 0.75 * span))
    if warmup_s is None:
        warmup_s = default_warmup_s(total_s, lifetime_span[1], config.limits.events_kept_after_close_s)
    frames = _frames()
    tally = SoakTally()
    async with _cluster_or_address(config, address) as (gateway, cluster):
        if cluster is None:
            _join_ray(config)
        redis_url = cluster.endpoints.redis_url if cluster else config.redis.url
        api_key = cluster.api_key if cluster else find_api_key(config.auth.key_file)
        async with InteractionClient(gateway, api_key) as client:
            started = time.monotonic()
            start_at, stop_at = started + 1.0, started + 1.0 + total_s
            stagger = np.random.default_rng(0).uniform(0.0, min(5.0, total_s / 10), sessions)
            log.info("soak: %d sessions for %.1f min (%s), warm-up %.0f s", sessions, minutes, via, warmup_s)
            workers = [asyncio.create_task(_worker(client, i, _direct(via, i), start_at + stagger[i], stop_at,
                                                   lifetime_span, tally, frames))
                       for i in range(sessions)]
            await asyncio.sleep(max(0.0, start_at + warmup_s - time.monotonic()))
            processes = cluster_processes(gateway, redis_url, tally.replicas)
            warm = _snapshot(processes)
            log.info("soak: warm-up over; RSS MB %s", warm)
            next_log = time.monotonic() + PROGRESS_EVERY_S
            while time.monotonic() < stop_at - 1.5:
                await asyncio.sleep(max(0.0, min(next_log, stop_at - 1.5) - time.monotonic()))
                if time.monotonic() >= next_log:
                    next_log += PROGRESS_EVERY_S
                    log.info("soak: %.0f/%.0f s, %d live, %d opened, %d closed, %d messages, %d late chunks, "
                             "errors %s", time.monotonic() - start_at, total_s, tally.live, tally.opened,
                             tally.closed, sum(tally.messages.values()), tally.late_chunks,
                             dict(tally.errors) or 0)
            end = _snapshot(processes)  # with the sessions still live, as at the warm-up's end
            log.info("soak: streaming over; RSS MB %s; closing", end)
            await asyncio.gather(*workers)
        replica = await cluster.foreground.describe.remote() if cluster else {}
    rss = {label: {"pid": processes[label], "warmup_mb": warm[label], "end_mb": end[label],
                   "growth_pct": _growth(warm[label], end[label])} for label in processes}
    return {
        "bench": "soak",
        "sessions": sessions,
        "minutes": minutes,
        "via": via,
        "warmup_s": warmup_s,
        "session_lifetime_s": [round(x, 1) for x in lifetime_span],
        "sessions_opened": tally.opened,
        "sessions_closed": tally.closed,
        "messages_received": sum(tally.messages.values()),
        "messages_by_kind": dict(sorted(tally.messages.items())),
        "chunks_sent": tally.chunks_sent,
        "late_chunks": tally.late_chunks,
        "replica_silent_ticks": tally.silent_ticks,  # the replicas' count: includes the settle after each
                                                     # session's last chunk (SETTLE_S: 3 ticks a session)
        "texts_sent": tally.texts,
        "video_frames_sent": tally.frames,
        "tool_requests_sent": tally.tool_requests,
        "tool_results": tally.tool_results,
        "errors": sum(tally.errors.values()),
        "errors_by_kind": dict(sorted(tally.errors.items())),
        "error_samples": tally.error_samples,
        "rss": rss,
        "rss_growth_pct_max": max((v["growth_pct"] for v in rss.values() if v["growth_pct"] is not None),
                                  default=None),
        "tick_ms_p50": replica.get("tick_ms_p50"),
        "tick_ms_p99": replica.get("tick_ms_p99"),
        "overruns": replica.get("overruns"),
    }


def _direct(via: str, i: int) -> bool:
    return via == "direct" or (via == "mixed" and i % 2 == 0)


def _growth(before: float | None, after: float | None) -> float | None:
    if not before or after is None:
        return None
    return round(100.0 * (after - before) / before, 2)


def _join_ray(config: MicroturnConfig) -> None:
    """Against a running cluster: join its Ray when told where it is (`ray.address`, i.e.
    RAY_ADDRESS), only to read its actor table; otherwise replicas are found by their session
    ports (and the background pool is not measured: another Ray on the machine may not be it)."""
    import ray

    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if not address or ray.is_initialized():
        return
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as e:
        log.info("soak: not joining Ray (%s); replicas are found by their session ports", e)

