"""The embedded Redis is a real server: AOF, streams, consumer groups, XAUTOCLAIM; it stops
clean; killed, it comes back on its port with its data and its password."""

import os
import signal
import time

import pytest
import redis

from cluster.config import RedisConfig
from cluster.redis_server import redacted_url, redis_for


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_embedded_server_has_aof_and_stream_features(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    assert client.config_get("appendonly")["appendonly"] == "yes"
    assert client.config_get("appendfsync")["appendfsync"] == "everysec"
    stream = "mt:test:features"
    client.xgroup_create(stream, "workers", id="0", mkstream=True)
    first = client.xadd(stream, {"job": "1"})
    claimed = client.xreadgroup("workers", "dead-worker", {stream: ">"}, count=1)
    assert claimed[0][1][0][0] == first
    # The dead worker never acks; another worker takes the job over.
    taken = client.xautoclaim(stream, "workers", "live-worker", min_idle_time=0)[1]  # 6.2: 2 fields
    assert [entry_id for entry_id, _ in taken] == [first]
    client.close()


def test_private_server_stops_by_pid_and_removes_its_folder(private_redis):
    server = private_redis()
    redis.Redis.from_url(server.url).set("k", "v")
    assert (server.data_dir / "appendonly.aof").exists()
    server.stop()
    assert not _alive(server.pid)
    assert not server.data_dir.exists()


@pytest.mark.timeout(30)
def test_a_killed_server_is_restarted_on_its_port_with_its_data(private_redis):
    server = private_redis()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.set("acknowledged", "before the kill")
    client.xadd("mt:test:stream", {"n": "1"})
    client.close()
    old_pid, port, data_dir = server.pid, server.port, server.data_dir
    # Redis writes a command to the AOF before it answers, unless an fsync still in flight makes
    # it postpone the write (up to 2 s; seen on a slow disk here, the xadd lost): the kill waits
    # until the OS has both, since what is tested is the restart and the reload.
    aof, began = data_dir / "appendonly.aof", time.monotonic()
    while b"mt:test:stream" not in aof.read_bytes():
        assert time.monotonic() - began < 5.0, "the AOF never got the xadd"
        time.sleep(0.02)
    os.kill(old_pid, signal.SIGKILL)
    began = time.monotonic()
    while server.restarts == 0:
        assert time.monotonic() - began < 2.0, "not restarted within 2 s"
        time.sleep(0.02)
    assert server.pid != old_pid and not _alive(old_pid) and server.port == port and server.data_dir == data_dir
    client = redis.Redis.from_url(server.url, decode_responses=True)  # the same URL
    assert client.get("acknowledged") == "before the kill" and client.xlen("mt:test:stream") == 1
    assert client.config_get("appendonly")["appendonly"] == "yes"
    client.close()
    assert data_dir.exists()  # only stop() removes it
    server.stop()
    assert not _alive(server.pid) and not data_dir.exists()


def test_configured_url_starts_nothing(redis_server):
    with redis_for(RedisConfig(url=redis_server.url)) as url:
        assert url == redis_server.url


def test_embedded_server_lives_for_the_block():
    with redis_for(RedisConfig()) as url:
        client = redis.Redis.from_url(url)
        assert client.ping()
        pid = client.info("server")["process_id"]
        client.close()
    assert not _alive(pid)


@pytest.mark.timeout(30)
def test_the_embedded_server_needs_its_password_which_survives_a_restart(private_redis):
    server = private_redis()
    assert server.url.startswith(f"redis://:{server.password}@127.0.0.1:{server.port}/")
    assert server.password not in " ".join(server.process.args)  # given on stdin: `ps` does not show it
    assert redacted_url(server.url) == f"redis://:***@127.0.0.1:{server.port}/0"  # what logs and `up` print
    assert redacted_url("redis://redis.microturn:6379/0") == "redis://redis.microturn:6379/0"

    def refused() -> bool:
        client = redis.Redis(port=server.port, socket_connect_timeout=1)
        try:
            client.ping()
        except redis.AuthenticationError:  # redis-py asks with HELLO; the server wants AUTH first
            return True
        except redis.ResponseError as e:
            return "NOAUTH" in str(e)
        finally:
            client.close()
        return False

    assert refused()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=server.port, password="not-the-password").ping()
    os.kill(server.pid, signal.SIGKILL)
    began = time.monotonic()
    while server.restarts == 0:
        assert time.monotonic() - began < 2.0, "not restarted within 2 s"
        time.sleep(0.02)
    assert refused() and redis.Redis.from_url(server.url).ping()  # the same password, the same URL
