"""The gateway's Prometheus metrics, and the `/metrics` endpoint that serves them.

The gateway is a plain process outside Ray (`microturn gateway`, or inside `microturn up`), so it
exports through `prometheus_client`'s default registry: `serve_metrics()` here, or
`microturn gateway --metrics-port`, serves that registry over HTTP. The instruments are made
once per process (a registry refuses a name twice) and shared by every `Gateway` in it.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from protos.metric_spec import Exporter, MetricKind, MetricSpec

log = logging.getLogger(__name__)

OPEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _spec(name: str, kind: MetricKind, unit: str, meaning: str, measured: str,
          buckets: tuple[float, ...] = ()) -> MetricSpec:
    return MetricSpec(name, kind, unit, meaning, measured, Exporter.PROMETHEUS, (), buckets)


REFUSED_SESSIONS = _spec(
    "microturn_gateway_refused_sessions", MetricKind.COUNTER, "sessions",
    "Session opens the gateway answered with RESOURCE_EXHAUSTED: no replica had a free slot after "
    "every retry.", "`GatewayInteractionService._route_open`")
OPEN_DURATION = _spec(
    "microturn_gateway_open_duration_seconds", MetricKind.HISTOGRAM, "seconds",
    "A routed session open that succeeded: Serve picks a replica, which reserves a slot (retries "
    "on full replicas included).", "`GatewayInteractionService._route_open`", buckets=OPEN_BUCKETS)
RELAYED_STREAMS = _spec(
    "microturn_gateway_relayed_streams", MetricKind.GAUGE, "streams",
    "Session streams this gateway relays to replicas right now.", "`GatewayInteractionService.Converse`")

SPECS: tuple[MetricSpec, ...] = (REFUSED_SESSIONS, OPEN_DURATION, RELAYED_STREAMS)


@dataclass(frozen=True)
class GatewayMetrics:
    refused_sessions: Counter
    open_duration: Histogram
    relayed_streams: Gauge


@functools.cache
def gateway_metrics() -> GatewayMetrics:
    """The process's gateway instruments, registered on first use."""
    return GatewayMetrics(
        refused_sessions=Counter(REFUSED_SESSIONS.name, REFUSED_SESSIONS.meaning),
        open_duration=Histogram(OPEN_DURATION.name, OPEN_DURATION.meaning, buckets=OPEN_DURATION.buckets),
        relayed_streams=Gauge(RELAYED_STREAMS.name, RELAYED_STREAMS.meaning),
    )


def serve_metrics(host: str, port: int) -> WSGIServer:
    """Serve the process's registry at http://host:port/metrics (port 0: any free one; the
    bound port is `server.server_port`). Stop it with `shutdown()` and `server_close()`."""
    gateway_metrics()  # registered before the first scrape, so every family shows up at once
    server, _ = start_http_server(port, addr=host)
    log.info("gateway metrics on http://%s:%d/metrics", host, server.server_port)
    return server
