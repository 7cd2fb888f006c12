"""The transport floor under `bench load`: what bare grpc.aio costs this machine to carry one
tick's messages to N streams, with no model, engine or session code in the way.

After each tick a replica puts one message into each live session's stream and one event loop
writes them, one after another, so the last of N waits for the N-1 writes before it. What a write
costs depends on the machine and grpcio, not on microturn; `bench load` measures it bare, before
its cluster starts, so that its own `outbound_ms_*` can be read against it (as `bench tick` reads
its tick against the FLOP floor): a spawned server process holds N `Converse` streams (the real
service and message types; each message a tick's AudioOut of 200 ms at 24 kHz) on uvloop, as a
replica's are, and every 200 ms puts one message into every stream at once; client processes
(split as the load's clients are) stamp each arrival. The floor is put -> arrival, after
`SETTLE_TICKS`. Nothing else runs meanwhile, so a load run's overhead cannot go below it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

import grpc

from cluster import event_loop
from cluster.bench.load_processes import end_processes
from cluster.bench.load_tally import rounded_percentile
from protos.microturn.v1 import interaction_pb2 as pb
from protos.microturn.v1 import interaction_pb2_grpc as pb_grpc

TICK_S = 0.2
AUDIO_BYTES = 9600  # one tick of the model's voice: 200 ms of 24 kHz PCM16
SETTLE_TICKS = 3  # not measured: connections and first-use costs
STREAMS_TIMEOUT_S = 60.0  # every client process spawned and connected


@dataclass(frozen=True)
class TransportFloor:
    client_processes: int
    samples_ms: list[float]

    def report(self) -> dict:
        return {"transport_floor_ms_p50": rounded_percentile(self.samples_ms, 50, 3),
                "transport_floor_ms_p99": rounded_percentile(self.samples_ms, 99, 3),
                "transport_floor_messages": len(self.samples_ms)}


def measure_transport_floor(streams: int, client_processes: int, ticks: int = 20) -> TransportFloor:
    """N streams from `client_processes` spawned processes (0 counts as 1), `ticks` ticks; every
    process it starts is ended before it returns."""
    context = multiprocessing.get_context("spawn")
    processes = max(1, min(client_processes, streams))
    server_end, server_conn = context.Pipe()
    server = context.Process(target=_serve, args=(server_conn, streams, ticks), name="microturn-transport-floor-server",
                             daemon=True)
    clients: list[tuple[multiprocessing.Process, Connection]] = []
    try:
        server.start()
        server_conn.close()
        try:
            port = server_end.recv()
        except EOFError:
            raise RuntimeError(f"the transport floor's server process ended (exit code {server.exitcode}) "
                               "before it served") from None
        for k in range(processes):
            mine, theirs = context.Pipe()
            share = streams // processes + (k < streams % processes)
            client = context.Process(target=_read, args=(theirs, port, share), name=f"microturn-transport-floor-client-{k}",
                                     daemon=True)
            client.start()
            theirs.close()
            clients.append((client, mine))
        samples: list[float] = []
        for k, (_, conn) in enumerate(clients):
            try:
                samples.extend(conn.recv())
            except EOFError:
                raise RuntimeError(f"transport floor client process {k} ended without its samples") from None
        return TransportFloor(processes, samples)
    finally:
        end_processes([server] + [client for client, _ in clients])


class _TickPusher(pb_grpc.InteractionServicer):
    """Every stream gets a queue; `push` puts one message into each, as a replica's delivery does."""

    def __init__(self) -> None:
        self.queues: list[asyncio.Queue] = []
        self.audio = bytes(AUDIO_BYTES)

    async def Converse(self, request_iterator, context):
        queue: asyncio.Queue = asyncio.Queue()
        self.queues.append(queue)
        while (message := await queue.get()) is not None:
            yield message

    def push(self, tick: int) -> None:
        put_ns = time.time_ns()
        for seq, queue in enumerate(self.queues):
            timing = pb.TickTiming(input_seq=tick, tick_ended_unix_ns=put_ns)
            queue.put_nowait(pb.ServerMessage(seq=seq, tick=tick, audio=pb.AudioOut(
                audio_seq=tick, pcm16=self.audio, speech=True, timing=timing)))

    def end(self) -> None:
        for queue in self.queues:
            queue.put_nowait(None)


def _serve(conn: Connection, streams: int, ticks: int) -> None:
    async def main() -> None:
        server, pusher = grpc.aio.server(), _TickPusher()
        pb_grpc.add_InteractionServicer_to_server(pusher, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        conn.send(port)
        deadline = time.monotonic() + STREAMS_TIMEOUT_S
        while len(pusher.queues) < streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for tick in range(1, ticks + 1):
            await asyncio.sleep(TICK_S)
            pusher.push(tick)
        pusher.end()
        await server.stop(grace=2.0)

    event_loop.run(main())


def _read(conn: Connection, port: int, streams: int) -> None:
    """One client process: `streams` streams, each message's put -> arrival in ms (after the
    settling ticks), sent back when the server ends the streams."""
    samples: list[float] = []

    async def nothing_to_send():  # the stream stays open for reading; the server ends it
        await asyncio.Event().wait()
        yield pb.ClientMessage()

    async def one(stub: pb_grpc.InteractionStub) -> None:
        async for message in stub.Converse(nothing_to_send()):
            arrived_ns = time.time_ns()
            if message.tick > SETTLE_TICKS:
                samples.append((arrived_ns - message.audio.timing.tick_ended_unix_ns) / 1e6)

    async def main() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.InteractionStub(channel)
            await asyncio.gather(*(one(stub) for _ in range(streams)), return_exceptions=True)

    try:
        event_loop.run(main())
    finally:
        conn.send(samples)
        conn.close()
