"""The four dashboards: foreground real time, background pool, event bus, sessions overview.

Targets drawn as red dashed lines come from DESIGN.md §6: a tick under 200 ms at p99,
turn-taking at p50 <= 0.30 s, interruption stop at p50 <= 0.25 s. The background queue's line is
the autoscaler's default `max_wait_s` (2 s), past which it adds a replica.
"""

from __future__ import annotations

from background import metrics as bg
from cluster import gateway_metrics as gw
from cluster.dashboards.panels import Board, PanelDef, Query, Row, gauge, latency_panel, per_second
from foreground.serve import metrics as fg

TICK_TARGET_S = 0.2
TURN_TAKING_TARGET_S = 0.3
INTERRUPTION_TARGET_S = 0.25
QUEUE_WAIT_LINE_S = 2.0
FLOOR_KINDS = 'kind=~"INTERRUPTED|BACKCHANNEL_HEARD|BACKCHANNEL|DELEGATED"'

_tick_latency = latency_panel(
    "Tick duration", "One batched forward of all live sessions. Real time needs p99 below the 200 ms tick.",
    fg.TICK_DURATION, by=("replica",), threshold=TICK_TARGET_S)
_turn_taking = latency_panel(
    "Turn-taking latency (server estimate)",
    "USER_SPEECH_STOPPED to MODEL_SPEECH_STARTED in ticks x tick length, where the model takes the "
    "turn. Target p50 <= 0.30 s end to end (`microturn bench duplex` measures that).",
    fg.TURN_TAKING, quantiles=(0.5, 0.9), threshold=TURN_TAKING_TARGET_S)
_interruption = latency_panel(
    "Interruption stop latency (server estimate)",
    "USER_SPEECH_STARTED while the model speaks to its audio going silent, in ticks x tick length, "
    "for barge-ins (the model holds the floor silently until the speech outlasts a backchannel). "
    "Target p50 <= 0.25 s end to end.", fg.INTERRUPTION_STOP, quantiles=(0.5, 0.9), threshold=INTERRUPTION_TARGET_S)
_sessions = PanelDef(
    "Live sessions and free slots", "Slots are preallocated per replica: free = max_sessions - live.", "short",
    (Query(gauge(fg.LIVE_SESSIONS, "sum", ("replica",)), "live {{replica}}"),
     Query(gauge(fg.FREE_SLOTS, "sum", ("replica",)), "free {{replica}}")))
_delivery = latency_panel(
    "Event publish to client", "Bus event created (publisher's clock) to forwarded into the client's stream.",
    fg.EVENT_DELIVERY, by=("kind",))
_queue_lag = PanelDef(
    "Queue lag", "How long the oldest unclaimed job has waited; past 2 s the autoscaler adds a replica.", "s",
    (Query(gauge(bg.QUEUE_LAG, "max"), "oldest waiting job"),), threshold=QUEUE_WAIT_LINE_S)

FOREGROUND = Board(
    "microturn-foreground", "foreground-realtime.json", "microturn / foreground real time",
    "The tick engine per replica: tick time against the 200 ms budget, missed boundaries, late "
    "chunks, slots, and turn-taking as the replicas see it.",
    (
        Row("Ticks", (
            _tick_latency,
            PanelDef("Ticks with sessions per second", "About 5/s per replica with sessions (200 ms ticks).",
                     "short", (Query(per_second(fg.TICK_DURATION, ("replica",)), "{{replica}}"),)),
            PanelDef("Tick overruns", "Tick boundaries missed because a tick ran past the next one.", "short",
                     (Query(per_second(fg.TICK_OVERRUNS, ("replica",)), "{{replica}}"),)),
            PanelDef("Late chunks", "Ticks at which a session's chunk had not arrived: it got silence.", "short",
                     (Query(per_second(fg.LATE_CHUNKS, ("replica",)), "{{replica}}"),)),
        )),
        Row("Sessions", (_sessions,)),
        Row("Turn-taking", (
            _turn_taking,
            _interruption,
            PanelDef("Barge-ins, backchannels, delegations per minute",
                     "INTERRUPTED, BACKCHANNEL_HEARD (the model went on after an acknowledgement), "
                     "BACKCHANNEL and DELEGATED turn events (delegations: the model's head "
                     "or a client's tool request).", "short",
                     (Query(per_second(fg.TURN_EVENTS, ("kind",), FLOOR_KINDS, " * 60"), "{{kind}}"),)),
            PanelDef("Turn events per second", "Every turn event by kind.", "short",
                     (Query(per_second(fg.TURN_EVENTS, ("kind",)), "{{kind}}"),)),
        )),
    ))

