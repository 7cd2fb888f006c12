"""`microturn up`'s cluster (Ray, Serve, the gateway) with mTLS from config, and `microturn talk`
in a process of its own reaching it with TLS from MICROTURN_TLS_* (`--direct`: straight to the
replica too, whose TLS settings crossed into a Ray actor). The CA is made at test time."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import wave

import grpc
import pytest
from cluster_helpers import tone_chunk
from tls_certs import pki  # noqa: F401 (the fixture)

from cluster.config import TlsConfig, load_config
from cluster.health_probe import check_health
from cluster.runtime import LocalCluster


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_local_cluster_serves_mtls_and_microturn_talk_reaches_it_from_the_environment(
        ray_cluster, redis_server, pki, tmp_path):
    config = load_config(redis__url=redis_server.url, ray__address=ray_cluster, serve__grpc_port=0,
                         foreground__num_cpus=0.1, foreground__max_sessions=2, foreground__threads=1,
                         tls__cert_file=str(pki.server_cert), tls__key_file=str(pki.server_key),
                         tls__ca_file=str(pki.ca), tls__require_client_cert=True)
    wav_in = tmp_path / "in.wav"
    with wave.open(str(wav_in), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16_000)
        wav.writeframes(b"".join(tone_chunk(200.0) for _ in range(5)))
    env = {**os.environ, "MICROTURN_TLS_CA_FILE": str(pki.ca), "MICROTURN_TLS_CERT_FILE": str(pki.client_cert),
           "MICROTURN_TLS_KEY_FILE": str(pki.client_key)}
    env.pop("RAY_ADDRESS", None)

    async def scenario():
        async with LocalCluster(config) as cluster:
            endpoints = cluster.endpoints
            replica = endpoints.replicas[0]["address"]  # its settings, TLS too, crossed into a Ray actor
            health = await check_health(replica, tls=pki.client_tls("client"))
            with pytest.raises(grpc.aio.AioRpcError) as plaintext:
                await check_health(endpoints.gateway, tls=TlsConfig())
            talk = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cluster.cli", "talk", "--address", endpoints.gateway, "--direct",
                "--wav", str(wav_in), "--tail-s", "0.4", "--out", str(tmp_path / "answer.wav"),
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = await asyncio.wait_for(talk.communicate(), timeout=120)
            return endpoints, health, plaintext.value, talk.returncode, out.decode(), err.decode()

    endpoints, health, plaintext, code, out, err = asyncio.run(scenario())
    assert any(line.startswith("TLS: on") and "required" in line for line in endpoints.lines())
    assert endpoints.realtime.startswith("https://")
    assert health == "SERVING" and plaintext.code() == grpc.StatusCode.UNAVAILABLE
    assert code == 0, err[-2000:]
    summary = json.loads(out[out.index("{"):])
    assert summary["ticks"] >= 5 and summary["errors"] == []
    with wave.open(str(tmp_path / "answer.wav")) as answer:
        assert answer.getnframes() > 0
