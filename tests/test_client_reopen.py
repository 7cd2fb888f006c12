"""The SDK reopens a failed stream by itself (`resume_after_seq` = the last seq it got), says
so (a log line, `reopens`), sends what was queued meanwhile on the new stream, and hands the
error to the caller when no server takes the session in time or the failure is final.

Against a scripted `Interaction` server on loopback: each `Converse` call does what the test
queued for it."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from cluster.client import InteractionClient
from protos.microturn.v1 import interaction_pb2 as pb, interaction_pb2_grpc

pytestmark = pytest.mark.timeout(30)


class _Scripted(interaction_pb2_grpc.InteractionServicer):
    """Call k: opens (numbering on from the client's resume_after_seq) and sends `plan[k][0]`
    messages, then ends with status `plan[k][1]` (None: waits for the client's close); or, if
    `plan[k]` is a status, refuses the open with it. Calls past the plan refuse UNAVAILABLE."""

    def __init__(self, plan: list) -> None:
        self.plan, self.opens, self.received = plan, [], []

    async def Converse(self, requests, context):
        first = await anext(aiter(requests))
        self.opens.append(first.open)
        step = self.plan[len(self.opens) - 1] if len(self.opens) <= len(self.plan) else grpc.StatusCode.UNAVAILABLE
        if isinstance(step, grpc.StatusCode):
            await context.abort(step, "scripted refusal")
        count, end = step
        seq = first.open.resume_after_seq
        yield pb.ServerMessage(opened=pb.SessionOpened(session_id="s1", token="t1", replica="here",
                                                       resumed=bool(first.open.session_id)))
        reader = asyncio.create_task(self._read(requests))
        for _ in range(count):
            seq += 1
            yield pb.ServerMessage(seq=seq, text=pb.TextOut(text=f"m{seq}"))
            await asyncio.sleep(0.05)
        if end is not None:
            await asyncio.sleep(0.2)  # the client's queued messages arrive first
            reader.cancel()
            await context.abort(end, "scripted failure")
        await reader
        yield pb.ServerMessage(seq=seq + 1, closed=pb.SessionClosed(reason="bye"))

    async def _read(self, requests):
        async for message in requests:
            self.received.append(message)
            if message.WhichOneof("payload") == "close":
                return


async def _serve(plan: list):
    server = grpc.aio.server()
    servicer = _Scripted(plan)
    interaction_pb2_grpc.add_InteractionServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, servicer, f"127.0.0.1:{port}"


async def _until_end(session) -> list[pb.ServerMessage]:
    got = []
    while (item := await session.next_message(timeout_s=10)) is not None:
        got.append(item[1])
        if item[1].WhichOneof("payload") == "closed":
            break
    return got


def test_a_failed_stream_is_reopened_after_the_last_seq_and_the_queue_goes_on(caplog):
    async def main():
        server, servicer, address = await _serve([(3, grpc.StatusCode.UNAVAILABLE), grpc.StatusCode.UNAVAILABLE,
                                                  (2, None)])
        async with InteractionClient(address, api_key="k") as client:
            async with client.session() as s:
                await s.send_text("before")
                while s.last_seq < 3:
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.1)  # the stream fails now, and is reopened meanwhile
                await s.send_text("during or after")
                while s.reopens < 1:
                    await asyncio.sleep(0.02)
                await s.close()
                got = await _until_end(s)
        await server.stop(0)
        return servicer, got, s

    with caplog.at_level(logging.WARNING, logger="cluster.client"):
        servicer, got, s = asyncio.run(main())
    assert [o.resume_after_seq for o in servicer.opens] == [0, 3, 3]  # the last seq it had
    assert [o.session_id for o in servicer.opens] == ["", "s1", "s1"] and servicer.opens[2].token == "t1"
    assert [m.seq for m in got] == [1, 2, 3, 4, 5, 6] and got[-1].closed.reason == "bye"
    texts = [m.text.text for m in servicer.received if m.WhichOneof("payload") == "text"]
    assert texts == ["before", "during or after"]  # nothing lost or sent twice
    assert s.reopens == 1 and "UNAVAILABLE" in s.reopened_after[0] and s.error is None
    assert any("reopened" in r.message for r in caplog.records)


def test_no_server_in_time_hands_the_error_to_the_caller(caplog):
    async def main():
        server, servicer, address = await _serve([(2, grpc.StatusCode.UNAVAILABLE)])
        async with InteractionClient(address, api_key="k") as client:
            async with client.session(reopen_timeout_s=1.0) as s:
                got = []
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    while True:
                        got.append((await s.next_message(timeout_s=10))[1])
                with pytest.raises(grpc.aio.AioRpcError):
                    await s.send_audio(bytes(6400), seq=1)
                await s.close()  # a no-op now
        await server.stop(0)
        return servicer, got, s, failed.value

    with caplog.at_level(logging.WARNING, logger="cluster.client"):
        servicer, got, s, error = asyncio.run(main())
    assert [m.seq for m in got] == [1, 2] and error.code() == grpc.StatusCode.UNAVAILABLE
    assert len(servicer.opens) >= 3 and s.reopens == 0 and s.error is error  # it tried, then gave up
    assert any("could not be reopened" in r.message for r in caplog.records)


def test_a_final_failure_is_not_retried():
    async def main():
        server, servicer, address = await _serve([(1, grpc.StatusCode.PERMISSION_DENIED)])
        async with InteractionClient(address, api_key="k") as client:
            async with client.session() as s:
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    async for _ in s.messages():
                        pass
        await server.stop(0)
        return servicer, failed.value

    servicer, error = asyncio.run(main())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and len(servicer.opens) == 1



def test_the_sdk_leaves_the_wait_before_answering_to_the_server_unless_given():
    """`end_silence_ms=None` leaves the proto's optional field unset (the replica's setting);
    0 is a wait of its own (answer at once), not "unset"."""
    client = InteractionClient("127.0.0.1:1")
    unset = client.session(end_silence_ms=None).opening
    zero = client.session(end_silence_ms=0).opening
    long = client.session(end_silence_ms=600, turn_policy="vad").opening
    assert not unset.HasField("end_silence_ms")
    assert zero.HasField("end_silence_ms") and zero.end_silence_ms == 0
    assert (long.end_silence_ms, long.turn_policy) == (600, pb.TURN_POLICY_VAD)
