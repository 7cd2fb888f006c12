"""Redis faults: a replica and a background worker ride out a redis-server killed under live
sessions, and what Redis cannot take while it is gone is undone or reported, never dropped.

Real processes and real pieces: a private embedded redis-server (supervised, AOF), a
`SessionHost` with its `ResultFollower`, `RedisJobSink` and `SessionDirectory`, a `JobWorker`
with the real tools. No Ray: a replica's health check is `SessionHost.running`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from background.reasoners import DirectReasoner
from background.tools.registry import default_registry
from background.worker import JobWorker
from cluster.redis_server import free_port
from foreground.engine.tick_scheduler import TickScheduler
from foreground.engine.turn_policy import TurnPolicyConfig
from foreground.model.checkpoint import load_checkpoint, write_seeded_checkpoint
from foreground.model.family import ReferenceFamily
from foreground.serve.job_sink import RedisJobSink
from foreground.serve.live_session import LiveSession
from foreground.serve.result_follower import ResultFollower
from foreground.serve.session_directory import SessionDirectory
from foreground.serve.session_host import BusUnavailable, HostSettings, SessionHost
from protos.event_bus import EventBus, events_stream
from protos.job_stream import JobStream
from protos.microturn.v1 import events_pb2, interaction_pb2 as pb
from protos.redis_client import OutageBackoff, redis_from_url, retry_budget_s, retry_policy

TICK_S = 0.2


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_checkpoint(write_seeded_checkpoint(tmp_path_factory.mktemp("ck"), "tiny", seed=0))


def _dead_url() -> str:
    """A Redis URL nobody answers on: an outage that lasts."""
    return f"redis://127.0.0.1:{free_port()}/0"


class Client:
    """What a client of one session receives: its outbox drained into a list, as a stream would."""

    def __init__(self, session: LiveSession) -> None:
        self.session = session
        self.messages: list[pb.ServerMessage] = []
        outbox = session.attach()
        self._task = asyncio.create_task(self._drain(outbox))

    async def _drain(self, outbox: asyncio.Queue) -> None:
        while True:
            self.messages.append(await outbox.get())

    def of(self, kind: str) -> list:
        return [getattr(m, kind) for m in self.messages if m.WhichOneof("payload") == kind]

    def answer_to(self, job_id: str) -> pb.ServerMessage | None:
        """The job's result, or the error saying it will not come."""
        for m in self.messages:
            kind = m.WhichOneof("payload")
            if kind == "tool_result" and m.tool_result.job_id == job_id:
                return m
            if kind == "error" and job_id in m.error.message:
                return m
        return None

    async def wait_for(self, job_id: str, timeout_s: float) -> pb.ServerMessage:
        deadline = time.monotonic() + timeout_s
        while (answer := self.answer_to(job_id)) is None:
            assert time.monotonic() < deadline, f"job {job_id}: neither a result nor an error in {timeout_s} s"
            await asyncio.sleep(0.05)
        return answer

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class HealthWatch:
    """Samples the replica's health check (`SessionHost.running`) the way Serve would, often."""

    def __init__(self, host: SessionHost, every_s: float = 0.05) -> None:
        self.host, self.every_s = host, every_s
        self.samples: list[bool] = []
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            self.samples.append(self.host.running)
            await asyncio.sleep(self.every_s)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def _wait(predicate, timeout_s: float, what: str) -> float:
    began = time.monotonic()
    while not predicate():
        assert time.monotonic() - began < timeout_s, f"timed out after {timeout_s} s waiting for {what}"
        await asyncio.sleep(0.02)
    return time.monotonic() - began


# -- the retry builder and the loops' backoff ------------------------------------------------

