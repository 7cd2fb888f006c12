"""TLS and mTLS end to end, with a CA made at test time (`tls_certs`): sessions over TLS through
the gateway and straight to the replica, the Realtime port over HTTPS/WSS, plaintext clients and
clients without a CA-signed certificate refused; TLS settings from config and the environment.
(A local cluster on Ray with `microturn talk` against it: tests/test_tls_cluster.py.)

In-process servers (no Ray): one replica whose session port requires client certificates (mTLS),
gateway `tls` (TLS: any client that trusts the CA) and gateway `mtls` (client certificates
required), both relaying to that replica with the server certificate as their client one.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from types import SimpleNamespace

import aiohttp
import grpc
import pytest
import ray
from cluster_helpers import tone_chunk
from inprocess_servers import InProcessReplica, Routed
from tls_certs import pki  # noqa: F401 (the fixture)

import cluster.client_tls as client_tls_module
from cluster.client import InteractionClient
from cluster.client_tls import client_tls, use_client_tls
from cluster.config import ConfigError, TlsConfig, load_config
from cluster.gateway import Gateway
from cluster.health_probe import check_health
from cluster.realtime.server import RealtimeServer
from foreground.deployment import ReplicaSettings
from foreground.serve.session_journal import port_serving
from protos.api_keys import ApiKeys, hash_api_key
from protos.tls import TlsError, open_channel, server_credentials

KEY = "mt_tls-test-key"


@pytest.fixture(scope="module")
def servers(redis_server, pki):
    loop = asyncio.new_event_loop()
    keys = ApiKeys([hash_api_key(KEY)])

    async def start():
        settings = ReplicaSettings(max_sessions=4, redis_url=redis_server.url, threads=1,
                                   gateway_node_ip=ray.util.get_node_ip_address(),
                                   api_key_hashes=(hash_api_key(KEY),), tls=pki.server_tls(mutual=True))
        replica = await InProcessReplica.start(settings)
        gateways = {name: Gateway("127.0.0.1", 0, Routed(replica), redis_server.url, keys,
                                  tls=pki.server_tls(mutual=name == "mtls"))
                    for name in ("tls", "mtls")}
        for gateway in gateways.values():
            await gateway.start()
        realtime = RealtimeServer("127.0.0.1", 0, gateways["tls"].address, keys, gateways["tls"].bus,
                                  tls=pki.server_tls(mutual=False))
        await realtime.start()
        return replica, gateways, realtime

    replica, gateways, realtime = loop.run_until_complete(start())
    yield SimpleNamespace(loop=loop, replica=replica.address, tls=gateways["tls"].address,
                          mtls=gateways["mtls"].address, realtime=realtime.url)
    loop.run_until_complete(realtime.stop())
    for gateway in gateways.values():
        loop.run_until_complete(gateway.stop(0))
    loop.run_until_complete(replica.stop())
    loop.close()


def _run(servers, coro):
    return servers.loop.run_until_complete(asyncio.wait_for(coro, timeout=60))


async def _converse(address: str, tls: TlsConfig, direct: bool = False) -> tuple[str, list[str]]:
    """A short session (1 s of tone, then close): the replica that held it, its message kinds."""
    async with InteractionClient(address, api_key=KEY, tls=tls) as client:
        async with client.session(direct=direct, reopen_timeout_s=0) as session:
            for seq in range(1, 6):
                await session.send_audio(tone_chunk(220.0), seq=seq)
                await asyncio.sleep(0.2)
            await session.close()
            kinds: list[str] = []
            while (item := await session.next_message(timeout_s=10)) is not None:
                kinds.append(item[1].WhichOneof("payload"))
                if kinds[-1] == "closed":
                    break
            return session.opened.replica, kinds


async def _refused(address: str, tls: TlsConfig) -> grpc.aio.AioRpcError:
    async with InteractionClient(address, api_key=KEY, tls=tls) as client:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.open_session()
    return refused.value


@pytest.mark.timeout(120)
def test_a_session_works_over_tls_and_plaintext_or_untrusting_clients_are_refused(servers, pki):
    async def main():
        replica, kinds = await _converse(servers.tls, pki.client_tls())
        health = [await check_health(servers.tls, tls=pki.client_tls()),
                  # tls.server_name: the name checked instead of the address's host (127.0.0.1)
                  await check_health(servers.tls, tls=TlsConfig(ca_file=pki.ca, server_name="localhost"))]
        refusals = {
            "plaintext to the gateway": await _refused(servers.tls, TlsConfig()),
            "plaintext to the replica": await _refused(servers.replica, TlsConfig()),
            "system CAs only": await _refused(servers.tls, TlsConfig(enabled=True)),
            "a name not in the certificate": await _refused(
                servers.tls, TlsConfig(ca_file=pki.ca, server_name="elsewhere.example")),
        }
        return replica, kinds, health, refusals

    replica, kinds, health, refusals = _run(servers, main())
    assert replica == servers.replica and "audio" in kinds and kinds[-1] == "closed"
    assert health == ["SERVING", "SERVING"]
    assert {name: e.code() for name, e in refusals.items()} == dict.fromkeys(refusals, grpc.StatusCode.UNAVAILABLE)


@pytest.mark.timeout(120)
def test_mtls_refuses_clients_without_a_ca_signed_certificate_and_serves_those_with_one(servers, pki):
    async def main():
        refusals = {
            "no certificate, gateway": await _refused(servers.mtls, pki.client_tls()),
            "no certificate, replica": await _refused(servers.replica, pki.client_tls()),
            "another CA's certificate": await _refused(servers.mtls, pki.client_tls("stranger")),
        }
        relayed = await _converse(servers.mtls, pki.client_tls("client"))
        direct = await _converse(servers.mtls, pki.client_tls("client"), direct=True)
        # A replica probing another's session port (a failover's liveness check) presents its own cert.
        probes = (await port_serving(servers.replica, tls=pki.server_tls(mutual=True)),
                  await port_serving(servers.replica, tls=pki.client_tls()))
        return refusals, relayed, direct, probes

    refusals, relayed, direct, probes = _run(servers, main())
    assert {name: e.code() for name, e in refusals.items()} == dict.fromkeys(refusals, grpc.StatusCode.UNAVAILABLE)
    for replica, kinds in (relayed, direct):
        assert replica == servers.replica and "audio" in kinds and kinds[-1] == "closed"
    assert probes == (True, False)


@pytest.mark.timeout(120)
def test_the_realtime_port_serves_https_and_wss_with_the_gateway_certificate(servers, pki):
    client_ssl = ssl.create_default_context(cafile=str(pki.ca))

    async def main():
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{servers.realtime}/healthz", ssl=client_ssl) as reply:
                health = (reply.status, await reply.text())
            with pytest.raises(aiohttp.ClientError):
                async with http.get(servers.realtime.replace("https://", "http://") + "/healthz") as reply:
                    await reply.text()
            url = servers.realtime.replace("https://", "wss://") + "/v1/realtime?model=microturn&microturn_events=1"
            async with http.ws_connect(url, ssl=client_ssl, headers={"Authorization": f"Bearer {KEY}"}) as ws:
                await ws.send_json({"type": "session.update", "session": {"type": "realtime"}})
                seen: dict[str, dict] = {}
                while "microturn.session" not in seen and "error" not in seen:
                    event = json.loads((await ws.receive(timeout=20)).data)
                    seen[event["type"]] = event
        return health, seen

    health, seen = _run(servers, main())
    assert servers.realtime.startswith("https://") and health == (200, "ok")
    assert "error" not in seen, seen.get("error")
    assert seen["microturn.session"]["session_id"]  # the port reached the gateway over TLS


def test_tls_settings_come_from_config_and_environment_and_bad_files_are_named(pki, tmp_path, monkeypatch):
    for name in [n for n in os.environ if n.startswith("MICROTURN_TLS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(client_tls_module, "_configured", None)  # an in-process `main()` may have set it
    assert not load_config().tls.on and not client_tls().on  # unset: plaintext
    with pytest.raises(ConfigError, match="tls.cert_file and tls.key_file go together"):
        load_config(tls__cert_file=str(pki.server_cert))
    with pytest.raises(ConfigError, match="require_client_cert needs tls.ca_file"):
        load_config(tls__cert_file=str(pki.server_cert), tls__key_file=str(pki.server_key),
                    tls__require_client_cert=True)
    monkeypatch.setenv("MICROTURN_TLS_CA_FILE", str(pki.ca))
    monkeypatch.setenv("MICROTURN_TLS_CERT_FILE", str(pki.client_cert))
    monkeypatch.setenv("MICROTURN_TLS_KEY_FILE", str(pki.client_key))
    monkeypatch.setenv("MICROTURN_TLS_SERVER_NAME", "localhost")
    from_env = load_config().tls
    assert from_env.on and from_env.ca_file == pki.ca and from_env.server_name == "localhost"
    assert client_tls() == from_env  # an SDK client without the CLI
    use_client_tls(TlsConfig())  # the CLI's config wins (monkeypatch puts None back)
    assert not client_tls().on

    with pytest.raises(TlsError, match="tls.ca_file: cannot read .*missing.pem"):
        open_channel("127.0.0.1:1", TlsConfig(ca_file=tmp_path / "missing.pem"))
    (tmp_path / "not.pem").write_text("hello")
    with pytest.raises(TlsError, match="tls.ca_file: .*not PEM"):
        open_channel("127.0.0.1:1", TlsConfig(ca_file=tmp_path / "not.pem"))
    with pytest.raises(TlsError, match="tls.cert_file and tls.key_file: a server needs"):
        server_credentials(TlsConfig(ca_file=pki.ca))  # what `add_port` builds for a TLS port
