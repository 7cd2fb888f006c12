"""Grafana dashboards as code, and the metric table beside them in `dashboards/`.

- `panels`: panels as data, PromQL built from the exported `MetricSpec`s, Grafana JSON via
  grafana-foundation-sdk.
- `boards`: the four dashboards (foreground real time, background pool, event bus, sessions).
- `generate`: writes `dashboards/*.json` and the README's metric table (`python -m
  cluster.dashboards`, `make dashboards`; `--check` for CI).
"""