def test_clients_retry_with_backoff_and_give_up_after_their_budget():
    policy = retry_policy()
    assert policy.get_retries() == 6 and 5.0 <= retry_budget_s() <= 10.0  # "a few seconds"
    client = redis_from_url("redis://127.0.0.1:1/0", decode_responses=True)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["retry"].get_retries() == 6 and kwargs["socket_timeout"] and kwargs["socket_connect_timeout"]
    assert kwargs["decode_responses"] is True

    async def main():
        dead = redis_from_url(_dead_url(), retries=2)
        began = time.monotonic()
        with pytest.raises(RedisConnectionError):
            await dead.ping()
        took = time.monotonic() - began
        await dead.aclose()
        await client.aclose()
        return took

    took = asyncio.run(main())
    assert retry_budget_s(2) - 0.05 <= took < retry_budget_s(2) + 1.5  # 0.2 + 0.4 s of pauses, then the error


def test_outage_backoff_doubles_caps_and_resets():
    backoff = OutageBackoff("a loop", first_s=0.5, cap_s=2.0)
    pauses = [backoff.failed(RuntimeError("down")) for _ in range(4)]
    assert pauses == [0.5, 1.0, 2.0, 2.0]
    backoff.succeeded()
    assert backoff.delay_s == 0.0 and backoff.failures == 0


@pytest.mark.timeout(30)
def test_a_command_sent_while_the_server_is_dead_waits_for_its_restart(private_redis):
    server = private_redis()

    async def main():
        client = redis_from_url(server.url, decode_responses=True)
        await client.set("kept", "yes")
        old_pid, began = server.pid, time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        value = await client.get("kept")  # the pooled connection is dead: reconnects, retries
        took = time.monotonic() - began
        await client.aclose()
        return old_pid, value, took

    old_pid, value, took = asyncio.run(main())
    assert value == "yes" and took < 3.0
    deadline = time.monotonic() + 2  # the supervisor counts the restart once its own ping is answered
    while server.restarts == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.pid != old_pid and server.restarts == 1


# -- what cannot reach Redis is undone or reported -------------------------------------------

def _host(model, directory: SessionDirectory | None, jobs=None, max_slots: int = 2) -> SessionHost:
    engine = TickScheduler(ReferenceFamily(model), max_slots=max_slots, turn=TurnPolicyConfig(), jobs=jobs)
    return SessionHost(engine, HostSettings(replica_id=f"r-{uuid.uuid4().hex[:6]}", address="127.0.0.1:1",
                                            idle_timeout_s=300), directory)


@pytest.mark.timeout(60)
def test_a_delegation_that_cannot_be_queued_reaches_its_client_as_an_error(model):
    async def main():
        sink = RedisJobSink(JobStream(redis_from_url(_dead_url(), retries=1)), asyncio.get_running_loop(),
                            attempts=2, pause_s=0.1)
        host = _host(model, None, jobs=sink)
        sink.on_lost = host.delegation_failed
        await host.start()
        session, _ = await host.open(pb.SessionOpen())
        client = Client(session)
        job_id = host.request_tool(session, "calculator", json.dumps({"expression": "6*7"}))
        answer = await client.wait_for(job_id, timeout_s=10)
        delegated = [t for t in client.of("turn") if t.kind == pb.TurnEvent.DELEGATED]
        running = host.running
        await client.close()
        await host.stop()
        await sink.jobs.close()
        return answer, delegated, sink, running

    answer, delegated, sink, running = asyncio.run(main())
    assert len(delegated) == 1  # the client saw DELEGATED ...
    assert answer.WhichOneof("payload") == "error"  # ... and then learns that no result will come
    assert answer.error.code == "UNAVAILABLE" and answer.error.field == "job"
    assert "calculator" in answer.error.message and "unreachable" in answer.error.message
    assert sink.lost == 1 and sink.submitted == 0 and running


