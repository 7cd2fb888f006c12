"""`bench load`'s clients spread over spawned processes (`--client-processes`), so that at 64
sessions the bench measures the server, not one client process's event loop reading 64
streams. Each process runs its share of the sessions against the same cluster and sends its raw
samples back; the parent merges them and takes percentiles once (`LoadTally.report`).

The parent starts the processes (spawn: nothing of its Ray driver or gateway is inherited),
waits until each has imported what it needs, then names one wall-clock start for all (the
processes share the machine's clock), and ends every one of them before it returns: joined
when they finish, terminated (then killed) when they do not.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from cluster import event_loop
from cluster.bench.load_grpc_client import run_grpc_sessions
from cluster.bench.load_pacing import monotonic_at
from cluster.bench.load_realtime_client import run_realtime_sessions
from cluster.bench.load_share import LoadTarget, SessionPlan, split
from cluster.bench.load_tally import LoadTally
from protos.event_bus import EventBus

log = logging.getLogger(__name__)

SESSIONS_PER_PROCESS = 16
READY_TIMEOUT_S = 120.0  # spawn and imports, on a busy 2-core machine
START_MARGIN_S = 2.0  # from "go" to the first audio: every process opens its sessions meanwhile
REPLY_MARGIN_S = 90.0  # past the audio: drains, closes, the per-session timeouts
READY = "ready"


def default_processes(sessions: int) -> int:
    return max(1, math.ceil(sessions / SESSIONS_PER_PROCESS))


async def run_share(target: LoadTarget, plans: list[SessionPlan], start_unix: float) -> LoadTally:
    """One process's sessions on its event loop; the audio starts at `start_unix` (wall clock)."""
    tally = LoadTally()
    bus = EventBus.from_url(target.redis_url) if target.redis_url else None
    run = run_realtime_sessions if target.via == "realtime" else run_grpc_sessions
    try:
        await run(target, plans, monotonic_at(start_unix), tally, bus)
    finally:
        if bus:
            await bus.close()
    return tally


async def run_clients(target: LoadTarget, plans: list[SessionPlan], processes: int) -> LoadTally:
    """All sessions, in `processes` spawned processes (0: in this one), merged."""
    if processes <= 0:
        return await run_share(target, plans, time.time() + START_MARGIN_S)
    context = multiprocessing.get_context("spawn")
    workers: list[tuple[BaseProcess, Connection]] = []
    try:
        for k, share in enumerate(split(plans, processes)):
            mine, theirs = context.Pipe()
            process = context.Process(target=_client_process, args=(theirs, target, share),
                                      name=f"microturn-bench-client-{k}", daemon=True)
            process.start()
            theirs.close()
            workers.append((process, mine))
        ready = await asyncio.gather(*(_reply(conn, READY_TIMEOUT_S) for _, conn in workers))
        if any(r != READY for r in ready):
            raise RuntimeError(f"{sum(r != READY for r in ready)} of {len(workers)} client processes did not start")
        start_unix = time.time() + START_MARGIN_S
        for _, conn in workers:
            conn.send(start_unix)
        replies = await asyncio.gather(*(_reply(conn, START_MARGIN_S + target.seconds + REPLY_MARGIN_S)
                                         for _, conn in workers))
    finally:
        for _, conn in workers:  # a process still waiting for the start reads EOF and leaves
            conn.close()
        await asyncio.to_thread(end_processes, [process for process, _ in workers])
    tally = LoadTally()
    for k, reply in enumerate(replies):
        if isinstance(reply, LoadTally):
            tally.absorb(reply)
        else:
            tally.errors.append(f"client process {k} sent no results (exit code {workers[k][0].exitcode})")
    return tally


def _client_process(conn: Connection, target: LoadTarget, plans: list[SessionPlan]) -> None:
    """A spawned client process: say it is ready, wait for the start, run, send the tally."""
    try:
        conn.send(READY)
        start_unix = conn.recv()
        tally = event_loop.run(run_share(target, plans, start_unix))
    except EOFError:  # the parent gave up before the start
        return
    except Exception as e:  # the parent counts it; the other processes' samples still count
        tally = LoadTally(errors=[f"client process: {type(e).__name__}: {e}"])
    try:
        conn.send(tally)
    except OSError:
        pass
    finally:
        conn.close()


async def _reply(conn: Connection, timeout_s: float) -> object | None:
    """The next object from a client process, without blocking the event loop (it may host the
    gateway); None when the process ended or stayed silent for `timeout_s`."""
    loop = asyncio.get_running_loop()
    readable = loop.create_future()
    loop.add_reader(conn.fileno(), lambda: readable.done() or readable.set_result(None))
    try:
        await asyncio.wait_for(readable, timeout_s)
    except TimeoutError:
        return None
    finally:
        loop.remove_reader(conn.fileno())
    os.set_blocking(conn.fileno(), True)  # uvloop's add_reader made it non-blocking: recv would stop short
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None


def end_processes(processes: list[BaseProcess], grace_s: float = 5.0) -> None:
    """No process the bench started outlives it: joined, else terminated, else killed."""
    for process in processes:
        process.join(grace_s)
        if process.is_alive():
            log.warning("%s did not finish: terminating it", process.name)
            process.terminate()
            process.join(grace_s)
        if process.is_alive():
            process.kill()
            process.join()
