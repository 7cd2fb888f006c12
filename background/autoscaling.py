"""Scale the background pool on queue lag, not on Serve requests.

The pool receives no Serve requests (it pulls jobs from Redis), so Serve's default policy,
which counts ongoing requests, would never scale it. Each replica instead reports the queue's
backlog from `record_autoscaling_stats`, and `QueueLagPolicy` turns it into a replica count:

    desired = ceil((waiting + pending) / jobs_per_replica)
    desired >= current + 1  while the oldest waiting job has waited longer than max_wait_s

clamped to the deployment's [min_replicas, max_replicas]. Serve then applies its own
`upscale_delay_s` / `downscale_delay_s` and bounds around the policy (Ray 2.60 wraps every
custom policy that way).

Every replica reports the same shared queue, so the per-replica values are combined with
`max`, not summed. Because the numbers come from replicas, a deployment at zero replicas has
nobody to report a backlog: `min_replicas` must be at least 1.

Ray pickles this module by value into the Serve controller, so it imports nothing from the
project and keeps to the standard library.
"""

from __future__ import annotations

import logging
import math
from typing import Any

# The policy runs in the Serve controller; its own logger is what lands in the controller's log
# next to Serve's "Upscaling ... Current ongoing requests: 0.00" (always 0 for this pool).
log = logging.getLogger("ray.serve")

# The keys `BackgroundPool.record_autoscaling_stats` reports and this policy reads.
QUEUE_WAITING = "queue_waiting"
QUEUE_PENDING = "queue_pending"
QUEUE_OLDEST_WAIT_S = "queue_oldest_wait_s"

POLICY_PATH = "background.autoscaling:QueueLagPolicy"


def desired_replicas(waiting: float, pending: float, oldest_wait_s: float, current: int,
                     lowest: int, highest: int, jobs_per_replica: float, max_wait_s: float) -> int:
    """The replica count for a backlog (the pure rule; `QueueLagPolicy` feeds it Serve's numbers)."""
    desired = math.ceil(max(0.0, waiting + pending) / jobs_per_replica)
    if waiting > 0 and oldest_wait_s > max_wait_s:
        desired = max(desired, current + 1)  # jobs queue up faster than the pool drains them
    return max(lowest, min(highest, desired))


class QueueLagPolicy:
    """A Serve custom autoscaling policy (a class: Serve builds it once with `policy_kwargs`
    and calls it every control-loop tick with an `AutoscalingContext`)."""

    def __init__(self, jobs_per_replica: float = 4.0, max_wait_s: float = 2.0) -> None:
        if jobs_per_replica <= 0 or max_wait_s <= 0:
            raise ValueError("QueueLagPolicy: jobs_per_replica and max_wait_s must be > 0")
        self.jobs_per_replica, self.max_wait_s = jobs_per_replica, max_wait_s
        self._last_wish: int | None = None  # log a wish when it changes, not every 0.1 s tick

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        metrics = ctx.aggregated_metrics or {}
        if QUEUE_WAITING not in metrics:  # no replica has reported yet: hold
            return ctx.target_num_replicas, {}

        def combined(key: str) -> float:
            return max(metrics.get(key, {}).values(), default=0.0)

        waiting, pending = combined(QUEUE_WAITING), combined(QUEUE_PENDING)
        oldest = combined(QUEUE_OLDEST_WAIT_S)
        desired = desired_replicas(waiting, pending, oldest, ctx.current_num_replicas,
                                   ctx.capacity_adjusted_min_replicas, ctx.capacity_adjusted_max_replicas,
                                   self.jobs_per_replica, self.max_wait_s)
        if desired != self._last_wish and desired != ctx.target_num_replicas:
            log.info("background pool: backlog waiting=%.1f pending=%.1f oldest=%.1fs -> %d replicas "
                     "(now %d)", waiting, pending, oldest, desired, ctx.current_num_replicas)
        self._last_wish = desired
        return desired, {"waiting": waiting, "pending": pending, "oldest_wait_s": oldest}
