"""Build the Serve applications from typed config, as Ray Serve LLM's builders do."""

from __future__ import annotations

from ray.serve import Application

from cluster.config import ForegroundConfig
from foreground.deployment import ForegroundDeployment

FOREGROUND_APP = "foreground"


def build_foreground_app(config: ForegroundConfig) -> Application:
    """The foreground deployment, one long-lived request per live session."""
    return ForegroundDeployment.options(
        num_replicas=config.replicas,
        # Every live session holds one request open for its whole life.
        max_ongoing_requests=config.max_sessions + 8,
        ray_actor_options={"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
    ).bind(max_sessions=config.max_sessions)
