"""Authentication over real gRPC on loopback: API keys on every entry point (gateway, replica,
EventBus), session tokens on the bus, constant-time comparisons, loopback session ports, and how
`microturn up`'s clients find its key.

One replica and one gateway run in this process, without Ray: the gateway's routed open goes
straight to the replica object, as Serve's handle would take it there.
"""

import asyncio
import hmac
import socket
import stat

import grpc
import pytest
import ray
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from inprocess_servers import replica_and_gateway

from cluster.client import InteractionClient
from cluster.cluster_secrets import cluster_api_keys, refuse_placeholders
from cluster.config import ConfigError, load_config
from cluster.health_probe import check_health
from cluster.local_api_key import find_api_key, local_api_key
from cluster.runtime import LocalCluster
from foreground.deployment import ReplicaSettings, session_bind_host
from protos.api_keys import ApiKeys, bearer_metadata, hash_api_key
from protos.microturn.v1 import eventbus_pb2 as bus_pb, eventbus_pb2_grpc, events_pb2
from protos.microturn.v1 import interaction_pb2 as pb, interaction_pb2_grpc

pytestmark = pytest.mark.timeout(90)
KEY = "mt_test-key-for-this-module"


@pytest.fixture(scope="module")
def servers(redis_server):
    yield from replica_and_gateway(redis_server.url, (hash_api_key(KEY),), max_sessions=4)


def _run(servers, coro):
    return servers.loop.run_until_complete(asyncio.wait_for(coro, timeout=60))


def _event(session_id: str, event_id: str) -> events_pb2.Event:
    return events_pb2.Event(session_id=session_id, event_id=event_id,
                            transcript=events_pb2.Transcript(role="tool", text=event_id))


