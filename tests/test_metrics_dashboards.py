"""Metrics and dashboards: the committed dashboards are what the code generates, every panel's
PromQL parses and names only metrics the running system exports, and a live local cluster under
traffic (a scripted spoken session with tool requests, a full cluster refusing an open, and
`microturn bench load`) shows a value for every metric in the dashboards/README table."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import urllib.request
from collections import defaultdict

import grpc
import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from background.metrics import PoolMetrics
from cluster.bench.load import run_load
from cluster.client import InteractionClient
from cluster.config import load_config
from cluster.conversation import RequestTool, Say, Script, Silence, stream_script
from cluster.dashboards.boards import BOARDS
from cluster.dashboards.generate import DASHBOARDS_DIR, all_specs, stale_files
from cluster.runtime import LocalCluster
from foreground.engine.tick_scheduler import SessionOutput
from foreground.engine.turn_policy import TurnEvent, TurnEventKind as K
from foreground.serve.metrics import ForegroundMetrics, TickRecord
from protos.metric_spec import MetricKind

GRAFANA_INTERVALS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "30m"}
# Counters the test traffic must move (the others may rightly stay at 0, e.g. overruns).
MOVED = {"microturn_foreground_turn_events", "microturn_foreground_refused_sessions",
         "microturn_foreground_late_chunks", "microturn_background_tool_errors", "microturn_gateway_refused_sessions"}


def _panel_queries() -> list[tuple[str, str]]:
    """(dashboard file, expr) of every target in the committed JSON."""
    found = []
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            found += [(path.name, target["expr"]) for target in panel.get("targets", [])]
    return found


def _selected_names(expr: str) -> set[str]:
    for variable, value in GRAFANA_INTERVALS.items():  # Grafana substitutes these before Prometheus sees them
        expr = expr.replace(variable, value)
    names: set[str] = set()
    promql_parser.walk(promql_parser.parse(expr),
                       lambda node: names.add(node.name) if isinstance(node, promql_parser.VectorSelector) else None)
    return names


# -- generated files ------------------------------------------------------------------------------

def test_the_committed_dashboards_and_metric_table_are_what_the_code_generates():
    assert stale_files() == [], "dashboards/ is stale: run `make dashboards` and commit the result"
    assert sorted(p.name for p in DASHBOARDS_DIR.glob("*.json")) == sorted(b.file for b in BOARDS)


def test_every_panel_query_parses_and_every_exported_metric_is_on_a_dashboard():
    queries = _panel_queries()
    assert len(queries) > 20
    declared = {series for spec in all_specs() for series in spec.series}
    used: set[str] = set()
    for file, expr in queries:
        names = _selected_names(expr)
        assert names, f"{file}: {expr!r} selects no metric"
        assert names <= declared, f"{file}: {expr!r} names undeclared {sorted(names - declared)}"
        used |= names
    for spec in all_specs():
        assert used & set(spec.series), f"{spec.exported} is on no dashboard"


# -- what the foreground records, without Ray -----------------------------------------------------

class _Recorder:
    def __init__(self) -> None:
        self.values: list = []

    def observe(self, value: float, tags=None) -> None:
        self.values.append(value)

    def inc(self, value: float = 1, tags=None) -> None:
        self.values.append((value, dict(tags or {})))

    def set(self, value: float, tags=None) -> None:
        self.values.append(value)


def _out(tick: int, *kinds: K, chunk: bool = True, speech: bool = False) -> SessionOutput:
    return SessionOutput(session_id="s", tick=tick, pcm16=b"", speech=speech, text="",
                         events=[TurnEvent(kind, "test", 0) for kind in kinds],
                         input_received_ns=tick if chunk else 0)


def test_turn_latencies_are_estimated_from_turn_events_in_ticks():
    metrics = ForegroundMetrics("unit-test", tick_ms=200)
    for name in ("turn_taking", "interruption_stop", "late_chunks", "turn_events", "tick_duration"):
        setattr(metrics, name, _Recorder())
    metrics.track("s")
    script = [_out(9, chunk=False),  # before the first chunk: not late
              _out(10, K.USER_SPEECH_STARTED), _out(15, K.USER_SPEECH_STOPPED),
              _out(16, K.USER_SPEECH_STARTED),  # a pause: the turn had not ended
              _out(18, K.USER_SPEECH_STOPPED), _out(21, K.MODEL_SPEECH_STARTED),  # takes the turn: 3 ticks
              _out(25, K.USER_SPEECH_STARTED, K.INTERRUPTED, K.MODEL_SPEECH_STOPPED),  # stops in the same tick
              _out(26, chunk=False),  # late
              _out(30, K.MODEL_SPEECH_STARTED),  # no user turn end before it: no turn-taking sample
              _out(31, K.USER_SPEECH_STARTED, speech=True), _out(33, K.INTERRUPTED, K.MODEL_SPEECH_STOPPED),
              _out(35, K.MODEL_SPEECH_STARTED, speech=True),
              _out(36, K.USER_SPEECH_STARTED),  # held: silent at once, then it goes on
              _out(38, K.USER_SPEECH_STOPPED, K.BACKCHANNEL_HEARD, speech=True),  # not an interruption
              _out(40, K.USER_SPEECH_STARTED, speech=True), _out(41),  # held from 41 (silent) ...
              _out(44, K.INTERRUPTED, K.MODEL_SPEECH_STOPPED)]  # ... stopped at 44: the listener heard 41
    for out in script:
        metrics.on_tick(TickRecord(0.05, 1, 1, 0), [out])
    assert metrics.turn_taking.values == [0.6]
    assert metrics.interruption_stop.values == [0.0, 0.4, 0.2]
    assert metrics.late_chunks.values == [(1, {})]
    kinds = [tags["kind"] for _, tags in metrics.turn_events.values]
    assert kinds.count("INTERRUPTED") == 3 and kinds.count("MODEL_SPEECH_STARTED") == 3
    assert kinds.count("BACKCHANNEL_HEARD") == 1
    metrics.forget("s")
    metrics.on_tick(TickRecord(0.05, 0, 2, 0), [_out(40, K.USER_SPEECH_STARTED)])  # closed: ignored
    assert len(metrics.turn_events.values) == len(kinds)


def test_a_tick_with_64_sessions_costs_the_metrics_well_under_a_millisecond():
    metrics = ForegroundMetrics("unit-test-cost", tick_ms=200)
    outputs = []
    for i in range(64):
        metrics.track(f"s{i}")
        outputs.append(SessionOutput(session_id=f"s{i}", tick=1, pcm16=b"", speech=False, text="", events=[],
                                     input_received_ns=1))
    outputs[0].events = [TurnEvent(K.USER_SPEECH_STARTED, "vad", 0)]
    timings = []
    for tick in range(200):
        started = time.perf_counter()
        metrics.on_tick(TickRecord(0.05, 64, 0, 0), outputs)
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 1e-3  # against a 200 ms tick


def test_pool_metrics_keep_client_named_tools_out_of_the_labels():
    metrics = PoolMetrics("unit-test", "direct", ["clock", "calculator"])
    assert metrics.tool_tags("clock") == {"tool": "clock"}
    assert metrics.tool_tags("rm -rf /") == {"tool": "unknown"}
    assert metrics.tool_tags("") == {"tool": "none"}


# -- a live cluster ---------------------------------------------------------------------------------

def _scrape(url: str) -> list:
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def _values(samples: list, replicas: set[str]) -> dict[str, list[float]]:
    """Sample values by name; Ray's samples only from this test's replicas (other tests' replicas
    and the driver may have exported the same names)."""
    by_name: dict[str, list[float]] = defaultdict(list)
    for sample in samples:
        if sample.name.startswith("ray_") and sample.labels.get("replica") not in replicas:
            continue
        by_name[sample.name].append(sample.value)
    return by_name


def _missing(values: dict[str, list[float]]) -> list[str]:
    missing = []
    for spec in all_specs():
        if spec.kind is MetricKind.HISTOGRAM:
            ok = sum(values.get(f"{spec.exported}_count", [])) > 0
        elif spec.name in MOVED:
            ok = sum(values.get(spec.exported, [])) > 0
        else:
            ok = bool(values.get(spec.exported))
        if not ok:
            missing.append(spec.exported)
    return missing


CONVERSATION = Script([
    Silence(0.4),
    Say("Hello there, could you tell me what the weather is like in Paris today?"),
    Silence(1.8),  # the model takes the floor after the silence threshold
    Say("Wait, sorry, what about the trains?", barge_in=True),
    RequestTool("web_search", '{"query": "weather in Paris", "max_results": 2}'),
    RequestTool("calculator", '{"expression": "1/0"}'),  # a tool error
    Silence(1.0),
])


async def _refuse_an_open(client: InteractionClient) -> grpc.StatusCode:
    """With one slot already taken of two: take the other, be refused a third, give it back."""
    held = await client.open_session()
    try:
        await client.open_session()
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as e:
        return e.code()
    finally:
        async with client.session(session_id=held.session_id, token=held.token) as s:
            await s.close()
            async for _, message in s.messages():
                if message.WhichOneof("payload") == "closed":
                    break


async def _drive_and_scrape(config, timeout_s: float = 90.0) -> tuple[dict[str, list[float]], list[str]]:
    async with LocalCluster(config) as cluster:
        endpoints = cluster.endpoints
        assert endpoints.gateway_metrics and endpoints.ray_metrics
        replicas = {endpoints.replicas[0]["replica_id"], (await cluster.background.describe.remote())["replica_id"]}
        track = CONVERSATION.render()
        async with InteractionClient(endpoints.gateway) as client:
            async with client.session() as session:
                talk = asyncio.create_task(stream_script(session, track, tail_s=1.0))
                await asyncio.sleep(1.0)
                refused = await _refuse_an_open(client)
                recording = await talk
        assert refused == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert recording.closed is not None
        load = await run_load(config, sessions=2, seconds=3.0, via="gateway", address=endpoints.gateway)
        assert load["errors"] == 0, load["error_samples"]
        deadline, missing = time.monotonic() + timeout_s, ["(not scraped)"]
        while missing and time.monotonic() < deadline:  # Ray's agent exports every few seconds
            samples = _scrape(endpoints.gateway_metrics)
            for url in endpoints.ray_metrics:
                samples += _scrape(url)
            values = _values(samples, replicas)
            missing = _missing(values)
            if missing:
                await asyncio.sleep(2.0)
        return values, missing


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_live_cluster_under_load_exports_every_metric_in_the_table(ray_cluster, redis_server):
    config = load_config(redis__url=redis_server.url, ray__address=ray_cluster, serve__grpc_port=0,
                         serve__metrics_port=0, foreground__num_cpus=0.25, foreground__max_sessions=2,
                         foreground__threads=1)
    values, missing = asyncio.run(_drive_and_scrape(config))
    assert missing == [], f"no value for {missing}"
    table = (DASHBOARDS_DIR / "README.md").read_text()
    for spec in all_specs():
        assert f"`{spec.exported}`" in table
    for file, expr in _panel_queries():  # every name a panel reads is one the system exports
        assert _selected_names(expr) <= values.keys(), f"{file}: {expr}"
