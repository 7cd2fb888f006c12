"""Ray for microturn: join `RAY_ADDRESS`, or start a local Ray sized for this machine."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator

import ray

from cluster.config import RayConfig

log = logging.getLogger(__name__)


def start_ray(config: RayConfig) -> None:
    """Connect this process to Ray (idempotent), keeping a SIGTERM handler of its own."""
    if ray.is_initialized():
        return
    with _own_sigterm_handler_kept():
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


@contextlib.contextmanager
def _own_sigterm_handler_kept() -> Iterator[None]:
    """`ray.init` takes SIGTERM twice over: a Python handler that exits at once, and beneath it
    Ray's C++ failure handler, which prints a stack trace and arms an alarm that aborts the
    process 3 s later, in the middle of any clean-up (so `microturn up` left its redis-server
    running). A process that set a SIGTERM handler of its own before (`microturn up`: stop as
    Ctrl-C does) gets it back, at both levels (`signal.signal` installs Python's own C handler
    again); one that had the default keeps Ray's."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(previous) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


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