@pytest.mark.timeout(60)
def test_an_open_that_cannot_be_recorded_gives_its_slot_back_and_the_replica_stays_healthy(model):
    async def main():
        directory = SessionDirectory(redis_from_url(_dead_url(), retries=1, decode_responses=True))
        host = _host(model, directory, max_slots=2)
        await host.start()
        errors = []
        for _ in range(3):  # more opens than slots: a leaked slot would show up as SessionsFull
            with pytest.raises(BusUnavailable) as failed:
                await host.open(pb.SessionOpen())
            errors.append(str(failed.value))
        await asyncio.sleep(1.5)  # the announcer fails meanwhile, and backs off
        state = dict(live=host.engine.live, sessions=dict(host.sessions), running=host.running,
                     loops_alive=all(not task.done() for task in host._tasks))
        await host.stop()
        await directory.close()
        return errors, state

    errors, state = asyncio.run(main())
    assert all("unreachable" in e and "retry" in e for e in errors)
    assert state == dict(live=0, sessions={}, running=True, loops_alive=True)


# -- the acceptance test: kill -9 the redis-server under live sessions -----------------------

class Replica:
    """A foreground replica's Redis-facing pieces around one host, and a background worker."""

    async def start(self, model, url: str) -> Replica:
        self.bus = EventBus.from_url(url)
        self.directory = SessionDirectory.from_url(url)
        self.sink = RedisJobSink(JobStream(self.bus.redis), asyncio.get_running_loop())
        self.host = _host(model, self.directory, jobs=self.sink, max_slots=4)
        self.sink.on_lost = self.host.delegation_failed
        await self.host.start(ResultFollower(self.bus, lambda: list(self.host.sessions), self.host.on_event))
        self.pool = redis_from_url(url)
        self.worker = JobWorker(JobStream(self.pool), EventBus(self.pool), DirectReasoner(), default_registry(),
                                "w-faults")
        self.worker_task = asyncio.create_task(self.worker.run_forever())
        self.health = HealthWatch(self.host)
        self.clients = [Client((await self.host.open(pb.SessionOpen()))[0]) for _ in range(2)]
        return self

    async def stop(self) -> None:
        await self.health.close()
        for client in self.clients:
            await client.close()
        await self.worker.stop(grace_s=2)
        await asyncio.gather(self.worker_task, return_exceptions=True)
        await self.host.stop()
        await self.pool.aclose()
        await self.directory.close()
        await self.bus.close()


