"""The metrics contract: how each part declares the Prometheus metrics it exports.

Every part (foreground, background, gateway) lists its metrics as `MetricSpec`s next to the code
that records them. The dashboards and the metric table in `dashboards/README.md` are generated
from those lists (`python -m cluster.dashboards`), so a name, unit or label changes in one
place. It lives in `protos/` because it is where the parts meet: foreground and background never
import each other, and neither imports `cluster`.

Names follow `microturn_<part>_<what>_<unit>` (the LiveKit-metrics convention of DESIGN.md §7):
the unit is the last word of the name and is checked here. Counters are declared without
`_total`: both exporters add it. Inside Ray, `ray.util.metrics` values reach Prometheus through
Ray's metrics agent, which prefixes `ray_` (Ray 2.60: `ray_microturn_foreground_..._total`);
outside Ray (the gateway) `prometheus_client` exports the declared name. `exported` says which.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

NAME = re.compile(r"^microturn_(foreground|background|gateway)_[a-z0-9_]+$")
RAY_PREFIX = "ray_"


class MetricKind(str, Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Exporter(str, Enum):
    RAY = "ray"  # ray.util.metrics in a Ray worker, scraped from the node's metrics agent
    PROMETHEUS = "prometheus_client"  # a plain process's own /metrics endpoint


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: what it is called, what it counts, in what unit, split by which labels."""

    name: str
    kind: MetricKind
    unit: str  # the name's last word: seconds, sessions, slots, chunks, events, jobs, ...
    meaning: str
    measured: str  # where in the code the value is taken
    exporter: Exporter
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()  # histograms only: upper bounds, ascending, > 0

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ValueError(f"metric {self.name!r}: names are microturn_<part>_<what>_<unit> in lower case")
        if not self.name.endswith(f"_{self.unit}"):
            raise ValueError(f"metric {self.name!r}: the name must end with its unit `_{self.unit}`")
        if self.kind is MetricKind.COUNTER and self.name.endswith("_total"):
            raise ValueError(f"metric {self.name!r}: declare counters without `_total`; exporters add it")
        if (self.kind is MetricKind.HISTOGRAM) != bool(self.buckets):
            raise ValueError(f"metric {self.name!r}: histograms, and only histograms, take `buckets`")
        if list(self.buckets) != sorted(set(self.buckets)) or any(b <= 0 for b in self.buckets):
            raise ValueError(f"metric {self.name!r}: buckets must be ascending, distinct and > 0 (Ray's rule)")

    @property
    def exported(self) -> str:
        """The family name on the scrape endpoint (histograms add _bucket, _count, _sum)."""
        name = RAY_PREFIX + self.name if self.exporter is Exporter.RAY else self.name
        return name + "_total" if self.kind is MetricKind.COUNTER else name

    @property
    def series(self) -> tuple[str, ...]:
        """Every sample name this metric shows up as when scraped."""
        if self.kind is MetricKind.HISTOGRAM:
            return tuple(f"{self.exported}_{suffix}" for suffix in ("bucket", "count", "sum"))
        return (self.exported,)


def replica_spec(name: str, kind: MetricKind, unit: str, meaning: str, measured: str,
                 labels: tuple[str, ...] = (), buckets: tuple[float, ...] = ()) -> MetricSpec:
    """A metric a Serve replica exports through Ray, labelled with its `replica`."""
    return MetricSpec(name, kind, unit, meaning, measured, Exporter.RAY, ("replica", *labels), buckets)


def ray_metric(spec: MetricSpec, default_tags: dict[str, str]):
    """A `ray.util.metrics` instrument for `spec`; `default_tags` fill some of its labels once
    (e.g. the replica). Imported lazily: only the Ray-side parts need Ray here."""
    from ray.util import metrics

    if spec.exporter is not Exporter.RAY:
        raise ValueError(f"metric {spec.name!r} is exported by {spec.exporter.value}, not Ray")
    unknown = set(default_tags) - set(spec.labels)
    if unknown:
        raise ValueError(f"metric {spec.name!r} has no label(s) {sorted(unknown)}")
    tag_keys = spec.labels
    if spec.kind is MetricKind.COUNTER:
        metric = metrics.Counter(spec.name, spec.meaning, tag_keys=tag_keys)
    elif spec.kind is MetricKind.GAUGE:
        metric = metrics.Gauge(spec.name, spec.meaning, tag_keys=tag_keys)
    else:
        metric = metrics.Histogram(spec.name, spec.meaning, boundaries=list(spec.buckets), tag_keys=tag_keys)
    return metric.set_default_tags(dict(default_tags))


def start_counter_at_zero(counter, tags: dict[str, str] | None = None) -> None:
    """Export a Ray counter series at 0 before its first event. Prometheus' advice: a series
    that appears only at its first increment hides that increment from `rate()` and leaves
    panels empty ("no data" instead of 0). Ray's `Counter.inc` refuses 0, so this records
    through the method `inc` itself uses."""
    counter._record(0, tags=tags)
