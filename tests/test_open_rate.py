"""OpenSession per API key per second: a token bucket per key at the gateway and at each
replica's session port; past it, RESOURCE_EXHAUSTED naming `limits.opens_per_key_per_second`
with a `retry-after-ms` trailer. Another key, and resumes of open sessions, are not held back.
A real replica and gateway on loopback (no Ray: `inprocess_servers`)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from inprocess_servers import replica_and_gateway

from cluster.config import LimitsConfig
from foreground.serve.open_rate import OpenRate
from protos.api_keys import bearer_metadata, hash_api_key
from protos.microturn.v1 import interaction_pb2 as pb, interaction_pb2_grpc

KEY, OTHER_KEY = "mt_rate-test-key", "mt_rate-test-other-key"
LIMITS = LimitsConfig(opens_per_key_per_second=1.0, opens_burst=2)


def test_a_bucket_per_key_refills_at_the_rate():
    now = [100.0]
    rate = OpenRate(per_second=2.0, burst=3, clock=lambda: now[0])
    key = bearer_metadata("k")
    assert [rate.take(key) for _ in range(3)] == [0.0, 0.0, 0.0]  # the burst
    assert rate.take(key) == pytest.approx(0.5)  # then one every 0.5 s
    assert rate.take((("authorization", "bearer  k "),)) == pytest.approx(0.5)  # however it is spelt
    assert rate.take(bearer_metadata("other")) == 0.0  # another key has its own bucket
    now[0] += 0.25
    assert rate.take(key) == pytest.approx(0.25)
    now[0] += 0.25
    assert rate.take(key) == 0.0 and rate.take(key) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def servers(redis_server):
    yield from replica_and_gateway(redis_server.url, (hash_api_key(KEY), hash_api_key(OTHER_KEY)), max_sessions=12,
                                   limits=LIMITS)


async def _open(channel, key: str, **fields) -> pb.SessionOpened | grpc.aio.AioRpcError:
    try:
        return await interaction_pb2_grpc.InteractionStub(channel).OpenSession(
            pb.SessionOpen(input_sample_rate=16_000, **fields), metadata=bearer_metadata(key), timeout=30)
    except grpc.aio.AioRpcError as e:
        return e


async def _converse(channel, key: str) -> str | grpc.aio.AioRpcError:
    """Open a new session on a stream: 'opened', or the error that ended the stream."""
    call = interaction_pb2_grpc.InteractionStub(channel).Converse(
        iter([pb.ClientMessage(open=pb.SessionOpen(input_sample_rate=16_000))]), metadata=bearer_metadata(key))
    try:
        first = await call.read()
        return first.WhichOneof("payload")
    except grpc.aio.AioRpcError as e:
        return e
    finally:
        call.cancel()


@pytest.mark.timeout(90)
def test_opens_past_the_rate_are_refused_at_the_gateway_and_the_replica_and_resumes_are_free(servers):
    async def main():
        async with grpc.aio.insecure_channel(servers.gateway) as gw, grpc.aio.insecure_channel(servers.replica) as rep:
            burst = [await _open(gw, KEY), await _open(gw, KEY)]
            refused = {"gateway OpenSession": await _open(gw, KEY), "gateway Converse": await _converse(gw, KEY)}
            first = burst[0]
            resumed = await _open(gw, KEY, session_id=first.session_id, token=first.token)
            other_key = await _open(gw, OTHER_KEY)
            replica = [await _converse(rep, KEY), await _converse(rep, KEY), await _converse(rep, KEY)]
            await asyncio.sleep(1.1)  # one more open for the key
            later = await _open(gw, KEY)
            return burst, refused, resumed, other_key, replica, later

    burst, refused, resumed, other_key, replica, later = servers.loop.run_until_complete(main())
    assert all(isinstance(o, pb.SessionOpened) for o in burst)
    refused["replica Converse"] = replica[2]
    for where, error in refused.items():
        assert isinstance(error, grpc.aio.AioRpcError), where
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, where
        assert "limits.opens_per_key_per_second" in error.details() and "limits.opens_burst" in error.details()
        assert 0 < int(dict(error.trailing_metadata())["retry-after-ms"]) <= 1000
    assert replica[:2] == ["opened", "opened"]  # the replica's port counts on its own
    assert isinstance(resumed, pb.SessionOpened) and resumed.session_id == burst[0].session_id
    assert isinstance(other_key, pb.SessionOpened) and isinstance(later, pb.SessionOpened)