async def _refusal(call) -> grpc.aio.AioRpcError:
    """The error a call (unary or streaming) ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    return err.value


async def _closed(session) -> None:
    await session.close()
    while (item := await session.next_message(timeout_s=10)) is not None:
        if item[1].WhichOneof("payload") == "closed":
            return


def test_every_entry_point_refuses_a_missing_or_wrong_key_and_health_stays_open(servers):
    opening = pb.ClientMessage(open=pb.SessionOpen(input_sample_rate=16_000))

    async def main():
        found = {}
        for name, metadata in {"missing": (), "wrong": bearer_metadata("not-the-key"),
                               "not bearer": (("authorization", f"Basic {KEY}"),)}.items():
            async with grpc.aio.insecure_channel(servers.gateway) as gw, \
                    grpc.aio.insecure_channel(servers.replica) as rep:
                interaction, bus = interaction_pb2_grpc.InteractionStub(gw), eventbus_pb2_grpc.EventBusStub(gw)
                # The streams write nothing: the key is refused from the metadata alone, and a
                # write racing the server's early status comes back INTERNAL from grpc's asyncio
                # client, not with the server's status (grpc/grpc#36066; seen once in CI here).
                calls = {
                    "gateway OpenSession": interaction.OpenSession(opening.open, metadata=metadata),
                    "gateway Converse": interaction.Converse(metadata=metadata),
                    "replica Converse": interaction_pb2_grpc.InteractionStub(rep).Converse(metadata=metadata),
                    "EventBus Publish": bus.Publish(bus_pb.PublishRequest(
                        session_id="s", token="t", event=_event("s", "e")), metadata=metadata),
                    "EventBus Subscribe": bus.Subscribe(bus_pb.SubscribeRequest(session_id="s", token="t"),
                                                        metadata=metadata),
                }
                for where, call in calls.items():
                    error = await _refusal(call)
                    found[name, where] = (error.code(), error.details())
        health = [await check_health(servers.gateway), await check_health(servers.replica)]
        return found, health, await asyncio.to_thread(_reflected_services, servers.gateway)

    found, health, services = _run(servers, main())
    assert {code for code, _ in found.values()} == {grpc.StatusCode.UNAUTHENTICATED}, found
    assert all("missing API key" in details and "authorization: Bearer" in details
               for (name, _), (_, details) in found.items() if name == "missing")
    assert all("not valid" in details for (name, _), (_, details) in found.items() if name == "wrong")
    assert all("Bearer <key>" in details for (name, _), (_, details) in found.items() if name == "not bearer")
    assert health == ["SERVING", "SERVING"]
    assert "microturn.v1.EventBus" in services  # reflection needs no key either


def _reflected_services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        return set(ProtoReflectionDescriptorDatabase(channel).get_services())


def test_the_right_key_opens_sessions_through_the_gateway_and_straight_to_the_replica(servers):
    async def main():
        async with InteractionClient(servers.gateway, api_key=KEY) as client:
            async with client.session() as relayed, client.session(direct=True) as direct:
                opened = relayed.opened, direct.opened
                async with grpc.aio.insecure_channel(servers.gateway) as channel:
                    bus = eventbus_pb2_grpc.EventBusStub(channel)
                    sid, token = direct.opened.session_id, direct.opened.token
                    published = await bus.Publish(bus_pb.PublishRequest(
                        session_id=sid, token=token, event=_event(sid, "hello")), metadata=bearer_metadata(KEY))
                    call = bus.Subscribe(bus_pb.SubscribeRequest(session_id=sid, token=token),
                                         metadata=bearer_metadata(KEY))
                    first = await call.read()
                    call.cancel()
                await _closed(relayed)
                await _closed(direct)
        return opened, published, first

    (relayed, direct), published, first = _run(servers, main())
    assert relayed.session_id and direct.session_id and relayed.replica == direct.replica == servers.replica
    assert first.id == published.id and first.event.event_id == "hello"


def test_the_bus_refuses_other_sessions_tokens_and_closed_sessions_and_ends_their_streams(servers):
    async def main():
        async with InteractionClient(servers.gateway, api_key=KEY) as client, \
                grpc.aio.insecure_channel(servers.gateway) as channel:
            bus, key = eventbus_pb2_grpc.EventBusStub(channel), bearer_metadata(KEY)
            async with client.session() as a, client.session() as b:
                sid, token, other = a.opened.session_id, a.opened.token, b.opened.token
                crossed = [await _refusal(bus.Publish(bus_pb.PublishRequest(
                               session_id=sid, token=other, event=_event(sid, "x")), metadata=key)),
                           await _refusal(bus.Subscribe(bus_pb.SubscribeRequest(session_id=sid, token=other),
                                                        metadata=key))]
                following = bus.Subscribe(bus_pb.SubscribeRequest(session_id=sid, token=token), metadata=key)
                await bus.Publish(bus_pb.PublishRequest(session_id=sid, token=token, event=_event(sid, "before")),
                                  metadata=key)
                await _closed(a)
                closed_at = asyncio.get_running_loop().time()
                seen = [item.event.event_id async for item in following]  # ends by itself
                ended_after_s = asyncio.get_running_loop().time() - closed_at
                after = [await _refusal(bus.Subscribe(bus_pb.SubscribeRequest(session_id=sid, token=token),
                                                      metadata=key)),
                         await _refusal(bus.Publish(bus_pb.PublishRequest(
                             session_id=sid, token=token, event=_event(sid, "late")), metadata=key))]
                await _closed(b)
            ended_with = await following.code()
        return crossed, seen, ended_after_s, ended_with, after

    crossed, seen, ended_after_s, ended_with, after = _run(servers, main())
    assert [e.code() for e in crossed] == [grpc.StatusCode.PERMISSION_DENIED] * 2
    assert all("token" in e.details() for e in crossed)
    assert seen == ["before"] and ended_with == grpc.StatusCode.OK and ended_after_s < 3.0
    assert [e.code() for e in after] == [grpc.StatusCode.NOT_FOUND] * 2
    assert all("not live" in e.details() for e in after)


def test_tokens_and_keys_are_compared_in_constant_time(servers, monkeypatch):
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)

    async def main():
        async with InteractionClient(servers.gateway, api_key=KEY) as client:
            async with client.session() as live:
                sid, token = live.opened.session_id, live.opened.token
                codes = []
                for address in (servers.replica, servers.gateway):  # the replica's own check, the gateway's
                    async with InteractionClient(address, api_key=KEY) as resumer:
                        with pytest.raises(grpc.aio.AioRpcError) as err:
                            async with resumer.session(session_id=sid, token="forged"):
                                pass
                        codes.append(err.value.code())
                await _closed(live)
        return token, codes

    token, codes = _run(servers, main())
    assert codes == [grpc.StatusCode.PERMISSION_DENIED] * 2
    assert compared.count((token.encode(), b"forged")) == 2  # SessionHost.open and the gateway's lookup
    assert (bytes.fromhex(hash_api_key(KEY)),) * 2 in compared  # the API key: digest against digest


def test_local_replicas_listen_on_loopback_and_cluster_ones_everywhere(servers):
    here = ray.util.get_node_ip_address()
    assert session_bind_host(ReplicaSettings(gateway_node_ip=here)) == "127.0.0.1"
    assert session_bind_host(ReplicaSettings(gateway_node_ip="203.0.113.9")) == "0.0.0.0"  # another node
    assert session_bind_host(ReplicaSettings()) == "0.0.0.0"  # apps built for a cluster
    assert session_bind_host(ReplicaSettings(bind_host="10.1.2.3", gateway_node_ip=here)) == "10.1.2.3"
    assert servers.replica.startswith("127.0.0.1:")
    if not here.startswith("127."):
        port = int(servers.replica.rsplit(":", 1)[1])
        with pytest.raises(ConnectionRefusedError), socket.create_connection((here, port), timeout=2):
            pass


def test_up_keeps_a_local_key_in_a_private_file_and_clients_find_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MICROTURN_API_KEY", raising=False)
    path = tmp_path / "config" / "microturn" / "api_key"
    key, source = local_api_key(path)
    assert source == str(path) and key not in source
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert local_api_key(path) == (key, source)  # the next `up` keeps it
    monkeypatch.setenv("MICROTURN_AUTH_KEY_FILE", str(path))
    assert find_api_key() == key
    assert InteractionClient("127.0.0.1:1").metadata == bearer_metadata(key)
    cluster = LocalCluster(load_config())  # `up` accepts that key when none is configured
    config, shown = cluster._with_api_keys(cluster.config)
    assert config.auth.api_key_hashes == (hash_api_key(key),) and cluster.api_key == key and shown == str(path)
    monkeypatch.setenv("MICROTURN_API_KEY", "mt_from-the-environment")  # the variable comes first
    assert find_api_key(path) == local_api_key(path)[0] == "mt_from-the-environment"


def test_keys_are_configured_as_hashes_and_a_cluster_needs_some(monkeypatch):
    digests = [hash_api_key("a"), hash_api_key("b")]
    monkeypatch.setenv("MICROTURN_AUTH_API_KEY_HASHES", f"{digests[0].upper()}, {digests[1]}")
    assert load_config().auth.api_key_hashes == tuple(digests)
    monkeypatch.setenv("MICROTURN_AUTH_API_KEY_HASHES", f"{digests[0]}  -")  # as `sha256sum` prints it
    assert load_config().auth.api_key_hashes == (digests[0],)
    assert cluster_api_keys(load_config()).refusal(bearer_metadata("a")) is None
    monkeypatch.setenv("MICROTURN_AUTH_API_KEY_HASHES", "mt_a-raw-key-pasted-by-mistake")
    with pytest.raises(ConfigError) as err:
        load_config()
    assert "MICROTURN_AUTH_API_KEY_HASHES" in str(err.value) and "pasted" not in str(err.value)
    monkeypatch.delenv("MICROTURN_AUTH_API_KEY_HASHES")
    with pytest.raises(ConfigError, match="MICROTURN_AUTH_API_KEY_HASHES"):
        cluster_api_keys(load_config())
    monkeypatch.setenv("MICROTURN_AUTH_DISABLED", "true")
    assert cluster_api_keys(load_config()).refusal(()) is None
    with pytest.raises(ConfigError) as err:
        refuse_placeholders({"MICROTURN_REDIS_URL": "redis://:CHANGE-ME-pw@redis:6379/0", "HOME": "/root"})
    assert "MICROTURN_REDIS_URL" in str(err.value) and "redis://" not in str(err.value)
    assert ApiKeys([], required=True).refusal(bearer_metadata("any")).startswith("this server accepts no API key")
