"""Sessions end to end through real Ray Serve and gRPC: isolation, stickiness, admission,
malformed input, resume after a disconnect."""

import asyncio

import grpc
import pytest

from cluster_helpers import running_cluster, tone_chunk

from cluster.client import InteractionClient
from cluster.config import load_config
from foreground.serve.session_directory import SessionDirectory
from protos.api_keys import bearer_metadata
from protos.microturn.v1 import interaction_pb2 as pb, interaction_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
SLOTS_PER_REPLICA, REPLICAS = 2, 2


@pytest.fixture(scope="module")
def cluster(ray_cluster, redis_server):
    config = load_config(redis__url=redis_server.url, ray__address=ray_cluster, serve__grpc_port=0,
                         foreground__num_cpus=0.25, foreground__replicas=REPLICAS,
                         foreground__max_sessions=SLOTS_PER_REPLICA, foreground__threads=1)
    yield from running_cluster(config)


def _run(cluster, coro):
    loop, _ = cluster
    return loop.run_until_complete(asyncio.wait_for(coro, timeout=120))


async def _stream(session, chunks: int, freq: float, pace_s: float = 0.2) -> None:
    for seq in range(1, chunks + 1):
        await session.send_audio(tone_chunk(freq), seq=seq)
        await asyncio.sleep(pace_s)


async def _drain(session, max_s: float = 10.0) -> list[pb.ServerMessage]:
    """Every message until the session's `closed` one."""
    seen = []
    while (item := await session.next_message(timeout_s=max_s)) is not None:
        seen.append(item[1])
        if item[1].WhichOneof("payload") == "closed":
            break
    return seen


async def _receive_for(session, seconds: float) -> list[pb.ServerMessage]:
    seen = []
    deadline = asyncio.get_running_loop().time() + seconds
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            seen.append((await session.next_message(timeout_s=left))[1])
        except TimeoutError:
            break
    return seen


