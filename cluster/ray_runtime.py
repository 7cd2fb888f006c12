"""Ray for microturn: join `RAY_ADDRESS`, or start a local Ray sized for this machine."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import ray

from cluster.config import RayConfig

log = logging.getLogger(__name__)


def start_ray(config: RayConfig) -> None:
    """Connect this process to Ray (idempotent)."""
    if ray.is_initialized():
        return
    if config.address:
        log.info("joining Ray at %s", config.address)
        ray.init(address=config.address, logging_level=logging.WARNING)
        return
    num_cpus = config.num_cpus or os.cpu_count() or 1
    log.info("starting a local Ray with %d CPUs", num_cpus)
    ray.init(
        num_cpus=num_cpus,
        num_gpus=0,
        object_store_memory=config.object_store_mb * 1024 * 1024,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
    )


def ray_metrics_urls() -> list[str]:
    """Where Prometheus scrapes Ray on each live node: the node's metrics agent, which serves
    Ray's own metrics and every `ray.util.metrics` value of the node's workers (names prefixed
    `ray_`). The port is `ray.init(_metrics_export_port=...)` / `ray start --metrics-export-port`,
    random unless set (KubeRay sets 8080)."""
    return [f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
            for node in ray.nodes() if node.get("Alive") and node.get("MetricsExportPort")]


@contextlib.contextmanager
def ray_for(config: RayConfig) -> Iterator[bool]:
    """Ray for the block's duration; yields True when this block owns (started) the Ray.

    A local Ray we started is shut down after the block; a joined one is left running.
    """
    owned = not ray.is_initialized() and not config.address
    start_ray(config)
    try:
        yield owned
    finally:
        if owned:
            ray.shutdown()
