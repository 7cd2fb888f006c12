"""`microturn demo` on the session's Ray and Redis: every part answers and the run folder is written."""

import asyncio
import json

import pytest

from cluster.config import load_config
from cluster.demo import run_demo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_demo_writes_its_run_folder(ray_cluster, redis_server, tmp_path):
    config = load_config(redis__url=redis_server.url, serve__grpc_port=0,
                         foreground__num_cpus=0.1, ray__address=ray_cluster)
    summary = asyncio.run(run_demo(config, tmp_path))
    assert summary["gateway_health"] == "SERVING"
    assert summary["replica_health"] == "SERVING"
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    [event] = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert event["transcript"]["text"] == "hello from the bus"