def test_two_concurrent_sessions_stay_isolated_on_the_replica_that_holds_them(cluster):
    gateway = cluster[1].endpoints.gateway
    directory = SessionDirectory.from_url(cluster[1].endpoints.redis_url)

    async def main():
        async with InteractionClient(gateway) as client:
            async with client.session() as a, client.session(direct=True) as b:
                assert a.opened.session_id != b.opened.session_id
                for s in (a, b):
                    where = await directory.lookup(s.opened.session_id)
                    assert where is not None and where.address == s.opened.replica
                await asyncio.gather(_stream(a, 6, 200), _stream(b, 4, 330))
                await asyncio.sleep(0.5)
                await a.close()
                await b.close()
                got_a, got_b = await _drain(a), await _drain(b)
        await directory.close()
        return got_a, got_b

    got_a, got_b = _run(cluster, main())
    for got, chunks in ((got_a, 6), (got_b, 4)):
        used = sorted({m.audio.timing.input_seq for m in got if m.WhichOneof("payload") == "audio"} - {0})
        assert used == list(range(1, chunks + 1))  # every chunk reached this session's slot, once
        seqs = [m.seq for m in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert got[-1].closed.reason


def test_replicas_run_at_the_configured_niceness_not_rays_worker_default(cluster):
    """Ray nices its workers to 15; a replica that must tick on time runs at config's 0."""
    running = cluster[1]
    described = _run(cluster, running.foreground.describe.remote())
    assert described["niceness"] == running.config.foreground.niceness == 0


def test_a_full_cluster_says_resource_exhausted_and_closing_frees_a_slot(cluster):
    gateway = cluster[1].endpoints.gateway

    async def main():
        async with InteractionClient(gateway) as client:
            held = []
            for _ in range(SLOTS_PER_REPLICA * REPLICAS):
                held.append(await client.open_session())
            assert len({h.replica for h in held}) == REPLICAS  # Serve spread them
            with pytest.raises(grpc.aio.AioRpcError) as full:
                await client.open_session()
            assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert dict(full.value.trailing_metadata() or ()).get("retry-after-ms")
            first = held[0]
            async with client.session(session_id=first.session_id, token=first.token) as s:
                await s.close()
                await _drain(s)
            again = await client.open_session()
            assert again.session_id
            for h in [*held[1:], again]:  # release the rest
                async with client.session(session_id=h.session_id, token=h.token) as s:
                    await s.close()
                    await _drain(s)

    _run(cluster, main())


def test_a_malformed_chunk_names_the_field_and_the_session_and_its_peers_go_on(cluster):
    gateway = cluster[1].endpoints.gateway

    async def main():
        async with InteractionClient(gateway) as client:
            async with client.session() as bad, client.session() as peer:
                await bad.send_audio(b"\x01\x02\x03", seq=1)
                await bad.send(pb.ClientMessage())  # no payload at all
                await asyncio.gather(_stream(bad, 3, 200), _stream(peer, 3, 250))
                await asyncio.sleep(0.4)
                await bad.close()
                await peer.close()
                return await _drain(bad), await _drain(peer)

    got_bad, got_peer = _run(cluster, main())
    errors = [m.error for m in got_bad if m.WhichOneof("payload") == "error"]
    assert [(e.code, e.field) for e in errors] == [("INVALID_ARGUMENT", "audio.pcm16"), ("INVALID_ARGUMENT", "payload")]
    for got in (got_bad, got_peer):
        used = {m.audio.timing.input_seq for m in got if m.WhichOneof("payload") == "audio"}
        assert {1, 2, 3} <= used


def test_the_first_message_must_be_open(cluster):
    gateway, key = cluster[1].endpoints.gateway, cluster[1].api_key

    async def main():
        async with grpc.aio.insecure_channel(gateway) as channel:
            call = interaction_pb2_grpc.InteractionStub(channel).Converse(
                iter([pb.ClientMessage(text=pb.TextInput(text="hi"))]), metadata=bearer_metadata(key))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in call:
                    pass
            return err.value

    err = _run(cluster, main())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "open" in err.details()


def test_a_dropped_stream_resumes_without_gaps_and_a_wrong_token_is_refused(cluster):
    gateway = cluster[1].endpoints.gateway

    async def main():
        async with InteractionClient(gateway) as client:
            async with client.session() as first:
                opened = first.opened
                await _stream(first, 3, 200)
                seen = await _receive_for(first, 0.5)
            last = max(m.seq for m in seen)
            await asyncio.sleep(0.6)  # ticks go on while nobody listens
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                async with client.session(session_id=opened.session_id, token="wrong"):
                    pass
            async with client.session(session_id=opened.session_id, token=opened.token,
                                      resume_after_seq=last) as again:
                assert again.opened.resumed and again.opened.session_id == opened.session_id
                await again.close()
                resumed = await _drain(again)
            return last, resumed, denied.value

    last, resumed, denied = _run(cluster, main())
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    seqs = [m.seq for m in resumed]
    assert seqs[0] == last + 1 and seqs == list(range(last + 1, last + 1 + len(seqs)))


def test_a_web_search_comes_back_woven_while_audio_keeps_flowing(cluster):
    gateway = cluster[1].endpoints.gateway

    async def main():
        async with InteractionClient(gateway) as client:
            async with client.session() as s:
                streamer = asyncio.create_task(_stream(s, 15, 180))
                await asyncio.sleep(0.3)
                await s.request_tool("web_search", '{"query": "weather in Paris", "max_results": 2}')
                got = await _receive_for(s, 3.5)
                await streamer
                await s.close()
                got += await _drain(s)
                return got

    got = _run(cluster, main())
    kinds = [m.WhichOneof("payload") for m in got]
    assert "tool_call" in kinds and "tool_result" in kinds and "woven" in kinds
    result = next(m.tool_result for m in got if m.WhichOneof("payload") == "tool_result")
    assert result.tool == "web_search" and not result.error and "paris" in result.result_json.lower()
    woven = next(m.woven for m in got if m.WhichOneof("payload") == "woven")
    assert woven.job_id == result.job_id
    # read from the bus after it was published (a ms stamp), woven at a tick that began after that
    assert woven.received_unix_ns >= woven.published_unix_ns - 1_000_000
    assert woven.woven_unix_ns >= woven.published_unix_ns - 1_000_000
    ticks = [m.audio.audio_seq for m in got if m.WhichOneof("payload") == "audio"]
    assert ticks == list(range(ticks[0], ticks[0] + len(ticks)))  # one audio chunk every tick, no gap
