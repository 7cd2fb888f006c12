"""`microturn up` end to end: it joins the session's Ray, serves health and reflection on the
gateway and on the replica's session port, and leaves nothing behind when stopped."""

import asyncio
import os
import re
import signal
import subprocess
import sys
import time

import grpc
import psutil
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from cluster.health_probe import check_health

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _wait_for_line(proc: subprocess.Popen, pattern: str, timeout_s: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line.rstrip())
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"no line matching {pattern!r}; got: {lines}")


def test_up_serves_health_and_reflection_then_stops_clean(ray_cluster, redis_server):
    env = {**os.environ, "RAY_ADDRESS": ray_cluster, "MICROTURN_REDIS_URL": redis_server.url,
           "MICROTURN_SERVE_GRPC_PORT": "0", "MICROTURN_FOREGROUND_NUM_CPUS": "0.1"}
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "up"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = _wait_for_line(proc, "microturn is up", timeout_s=120)
        gateway = re.search(r"gateway .*: (\S+)$", "\n".join(lines), re.M).group(1)
        replica = re.search(r"foreground replica: (\S+)", "\n".join(lines)).group(1)
        assert asyncio.run(check_health(gateway)) == "SERVING"
        assert asyncio.run(check_health(replica)) == "SERVING"
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
