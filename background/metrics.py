"""The background pool's Prometheus metrics, recorded the Ray way.

A pool replica records through `ray.util.metrics`; Ray's metrics agent serves them (names
prefixed `ray_`, see `protos.metric_spec`). The queue gauges take the same `JobStream.backlog()`
snapshot the autoscaler scales on, so a dashboard shows exactly what scaling saw; every replica
reports the same shared queue, so dashboards combine them with `max`, not `sum`.

A `tool` label takes the name a client asked for, so names the pool does not offer become
`unknown`: a client must not be able to grow the number of series.
"""

from __future__ import annotations

import logging

from protos.job_stream import QueueBacklog
from protos.metric_spec import MetricKind, MetricSpec, ray_metric, replica_spec, start_counter_at_zero

log = logging.getLogger(__name__)

JOB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNKNOWN_TOOL = "unknown"
NO_TOOL = "none"  # a job the reasoner planned no call for (or could not plan)


QUEUE_WAITING = replica_spec(
    "microturn_background_queue_waiting_jobs", MetricKind.GAUGE, "jobs",
    "Jobs on `mt:jobs` that no worker has claimed yet (capped at 1,000).",
    "`JobStream.backlog()` in `BackgroundPool.record_autoscaling_stats`")
QUEUE_PENDING = replica_spec(
    "microturn_background_queue_pending_jobs", MetricKind.GAUGE, "jobs",
    "Jobs claimed but not acknowledged: being worked on, or held by a dead worker until reclaimed.",
    "`JobStream.backlog()` in `BackgroundPool.record_autoscaling_stats`")
QUEUE_LAG = replica_spec(
    "microturn_background_queue_lag_seconds", MetricKind.GAUGE, "seconds",
    "How long the oldest unclaimed job has waited (Redis server clock; 0 when none waits).",
    "`JobStream.backlog()` in `BackgroundPool.record_autoscaling_stats`")
JOB_DURATION = replica_spec(
    "microturn_background_job_duration_seconds", MetricKind.HISTOGRAM, "seconds",
    "One job from claim to acknowledgement (plan, tool calls, publishing), by `tool`: the tool the "
    "job named, else the first planned call's, else `none`.", "`JobWorker.process`",
    labels=("tool",), buckets=JOB_BUCKETS)
TOOL_ERRORS = replica_spec(
    "microturn_background_tool_errors", MetricKind.COUNTER, "errors",
    "Tool calls that ended in an error result (bad arguments, timeout, provider failure), by `tool`.",
    "`JobWorker._run_call`", labels=("tool",))
PLAN_DURATION = replica_spec(
    "microturn_background_reasoner_plan_seconds", MetricKind.HISTOGRAM, "seconds",
    "Reasoner latency: one `plan()` call, from the job to its tool calls (for `vllm`, both "
    "constrained generations), failures included, by `reasoner` backend.", "`JobWorker._plan`",
    labels=("reasoner",), buckets=JOB_BUCKETS)

SPECS: tuple[MetricSpec, ...] = (QUEUE_WAITING, QUEUE_PENDING, QUEUE_LAG, JOB_DURATION, TOOL_ERRORS, PLAN_DURATION)


class PoolMetrics:
    """A pool replica's metrics; `tools` are the names it offers (the only `tool` label values)."""

    def __init__(self, replica_id: str, reasoner: str, tools: list[str]) -> None:
        tags = {"replica": replica_id}
        made = {spec.name: ray_metric(spec, tags) for spec in SPECS}
        self.queue_waiting = made[QUEUE_WAITING.name]
        self.queue_pending = made[QUEUE_PENDING.name]
        self.queue_lag = made[QUEUE_LAG.name]
        self.job_duration = made[JOB_DURATION.name]
        self.tool_errors = made[TOOL_ERRORS.name]
        self.plan_duration = made[PLAN_DURATION.name]
        self._reasoner_tags = {"reasoner": reasoner}
        self._tool_tags = {name: {"tool": name} for name in [*tools, UNKNOWN_TOOL, NO_TOOL]}
        for name in [*tools, UNKNOWN_TOOL]:
            start_counter_at_zero(self.tool_errors, self._tool_tags[name])

    def tool_tags(self, tool: str) -> dict[str, str]:
        return self._tool_tags.get(tool or NO_TOOL, self._tool_tags[UNKNOWN_TOOL])

    def on_backlog(self, backlog: QueueBacklog) -> None:
        self.queue_waiting.set(backlog.waiting)
        self.queue_pending.set(backlog.pending)
        self.queue_lag.set(backlog.oldest_wait_s)

    def on_plan(self, duration_s: float) -> None:
        self.plan_duration.observe(duration_s, tags=self._reasoner_tags)

    def on_job(self, tool: str, duration_s: float) -> None:
        self.job_duration.observe(duration_s, tags=self.tool_tags(tool))

    def on_tool_error(self, tool: str) -> None:
        self.tool_errors.inc(1, tags=self.tool_tags(tool))
