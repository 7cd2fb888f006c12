"""Build the Serve applications from typed config, as Ray Serve LLM's builders do."""

from __future__ import annotations

from ray.serve import Application

from background.autoscaling import POLICY_PATH
from background.deployment import BackgroundPoolDeployment, PoolSettings
from background.tools.config import ToolsConfig
from cluster.config import MicroturnConfig
from foreground.deployment import ForegroundDeployment, ReplicaSettings

FOREGROUND_APP = "foreground"
BACKGROUND_APP = "background"


def replica_settings(config: MicroturnConfig, redis_url: str | None,
                     gateway_node_ip: str | None = None) -> ReplicaSettings:
    """`gateway_node_ip`: `microturn up` runs its gateway there, and a replica on that node binds
    its session port to loopback unless `foreground.bind_host` says otherwise; None (apps built
    for a cluster) binds every interface."""
    fg = config.foreground
    return ReplicaSettings(
        max_sessions=fg.max_sessions, preset=fg.preset, device=fg.device, dtype=fg.dtype,
        checkpoint=str(fg.checkpoint) if fg.checkpoint else None, turn_policy=fg.turn_policy,
        backchannel_max_ms=fg.backchannel_max_ms, min_end_silence_ms=fg.min_end_silence_ms,
        weave_max_wait_ms=fg.weave_max_wait_ms,
        invariant_kernels=fg.kernels == "invariant", tick_ms=fg.tick_ms, redis_url=redis_url,
        threads=fg.threads, idle_timeout_s=fg.idle_timeout_s, resume_grace_s=fg.resume_grace_s,
        limits=config.limits.model_dump(),
        bind_host=fg.bind_host, gateway_node_ip=gateway_node_ip,
        api_key_hashes=config.auth.api_key_hashes, auth_disabled=config.auth.disabled,
        tls=config.tls,
    )


def build_foreground_app(config: MicroturnConfig, redis_url: str | None,
                         gateway_node_ip: str | None = None) -> Application:
    """The foreground deployment. A live session holds no Serve request (it streams to the
    replica's own port), but `max_ongoing_requests` still admits one open per slot."""
    fg = config.foreground
    actor_options: dict = {"num_cpus": fg.num_cpus, "num_gpus": fg.num_gpus,
                           # Ray nices worker processes to 15 (RAY_worker_niceness); the tick and
                           # the session streams must not wait behind the node's other processes.
                           "runtime_env": {"env_vars": {"RAY_worker_niceness": str(fg.niceness)}}}
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
        if fg.label_selector:  # the group's node is chosen when its bundles are placed: gate those too
            options["placement_group_bundle_label_selector"] = [dict(fg.label_selector)]
    return ForegroundDeployment.options(**options).bind(replica_settings(config, redis_url, gateway_node_ip))


def pool_settings(config: MicroturnConfig, redis_url: str) -> PoolSettings:
    bg = config.background
    reasoner_settings: dict = dict(bg.reasoner_options)
    if bg.reasoner == "openai":
        reasoner_settings.update(base_url=bg.openai_base_url, model=bg.openai_model,
                                 api_key_env=bg.openai_api_key_env, timeout_s=bg.openai_timeout_s)
    tools = ToolsConfig(search_provider=bg.search_provider, searxng_url=bg.searxng_url,
                        fetch_allow_hosts=tuple(bg.fetch_allow_hosts), allow_private=bg.fetch_allow_private,
                        **({"corpus_dir": bg.corpus_dir} if bg.corpus_dir else {}))
    return PoolSettings(redis_url=redis_url, reasoner=bg.reasoner, reasoner_settings=reasoner_settings,
                        tools=tools, concurrency=bg.concurrency, reclaim_idle_ms=bg.reclaim_idle_ms)


def build_background_app(config: MicroturnConfig, redis_url: str) -> Application:
    """The background pool, autoscaled by `QueueLagPolicy` on the `mt:jobs` backlog (waiting +
    pending per replica, and the oldest job's wait) between min and max replicas."""
    bg = config.background
    autoscaling = {
        "min_replicas": bg.min_replicas, "max_replicas": bg.max_replicas,
        "upscale_delay_s": bg.upscale_delay_s, "downscale_delay_s": bg.downscale_delay_s,
        "look_back_period_s": bg.look_back_period_s, "metrics_interval_s": bg.metrics_interval_s,
        "policy": {"policy_function": POLICY_PATH,
                   "policy_kwargs": {"jobs_per_replica": bg.jobs_per_replica, "max_wait_s": bg.max_wait_s}},
    }
    actor_options: dict = {"num_cpus": bg.num_cpus}
    if bg.label_selector:
        actor_options["label_selector"] = dict(bg.label_selector)
    return BackgroundPoolDeployment.options(
        autoscaling_config=autoscaling, ray_actor_options=actor_options,
    ).bind(pool_settings(config, redis_url))