async def _ride_out_a_kill(server, replica: Replica, observer: aioredis.Redis, down_s: float) -> dict:
    """Kill -9 the server under the replica's live sessions, keep it down `down_s`, let the
    supervisor restart it, and check that nothing was lost or left silent."""
    host, (a, b) = replica.host, replica.clients
    # Acknowledged just before the kill: a job on the queue and a result on the bus.
    queued = events_pb2.Job(session_id=b.session.session_id, job_id=uuid.uuid4().hex, created_unix_ms=1,
                            requested_tool=events_pb2.ToolRequest(tool="clock", arguments_json="{}"))
    await JobStream(replica.bus.redis).submit(queued)
    published = events_pb2.Event(session_id=b.session.session_id, event_id=uuid.uuid4().hex, job_id=uuid.uuid4().hex,
                                 created_unix_ms=1, tool_result=events_pb2.ToolResult(tool="clock", result_json="{}"))
    published.tool_result.job_id = published.job_id
    published_id, _ = await replica.bus.publish(published)

    restarts, old_pid, port = server.restarts, server.pid, server.port
    ticks_at_kill = {c.session.session_id: c.session.tick for c in (a, b)}
    server.restart_delay_s = down_s
    killed_wall, killed = time.time(), time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    # While it is down: a delegation and an open.
    during_job = host.request_tool(a.session, "calculator", '{"expression": "6*7"}')
    opening = asyncio.create_task(host.open(pb.SessionOpen()))
    try:
        restart_s = await _wait(lambda: server.restarts > restarts, down_s + 5, "the supervisor's restart")
        assert server.port == port and server.pid != old_pid
        assert restart_s < down_s + 2.5, f"restarted {restart_s - down_s:.2f} s after its {down_s:.1f} s down"

        # Nothing acknowledged is lost: the result is still in the stream and reaches its
        # session; the job queued before the kill is worked.
        entries = await observer.xrange(events_stream(b.session.session_id))
        assert published_id in [entry_id.decode() for entry_id, _ in entries], "an acknowledged result was lost"
        await b.wait_for(published.job_id, 20)
        worked = await b.wait_for(queued.job_id, 30)
        assert worked.WhichOneof("payload") == "tool_result" and worked.tool_result.tool == "clock"

        # The delegation made while Redis was down: published after the restart, or reported.
        during = await a.wait_for(during_job, 40)
        if during.WhichOneof("payload") == "error":
            assert during.error.code == "UNAVAILABLE"
        else:
            assert "42" in during.tool_result.result_json and not during.tool_result.error

        # The open made while Redis was down: it went through, or it failed and gave its slot back.
        opened = None
        try:
            opened, _ = await asyncio.wait_for(opening, 20)
            assert (await replica.directory.lookup(opened.session_id)) is not None
        except BusUnavailable:
            assert set(host.sessions) == {a.session.session_id, b.session.session_id}
        assert host.engine.live == len(host.sessions)

        # The worker takes new jobs, and the replica announces itself again.
        after = await b.wait_for(host.request_tool(b.session, "clock", "{}"), 30)
        assert after.WhichOneof("payload") == "tool_result"
        replica_key = f"mt:replica:{host.settings.replica_id}"
        await _wait_async(lambda: _announced_since(observer, replica_key, killed_wall), 15, "a new announcement")

        # Sessions ticked through it all, and the health check never failed.
        window_s = time.monotonic() - killed
        for c in (a, b):
            assert c.session.session_id in host.sessions and not c.session.closed
            ticked = c.session.tick - ticks_at_kill[c.session.session_id]
            assert ticked >= window_s / TICK_S / 2, f"{ticked} ticks in {window_s:.1f} s"  # a busy box skips some
            assert not c.of("closed") and not c.of("go_away")
        assert all(replica.health.samples), "the health check failed: Serve would have replaced the replica"
        assert not replica.worker_task.done(), "the background worker stopped"
        if opened is not None:
            await host.close(opened, "done")
        return dict(restart_s=round(restart_s, 2), window_s=round(window_s, 1),
                    during=during.WhichOneof("payload"), opened=opened is not None)
    finally:
        opening.cancel()
        await asyncio.gather(opening, return_exceptions=True)


async def _announced_since(observer: aioredis.Redis, key: str, since: float) -> bool:
    raw = await observer.get(key)
    return raw is not None and json.loads(raw)["at"] > since


async def _wait_async(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        await asyncio.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_killed_redis_server_is_restarted_and_sessions_results_and_jobs_survive(model, private_redis):
    """Twice: restarted at once (what the supervisor does), then held down past the clients'
    own retries (~7 s), so that the replica's and the worker's loops see the errors too."""
    server = private_redis()

    async def main():
        replica = await Replica().start(model, server.url)
        observer = redis_from_url(server.url)  # the test's own look at Redis (it too must retry)
        try:
            a, _ = replica.clients
            first = await a.wait_for(replica.host.request_tool(a.session, "calculator", '{"expression": "2+2"}'), 15)
            assert first.WhichOneof("payload") == "tool_result" and "4" in first.tool_result.result_json
            quick = await _ride_out_a_kill(server, replica, observer, down_s=0.0)
            long = await _ride_out_a_kill(server, replica, observer, down_s=retry_budget_s() + 2.0)
            return quick, long, replica.host.ticker.stats.overruns, len(replica.health.samples)
        finally:
            await observer.aclose()
            await replica.stop()

    quick, long, overruns, samples = asyncio.run(main())
    print(f"quick restart: {quick}; long outage: {long}; tick overruns {overruns}; health samples {samples}")
    assert long["restart_s"] >= retry_budget_s()
