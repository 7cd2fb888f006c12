"""A Serve request router that opens sessions where slots are free.

Serve's default router picks the shorter of two random replicas' request queues; but a live
session holds no Serve request (it streams to the replica's own port), so queue length says
nothing about room. Each replica reports its free slots (`record_routing_stats`, every
second); this router ranks replicas by free slots minus the opens it has routed to them since
their last report, so a burst of opens spreads out instead of piling onto stale numbers. A
retried open names the replicas that already declined it (`avoid=`), and they are skipped
while others remain, so a retry never depends on reports catching up. Other calls (describe,
health) keep plain FIFO order over all replicas.
"""

from __future__ import annotations

from ray.serve.request_router import FIFOMixin, PendingRequest, ReplicaID, RequestRouter, RunningReplica

OPEN_METHOD = "open_session"


class FreeSlotRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, **kwargs) -> None:
        self._routed_since_report: dict[ReplicaID, tuple[float | None, int]] = {}

    def _free_slots(self, replica: RunningReplica) -> int:
        stats = replica.routing_stats or {}
        if "free_slots" not in stats:
            return 1  # no report yet: assume room, the replica declines if it has none
        reported_at, routed = self._routed_since_report.get(replica.replica_id, (None, 0))
        if reported_at != stats.get("at"):
            routed = 0
            self._routed_since_report[replica.replica_id] = (stats.get("at"), 0)
        return int(stats["free_slots"]) - routed

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if pending_request is None or pending_request.metadata.call_method != OPEN_METHOD:
            return [candidate_replicas]
        avoid = set(pending_request.kwargs.get("avoid") or ())
        candidate_replicas = [r for r in candidate_replicas if r.replica_id.unique_id not in avoid] or candidate_replicas
        ranked = sorted(candidate_replicas, key=self._free_slots, reverse=True)
        with_room = [r for r in ranked if self._free_slots(r) > 0]
        if not with_room:  # the reports may be stale: any replica, and a full one declines
            return [candidate_replicas]
        return [[r] for r in with_room]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result) -> None:
        if pending_request.metadata.call_method == OPEN_METHOD:
            reported_at, routed = self._routed_since_report.get(replica_id, (None, 0))
            self._routed_since_report[replica_id] = (reported_at, routed + 1)
