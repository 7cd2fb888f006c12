"""Build the Serve applications from typed config, as Ray Serve LLM's builders do."""

from __future__ import annotations

from ray.serve import Application

from cluster.config import MicroturnConfig
from foreground.deployment import ForegroundDeployment, ReplicaSettings

FOREGROUND_APP = "foreground"


def replica_settings(config: MicroturnConfig, redis_url: str | None) -> ReplicaSettings:
    fg = config.foreground
    return ReplicaSettings(
        max_sessions=fg.max_sessions, preset=fg.preset,
        checkpoint=str(fg.checkpoint) if fg.checkpoint else None, turn_policy=fg.turn_policy,
        invariant_kernels=fg.kernels == "invariant", tick_ms=fg.tick_ms, redis_url=redis_url,
        threads=fg.threads, idle_timeout_s=fg.idle_timeout_s, resume_grace_s=fg.resume_grace_s,
    )


def build_foreground_app(config: MicroturnConfig, redis_url: str | None) -> Application:
    """The foreground deployment. A live session holds no Serve request (it streams to the
    replica's own port), but `max_ongoing_requests` still admits one open per slot."""
    fg = config.foreground
    actor_options: dict = {"num_cpus": fg.num_cpus, "num_gpus": fg.num_gpus}
    if fg.label_selector:
        actor_options["label_selector"] = dict(fg.label_selector)
    options: dict = {
        "num_replicas": fg.replicas,
        "max_ongoing_requests": fg.max_sessions + 8,
        "ray_actor_options": actor_options,
    }
    if fg.placement_group_bundles:
        options["placement_group_bundles"] = [dict(b) for b in fg.placement_group_bundles]
        options["placement_group_strategy"] = fg.placement_group_strategy
    return ForegroundDeployment.options(**options).bind(replica_settings(config, redis_url))