BACKGROUND = Board(
    "microturn-background", "background-pool.json", "microturn / background pool",
    "The job queue the pool scales on, jobs and tool errors by tool, and reasoner latency.",
    (
        Row("Queue", (
            PanelDef("Jobs in the queue", "Waiting: unclaimed. Pending: claimed, not yet acknowledged.", "short",
                     (Query(gauge(bg.QUEUE_WAITING, "max"), "waiting"),
                      Query(gauge(bg.QUEUE_PENDING, "max"), "pending"))),
            _queue_lag,
            PanelDef("Pool replicas", "Replicas reporting the queue (the autoscaler's doing).", "short",
                     (Query(gauge(bg.QUEUE_WAITING, "count"), "replicas"),)),
        )),
        Row("Jobs", (
            PanelDef("Jobs per second by tool", "Finished jobs (acknowledged), by the job's tool.", "reqps",
                     (Query(per_second(bg.JOB_DURATION, ("tool",)), "{{tool}}"),)),
            latency_panel("Job duration by tool", "Claim to acknowledgement: plan, calls, publishing.",
                          bg.JOB_DURATION, by=("tool",)),
            PanelDef("Tool errors per second", "Calls that came back as an error result, by tool.", "short",
                     (Query(per_second(bg.TOOL_ERRORS, ("tool",)), "{{tool}}"),)),
            latency_panel("Reasoner plan latency", "One plan() call, by reasoner backend.", bg.PLAN_DURATION,
                          by=("reasoner",)),
        )),
    ))

EVENT_BUS = Board(
    "microturn-event-bus", "event-bus.json", "microturn / event bus",
    "Events between the parts: jobs the foreground delegates, jobs the pool finishes, and how long "
    "a published event takes to reach the client.",
    (
        Row("Delivery", (
            _delivery,
            PanelDef("Events delivered per second", "Bus events forwarded into client streams, by kind.", "short",
                     (Query(per_second(fg.EVENT_DELIVERY, ("kind",)), "{{kind}}"),)),
        )),
        Row("Jobs", (
            PanelDef("Delegated vs finished jobs per second",
                     "DELEGATED turn events (jobs put on mt:jobs) against jobs the pool acknowledged.", "reqps",
                     (Query(per_second(fg.TURN_EVENTS, (), 'kind="DELEGATED"'), "delegated"),
                      Query(per_second(bg.JOB_DURATION), "finished"))),
            _queue_lag,
        )),
    ))

SESSIONS = Board(
    "microturn-sessions", "sessions-overview.json", "microturn / sessions overview",
    "The cluster at a glance: sessions and room, refusals at the replicas and the gateways, and the "
    "numbers microturn is judged by.",
    (
        Row("Now", (
            PanelDef("Live sessions", "All replicas.", "short",
                     (Query(gauge(fg.LIVE_SESSIONS, "sum"), "live"),), kind="stat", width=6, height=4),
            PanelDef("Free slots", "All replicas.", "short",
                     (Query(gauge(fg.FREE_SLOTS, "sum"), "free"),), kind="stat", width=6, height=4),
            PanelDef("Streams through gateways", "Sessions relayed by the gateways (the rest stream direct).",
                     "short", (Query(f"sum ({gw.RELAYED_STREAMS.exported})", "relayed"),),
                     kind="stat", width=6, height=4),
            PanelDef("Foreground replicas", "Replicas reporting slots.", "short",
                     (Query(gauge(fg.FREE_SLOTS, "count"), "replicas"),), kind="stat", width=6, height=4),
        )),
        Row("Admission", (
            PanelDef("Refused session opens per second",
                     "Replicas decline when full or draining (the gateway then tries another); the gateway "
                     "refuses with RESOURCE_EXHAUSTED when no replica had room.", "short",
                     (Query(per_second(fg.REFUSED_SESSIONS, ("reason",)), "replica: {{reason}}"),
                      Query(per_second(gw.REFUSED_SESSIONS), "gateway"))),
            latency_panel("Routed session open", "Gateway OpenSession through Serve to a replica with a slot.",
                          gw.OPEN_DURATION),
        )),
        Row("Targets", (
            latency_panel("Tick duration, all replicas", "p99 must stay under the 200 ms tick.",
                          fg.TICK_DURATION, quantiles=(0.99,), threshold=TICK_TARGET_S, width=8),
            latency_panel("Turn-taking latency, all replicas", "Server estimate; target p50 <= 0.30 s.",
                          fg.TURN_TAKING, quantiles=(0.5,), threshold=TURN_TAKING_TARGET_S, width=8),
            latency_panel("Interruption stop latency, all replicas", "Server estimate; target p50 <= 0.25 s.",
                          fg.INTERRUPTION_STOP, quantiles=(0.5,), threshold=INTERRUPTION_TARGET_S, width=8),
        )),
    ))

BOARDS: tuple[Board, ...] = (FOREGROUND, BACKGROUND, EVENT_BUS, SESSIONS)
