"""`microturn up` end to end: it joins the session's Ray, serves health and reflection on the
gateway and on the replica's session port (on loopback), makes a local API key that clients find
by themselves, and leaves nothing behind when stopped."""

import asyncio
import re
import signal
import stat
import time

import grpc
import psutil
import pytest

from cluster_helpers import up_process, wait_for_line
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from cluster.client import InteractionClient
from cluster.health_probe import check_health

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def _open_session(gateway: str, api_key: str | None) -> str:
    async with InteractionClient(gateway, api_key) as client:  # None: find this machine's key
        return (await client.open_session()).session_id


def _survivors(children: list[psutil.Process]) -> list[int]:
    """The pids of `children` still running (a zombie has ended; only its parent's wait is due)."""
    time.sleep(0.5)
    return [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_up_serves_health_and_reflection_then_stops_clean(ray_cluster, redis_server, local_api_key_file, tmp_path):
    log = tmp_path / "up.log"
    with up_process(ray_cluster, log, MICROTURN_REDIS_URL=redis_server.url) as proc:
        lines = wait_for_line(proc, "microturn is up", timeout_s=120)
        gateway = re.search(r"gateway .*: (\S+)$", "\n".join(lines), re.M).group(1)
        replica = re.search(r"foreground replica: (\S+)", "\n".join(lines)).group(1)
        assert replica.startswith("127.0.0.1:")  # beside its gateway: loopback only
        assert asyncio.run(check_health(gateway)) == "SERVING"
        assert asyncio.run(check_health(replica)) == "SERVING"
        assert f"API key: {local_api_key_file}" in lines
        assert stat.S_IMODE(local_api_key_file.stat().st_mode) == 0o600
        assert asyncio.run(_open_session(gateway, None))  # the SDK found the key by itself
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            asyncio.run(_open_session(gateway, "mt_not-the-key"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with grpc.insecure_channel(gateway) as channel:
            services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert "grpc.health.v1.Health" in services
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    assert not _survivors(children)
    key = local_api_key_file.read_text().strip()
    assert key not in "\n".join(lines) and key not in log.read_text()  # only where it is, never the key


def test_sigterm_stops_up_as_cleanly_as_ctrl_c(ray_cluster, local_api_key_file, tmp_path):
    """Ray's `init` sets a SIGTERM handler that exits at once; `up` takes SIGTERM back, so that
    a `kill` (or a container's stop) ends the gateway, its Serve apps and the embedded
    redis-server it started, as Ctrl-C does."""
    with up_process(ray_cluster, tmp_path / "up.log", MICROTURN_REDIS_URL=None) as proc:
        wait_for_line(proc, "microturn is up", timeout_s=120)
        children = psutil.Process(proc.pid).children(recursive=True)
        redis_pids = [c.pid for c in children if c.name().startswith("redis-server")]
        assert redis_pids  # no redis.url: `up` runs its own
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert "stopping" in proc.stdout.read()
    survivors = _survivors(children)
    assert not set(redis_pids) & set(survivors), "the embedded redis-server outlived `up`"
    assert not survivors
