"""The embedded Redis is a real server: AOF, streams, consumer groups, XAUTOCLAIM; it stops clean."""

import os

import redis

from cluster.config import RedisConfig
from cluster.redis_server import redis_for


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_embedded_server_has_aof_and_stream_features(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    assert client.config_get("appendonly")["appendonly"] == "yes"
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
