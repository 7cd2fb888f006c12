"""The job consumer: claim a job, plan its tool calls, run them, publish results, acknowledge.

Crash safety rests on two things. A job is acknowledged only after all its events are
published, so a worker that dies mid-job leaves it pending and another worker reclaims it
(XAUTOCLAIM) once it has been idle for `reclaim_idle_ms`. And every event id is derived from
(job id, call index, kind) while the plan is pinned in Redis the first time it is made, so the
retry makes the same calls under the same ids and the bus's idempotency lets the session see
each one once. A live worker on a long job touches its entries so they never look abandoned.

Nothing is dropped silently: a failing reasoner becomes an `Error` event, a failing tool a
`ToolResult` with `error` set, and either way the job is acknowledged (retrying cannot fix
it). Only a failure to publish (Redis down) leaves the job unacknowledged, for a later retry.
A job that has crashed its workers `max_deliveries` times ends with an `ABORTED` error rather
than taking down every replica in turn.

A Redis outage ends nothing either: the client retries each command for a few seconds
(`protos.redis_client`), and a lane whose round still fails logs it and backs off (up to 5 s)
before claiming again, so jobs wait and are then worked, and the pool's health stays green.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from background.metrics import PoolMetrics
from background.reasoners.base import PlannedCall, Reasoner, ReasonerError
from protos.event_bus import EventBus
from protos.job_stream import JobStream, job_age_s
from protos.microturn.v1 import events_pb2
from protos.redis_client import OutageBackoff

log = logging.getLogger(__name__)

UI_TOOL = "ui.render"
DEFAULT_RECLAIM_IDLE_MS = 30_000
DEFAULT_MAX_DELIVERIES = 3
OWN_RETRIES = 3  # a lane works a job it could not finish this often before leaving it to a reclaim


class ToolRunner(Protocol):
    """What the worker needs of `background.tools.registry.ToolRegistry`."""

    def schemas(self) -> list[dict[str, Any]]: ...

    async def call(self, name: str, arguments_json: str) -> Any: ...  # -> ToolOutcome


@dataclass(slots=True)
class WorkerStats:
    claimed: int = 0
    reclaimed: int = 0
    finished: int = 0
    tool_errors: int = 0
    plan_errors: int = 0
    publish_failures: int = 0
    abandoned: int = 0  # given up on after max_deliveries attempts
    duplicate_events: int = 0  # published before by an earlier attempt at the same job


def event_id(job_id: str, index: int | str, kind: str) -> str:
    """The idempotency key of one event of a job: the same on every retry of the job."""
    return f"{job_id}:{index}:{kind}"


def _now_ms() -> int:
    return int(time.time() * 1000)


def encode_plan(calls: list[PlannedCall]) -> str:
    return json.dumps([[c.tool, c.arguments_json] for c in calls])


def decode_plan(plan: str) -> list[PlannedCall]:
    return [PlannedCall(tool, arguments) for tool, arguments in json.loads(plan)]


class JobWorker:
    """One consumer of `mt:jobs`. `run_once()` handles one batch (tests); `run_forever()`
    runs `concurrency` lanes until `stop()`."""

    def __init__(self, jobs: JobStream, bus: EventBus, reasoner: Reasoner, tools: ToolRunner,
                 consumer: str, reclaim_idle_ms: int = DEFAULT_RECLAIM_IDLE_MS,
                 concurrency: int = 1, claim_block_ms: int = 1000,
                 max_deliveries: int = DEFAULT_MAX_DELIVERIES, metrics: PoolMetrics | None = None) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.jobs, self.bus, self.reasoner, self.tools = jobs, bus, reasoner, tools
        self.consumer, self.reclaim_idle_ms = consumer, reclaim_idle_ms
        self.concurrency, self.claim_block_ms = concurrency, claim_block_ms
        self.max_deliveries = max_deliveries
        self.metrics = metrics  # None: record nothing (tests that build a worker without Ray)
        self.stats = WorkerStats()
        self._in_flight: set[str] = set()
        self._stopping = asyncio.Event()
        self._lanes: list[asyncio.Task] = []
        self.reclaim_period_s = min(5.0, max(0.1, reclaim_idle_ms / 2000))
        self._next_reclaim = 0.0

    # -- the loop ---------------------------------------------------------------------------

    async def run_once(self, block_ms: int | None = None, count: int = 1, reclaim: bool = True) -> int:
        """Reclaim up to `count` abandoned jobs (if `reclaim`), else claim new ones; process
        them. Returns how many jobs were handled."""
        batch, _ = await self._next_batch(count, block_ms, reclaim)
        for entry_id, job in batch:
            await self.process(entry_id, job)
        return len(batch)

    async def _next_batch(self, count: int, block_ms: int | None,
                          reclaim: bool) -> tuple[list[tuple[str, events_pb2.Job]], bool]:
        """Abandoned jobs first (True), else new ones (False). A job delivered more than
        `max_deliveries` times is given up on here, with an `Error` event: it has
        probably crashed every worker that took it, and would crash the next one too."""
        if reclaim:
            batch = await self.jobs.reclaim(self.consumer, self.reclaim_idle_ms, count=count)
            if batch:
                self.stats.reclaimed += len(batch)
                log.info("%s reclaimed %d abandoned job(s)", self.consumer, len(batch))
                deliveries = await self.jobs.delivery_counts([entry_id for entry_id, _ in batch])
                kept = []
                for entry_id, job in batch:
                    if deliveries.get(entry_id, 0) > self.max_deliveries:
                        await self._give_up(entry_id, job, deliveries[entry_id])
                    else:
                        kept.append((entry_id, job))
                return kept, True
        block_ms = self.claim_block_ms if block_ms is None else block_ms
        batch = await self.jobs.claim(self.consumer, count=count, block_ms=block_ms)
        self.stats.claimed += len(batch)
        return batch, False

    async def run_forever(self) -> None:
        """Lanes claim one job at a time; a heartbeat keeps long jobs owned. Returns after
        `stop()` once the lanes have finished their current jobs."""
        self._stopping.clear()
        await self._ensure_group()
        self._lanes = [asyncio.create_task(self._lane(i)) for i in range(self.concurrency)]
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            await asyncio.gather(*self._lanes, return_exceptions=True)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _ensure_group(self) -> None:
        """Create the consumer group, waiting out an outage (until `stop()`)."""
        backoff = OutageBackoff(f"{self.consumer}: creating the consumer group", logger=log)
        while not self._stopping.is_set():
            try:
                await self.jobs.ensure_group()
                return
            except Exception as e:
                await asyncio.sleep(backoff.failed(e))

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop claiming; let jobs in progress finish for up to `grace_s`, then cancel them
        (a cancelled job is not acknowledged: another worker reclaims it)."""
        self._stopping.set()
        lanes = [t for t in self._lanes if not t.done()]
        if not lanes:
            return
        _, late = await asyncio.wait(lanes, timeout=grace_s)
        for task in late:
            task.cancel()
        if late:
            log.warning("%s: %d job(s) cut short at stop; they will be reclaimed", self.consumer, len(late))
            await asyncio.wait(late, timeout=2.0)

    async def _lane(self, index: int) -> None:
        """Claim and work jobs one at a time. Reclaiming scans the group's pending list, so
        the lanes share one schedule for it: one lane looks every `reclaim_period_s` (at
        once again when it found something), the others only claim.

        A failed round (Redis unreachable, most likely) is logged and the lane backs off, then
        goes on. A job it had taken but could not finish stays its own: the lane works it again
        first (up to `OWN_RETRIES` times) rather than leave it idle until a reclaim, so an
        outage delays the job by about its own length, not by `reclaim_idle_ms`."""
        backoff = OutageBackoff(f"{self.consumer} lane {index}: claiming or publishing", logger=log)
        unfinished: list[tuple[str, events_pb2.Job]] = []
        tries = 0  # of the first unfinished job
        while not self._stopping.is_set():
            try:
                if not unfinished:
                    now = time.monotonic()
                    reclaim = now >= self._next_reclaim
                    if reclaim:
                        self._next_reclaim = now + self.reclaim_period_s
                    unfinished, reclaimed = await self._next_batch(1, None, reclaim)
                    if reclaimed:
                        self._next_reclaim = 0.0  # there may be more
                while unfinished:
                    tries += 1
                    await self.process(*unfinished[0])
                    unfinished.pop(0)
                    tries = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if unfinished and tries >= OWN_RETRIES:
                    log.warning("%s: job %s left to be reclaimed after %d tries", self.consumer,
                                unfinished[0][1].job_id, tries)
                    unfinished.pop(0)
                    tries = 0
                await asyncio.sleep(backoff.failed(e))
            else:
                backoff.succeeded()

    async def _heartbeat(self) -> None:
        period_s = max(0.05, self.reclaim_idle_ms / 3000)
        while True:
            await asyncio.sleep(period_s)
            if self._in_flight:
                try:
                    await self.jobs.touch(self.consumer, sorted(self._in_flight))
                except Exception:
                    log.warning("%s: heartbeat failed", self.consumer, exc_info=True)

    # -- one job ----------------------------------------------------------------------------

    async def process(self, entry_id: str, job: events_pb2.Job) -> None:
        """Plan, run, publish, acknowledge. Raises only when publishing fails (the job then
        stays pending for a retry)."""
        self._in_flight.add(entry_id)
        started = time.perf_counter()
        try:
            log.debug("%s: job %s (session %s, epoch %d, %.2f s old)", self.consumer, job.job_id,
                      job.session_id, job.epoch, job_age_s(job))
            calls = await self._plan(job)
            if calls is not None:
                for index, call in enumerate(calls):
                    await self._run_call(job, index, call)
            await self.jobs.ack(entry_id, job.job_id)
            self.stats.finished += 1
            if self.metrics:
                tool = job.requested_tool.tool or (calls[0].tool if calls else "")
                self.metrics.on_job(tool, time.perf_counter() - started)
        except Exception as e:
            self.stats.publish_failures += 1
            log.warning("%s: job %s left pending for a retry (%s: %s)", self.consumer, job.job_id,
                        type(e).__name__, e)
            raise
        finally:
            self._in_flight.discard(entry_id)

    async def _give_up(self, entry_id: str, job: events_pb2.Job, deliveries: int) -> None:
        self.stats.abandoned += 1
        log.error("%s: job %s was delivered %d times without finishing; giving up", self.consumer,
                  job.job_id, deliveries)
        await self._publish(job, event_id(job.job_id, "job", "abandoned"), error=events_pb2.Error(
            code="ABORTED", field="job", message=f"the background job was started {deliveries} times "
            "and never finished (its workers crashed); it will not be retried"))
        await self.jobs.ack(entry_id, job.job_id)

    async def _plan(self, job: events_pb2.Job) -> list[PlannedCall] | None:
        """The job's calls (the pinned plan when this is a retry), or None after publishing an
        `Error` event for a reasoner that failed."""
        started = time.perf_counter()
        try:
            calls = await self.reasoner.plan(job, self.tools.schemas())
        except Exception as e:
            self._planned(started)
            self.stats.plan_errors += 1
            code = "UNAVAILABLE" if isinstance(e, ReasonerError) else "INTERNAL"
            log.warning("%s: reasoner failed on job %s: %s", self.consumer, job.job_id, e)
            await self._publish(job, event_id(job.job_id, "plan", "error"), error=events_pb2.Error(
                code=code, message=f"the reasoner could not plan this job: {e}", field="reasoner"))
            return None
        self._planned(started)
        return decode_plan(await self.jobs.pin_plan(job.job_id, encode_plan(calls)))

    def _planned(self, started: float) -> None:
        if self.metrics:
            self.metrics.on_plan(time.perf_counter() - started)

    async def _run_call(self, job: events_pb2.Job, index: int, call: PlannedCall) -> None:
        call_id = f"{job.job_id}:{index}"
        await self._publish(job, event_id(job.job_id, index, "call"), tool_call=events_pb2.ToolCall(
            job_id=job.job_id, call_id=call_id, tool=call.tool, arguments_json=call.arguments_json))
        outcome = await self.tools.call(call.tool, call.arguments_json)
        if outcome.error:
            self.stats.tool_errors += 1
            if self.metrics:
                self.metrics.on_tool_error(call.tool)
        result_json = json.dumps(outcome.result) if outcome.result is not None else ""
        await self._publish(job, event_id(job.job_id, index, "result"), tool_result=events_pb2.ToolResult(
            job_id=job.job_id, call_id=call_id, tool=call.tool, result_json=result_json,
            error=outcome.error, duration_s=outcome.duration_s))
        if call.tool == UI_TOOL and not outcome.error and outcome.result is not None:
            await self._publish(job, event_id(job.job_id, index, "ui"), ui=ui_component(job.job_id, outcome.result))

    async def _publish(self, job: events_pb2.Job, eid: str, **body: Any) -> None:
        _, duplicate = await self.bus.publish(events_pb2.Event(
            session_id=job.session_id, event_id=eid, job_id=job.job_id, epoch=job.epoch,
            created_unix_ms=_now_ms(), urgent=job.urgent, **body))
        self.stats.duplicate_events += duplicate


def ui_component(job_id: str, result: dict[str, Any]) -> events_pb2.UiComponent:
    """A `ui.render` result as the component event clients draw: `component` names the kind,
    `props` (or, failing that, the rest of the result) is its document."""
    component = str(result.get("component", "card"))
    props = result.get("props", {k: v for k, v in result.items() if k != "component"})
    return events_pb2.UiComponent(job_id=job_id, component=component, props_json=json.dumps(props))
