"""Application builders for Ray Serve config files (KubeRay's `serveConfigV2`).

A Serve config names each application by `import_path: module:function`; Serve calls that
function with the application's `args` and deploys the `Application` it returns. The two
builders here turn `args` (shaped like microturn's YAML config file: sections `foreground`,
`background`, `redis`, ...) plus the pod's `MICROTURN_*` environment (the Redis URL comes from a
Secret that way) into the one typed config, then call the same builders as `microturn up`, so a
cluster and a laptop build their apps along one code path. Building only binds deployments:
nothing starts until Serve deploys the result. A build refuses `CHANGE-ME` secrets and, for the
foreground, a cluster without API keys (`cluster.cluster_secrets`); replicas built here listen
on every interface unless `foreground.bind_host` says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray.serve import Application

from cluster.app import build_background_app, build_foreground_app
from cluster.cluster_secrets import cluster_api_keys, refuse_placeholders
from cluster.config import ConfigError, MicroturnConfig, load_config


def config_from_args(args: Mapping[str, Any]) -> MicroturnConfig:
    """The typed config from a Serve application's `args` (like the YAML file; env wins)."""
    if not isinstance(args, Mapping):
        raise ConfigError(f"application args: expected a mapping of config sections, got {type(args).__name__}")
    refuse_placeholders()
    return load_config(None, **dict(args))


def cluster_redis_url(config: MicroturnConfig) -> str:
    """In a cluster the apps share one external Redis; starting a private one per node would
    split the event bus, so an unset URL is an error here rather than a default."""
    if not config.redis.url:
        raise ConfigError("redis.url is unset: set MICROTURN_REDIS_URL on every Ray pod (deploy/: the "
                          "`microturn-redis` Secret, key `url`) or `redis: {url: ...}` in the app's args")
    return config.redis.url


def foreground_app(args: dict[str, Any]) -> Application:
    """`import_path: cluster.serve_entrypoints:foreground_app` — the real-time foreground."""
    config = config_from_args(args)
    cluster_api_keys(config)  # the replicas check keys themselves; here a missing setting fails early
    return build_foreground_app(config, cluster_redis_url(config))


def background_app(args: dict[str, Any]) -> Application:
    """`import_path: cluster.serve_entrypoints:background_app` — the autoscaled background pool."""
    config = config_from_args(args)
    return build_background_app(config, cluster_redis_url(config))
