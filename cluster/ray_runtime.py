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
