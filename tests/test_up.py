"""`microturn up` end to end: it joins the session's Ray, serves health and reflection on the
gateway and on the replica's session port (on loopback), makes a local API key that clients find
by themselves, and leaves nothing behind when stopped."""

import asyncio
import os
import re
import signal
import stat
import subprocess
import sys
import time

import grpc
import psutil
import pytest

from cluster_helpers import wait_for_line
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from cluster.client import InteractionClient
from cluster.health_probe import check_health

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def _open_session(gateway: str, api_key: str | None) -> str:
    async with InteractionClient(gateway, api_key) as client:  # None: find this machine's key
        return (await client.open_session()).session_id


def test_up_serves_health_and_reflection_then_stops_clean(ray_cluster, redis_server, local_api_key_file, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ray_cluster, "MICROTURN_REDIS_URL": redis_server.url,
           "MICROTURN_SERVE_GRPC_PORT": "0", "MICROTURN_FOREGROUND_NUM_CPUS": "0.1"}
    log = tmp_path / "up.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "up"], env=env,
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
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
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.5)
    assert not [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    key = local_api_key_file.read_text().strip()
    assert key not in "\n".join(lines) and key not in log.read_text()  # only where it is, never the key
