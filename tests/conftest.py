"""Shared real parts for the suite: one Redis and one local Ray per test session.

Fault tests that need a Redis of their own use `private_redis`, which ends its server by pid.
Local clusters keep their API key in a file of the test session's own (`local_api_key_file`),
never in the user's `~/.config/microturn`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Keep Ray and Serve quiet and small on a 2-core machine.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

from cluster.config import RayConfig  # noqa: E402
from cluster.redis_server import EmbeddedRedis  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def local_api_key_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where `LocalCluster`, `microturn up` (a child process inherits the variable) and clients
    find the local API key during the suite; a key of the developer's own is not used."""
    saved = {name: os.environ.pop(name, None) for name in ("MICROTURN_API_KEY", "MICROTURN_AUTH_KEY_FILE")}
    path = tmp_path_factory.mktemp("auth") / "api_key"
    os.environ["MICROTURN_AUTH_KEY_FILE"] = str(path)
    yield path
    for name, value in saved.items():
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis.start()
    yield server
    server.stop()


@pytest.fixture
def private_redis() -> Iterator[Callable[..., EmbeddedRedis]]:
    """A factory of Redis servers owned by one test (for fault tests); all stopped after it."""
    started: list[EmbeddedRedis] = []

    def start(**kwargs) -> EmbeddedRedis:
        server = EmbeddedRedis.start(**kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A local Ray for the whole session; yields its address for processes that join it."""
    import ray
    from ray import serve

    from cluster.ray_runtime import start_ray

    start_ray(RayConfig(num_cpus=2, object_store_mb=200))
    yield ray.get_runtime_context().gcs_address
    serve.shutdown()
    ray.shutdown()
