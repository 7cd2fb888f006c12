"""Panels as data, PromQL from metric specs, and their Grafana JSON through grafana-foundation-sdk.

A dashboard is written as a `Board` of `Row`s of `PanelDef`s (plain dataclasses), with queries
built from the `MetricSpec`s the code exports, so a panel cannot name a metric that does not
exist. `build()` turns a board into the SDK's dashboard model; the generator serialises it.

Queries use Grafana's `$__rate_interval` (at least four scrape intervals), which Grafana
substitutes before PromQL is parsed; the tests substitute it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from grafana_foundation_sdk.builders import common as common_builders, prometheus, stat, timeseries
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    Row as RowBuilder,
    ThresholdsConfig,
)
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import DashboardCursorSync, DataSourceRef, Threshold, ThresholdsMode

from protos.metric_spec import MetricKind, MetricSpec

RATE_INTERVAL = "$__rate_interval"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


# -- PromQL -------------------------------------------------------------------------------------

def _check(spec: MetricSpec, kind: MetricKind) -> None:
    if spec.kind is not kind:
        raise ValueError(f"{spec.name} is a {spec.kind.value}, not a {kind.value}")


def _by(labels: tuple[str, ...]) -> str:
    return f" by ({', '.join(labels)})" if labels else ""


def quantile(spec: MetricSpec, q: float, by: tuple[str, ...] = ()) -> str:
    """The q-quantile of a histogram over the rate interval, per `by` group."""
    _check(spec, MetricKind.HISTOGRAM)
    return (f"histogram_quantile({q}, sum by ({', '.join(('le', *by))}) "
            f"(rate({spec.exported}_bucket[{RATE_INTERVAL}])))")


def per_second(spec: MetricSpec, by: tuple[str, ...] = (), where: str = "", scale: str = "") -> str:
    """Events per second: a counter's rate, or a histogram's observations per second."""
    if spec.kind is MetricKind.GAUGE:
        raise ValueError(f"{spec.name} is a gauge: it has no rate")
    series = f"{spec.exported}_count" if spec.kind is MetricKind.HISTOGRAM else spec.exported
    selector = f"{series}{{{where}}}" if where else series
    return f"sum{_by(by)} (rate({selector}[{RATE_INTERVAL}])){scale}"


def gauge(spec: MetricSpec, agg: Literal["sum", "max", "count"] = "sum", by: tuple[str, ...] = ()) -> str:
    """A gauge across replicas. Each replica's value is taken once (`max by (replica)`): Ray
    labels every series with its worker too, and a restarted worker may linger a scrape."""
    _check(spec, MetricKind.GAUGE)
    per_replica = f"max by ({', '.join(dict.fromkeys(('replica', *by)))}) ({spec.exported})"
    return f"{agg}{_by(by)} ({per_replica})"


# -- panels as data -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class PanelDef:
    title: str
    description: str
    unit: str  # a Grafana unit id: s, short, reqps, ...
    queries: tuple[Query, ...]
    kind: Literal["timeseries", "stat"] = "timeseries"
    threshold: float | None = None  # a target line (red above it)
    width: int = 12
    height: int = 8


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[PanelDef, ...]


@dataclass(frozen=True)
class Board:
    uid: str
    file: str  # the JSON file under dashboards/
    title: str
    description: str
    rows: tuple[Row, ...]
    tags: tuple[str, ...] = field(default=("microturn",))

    def exprs(self) -> list[str]:
        return [q.expr for row in self.rows for panel in row.panels for q in panel.queries]


def latency_panel(title: str, description: str, spec: MetricSpec, by: tuple[str, ...] = (),
                  quantiles: tuple[float, ...] = (0.5, 0.99), threshold: float | None = None,
                  width: int = 12) -> PanelDef:
    legend_by = " ".join(f"{{{{{label}}}}}" for label in by)
    queries = tuple(Query(quantile(spec, q, by), f"p{round(q * 100)} {legend_by}".strip()) for q in quantiles)
    return PanelDef(title, description, "s", queries, threshold=threshold, width=width)


# -- Grafana JSON -------------------------------------------------------------------------------

def build(board: Board):
    """The SDK's dashboard model of `board` (serialise with `cog.encoder.JSONEncoder`)."""
    dashboard = (
        Dashboard(board.title).uid(board.uid).description(board.description).tags(list(board.tags))
        .editable().refresh("10s").time("now-30m", "now").timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )
    panel_id = 0
    for row in board.rows:
        panel_id += 1
        dashboard = dashboard.with_row(RowBuilder(row.title).id(panel_id))
        for panel in row.panels:
            panel_id += 1
            dashboard = dashboard.with_panel(_panel(panel, panel_id))
    return dashboard.build()


def _panel(panel: PanelDef, panel_id: int):
    builder = (stat.Panel() if panel.kind == "stat" else timeseries.Panel())
    builder = (builder.id(panel_id).title(panel.title).description(panel.description).unit(panel.unit)
               .datasource(DATASOURCE).span(panel.width).height(panel.height))
    for i, query in enumerate(panel.queries):
        builder = builder.with_target(prometheus.Dataquery().expr(query.expr).legend_format(query.legend)
                                      .ref_id(chr(ord("A") + i)))
    if panel.kind == "timeseries":
        builder = builder.legend(common_builders.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
                                 .placement(common.LegendPlacement.BOTTOM).show_legend(True))
    if panel.threshold is not None:
        builder = builder.thresholds(ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([
            Threshold(color="green", value=None), Threshold(color="red", value=panel.threshold)]))
        if panel.kind == "timeseries":
            builder = builder.thresholds_style(
                common_builders.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.DASHED))
    return builder
