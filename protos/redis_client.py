"""Every Redis client microturn makes, built one way, so that a short outage is ridden out.

A restarted redis-server (the embedded one is back within a second or two, see
`cluster/redis_server.py`; a Kubernetes pod takes longer) must not end a session, a worker
lane or a replica. So each command that meets a connection error or a timeout is retried by
redis-py itself, reconnecting, with exponential backoff: 6 retries after 0.2, 0.4, 0.8, 1.6,
2 and 2 s, about 7 s in all, before the caller sees the error. The loops that call Redis for
the replica's whole life then back off between rounds (`OutageBackoff`) rather than end.

Retrying is safe for what microturn sends: event publishes are idempotent on their event id,
acks, group creation and directory writes are too, and a job appended twice (its reply was
lost) is answered once, because its results carry ids derived from the job id.

Foreground, background and cluster all import this module; it has nothing else in it.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

log = logging.getLogger(__name__)

RETRIES = 6
BACKOFF_BASE_S = 0.1  # the n-th retry waits min(cap, base * 2**n): 0.2, 0.4, ... s
BACKOFF_CAP_S = 2.0
# Longer than any blocking read microturn makes (XREAD / XREADGROUP block 1 s at most).
SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0


def retry_policy(retries: int = RETRIES) -> Retry:
    """Retry a command on a lost connection or a timeout, reconnecting, with backoff."""
    return Retry(ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S), retries,
                 supported_errors=(ConnectionError, TimeoutError))


def retry_budget_s(retries: int = RETRIES) -> float:
    """How long a command keeps retrying against a dead server before it fails (the sum of
    the pauses; a refused connection fails at once, so that is nearly all of it)."""
    backoff = ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S)
    return sum(backoff.compute(n) for n in range(1, retries + 1))


def redis_from_url(url: str, *, retries: int = RETRIES, **kwargs) -> aioredis.Redis:
    """An asyncio client for `url` that retries through a short outage; `kwargs` go to
    `redis.asyncio.Redis.from_url` (e.g. `decode_responses=True`) and win over the defaults."""
    options = dict(retry=retry_policy(retries), retry_on_error=[ConnectionError, TimeoutError],
                   socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S,
                   socket_keepalive=True)
    options.update(kwargs)
    return aioredis.Redis.from_url(url, **options)


class OutageBackoff:
    """The pause of a loop that calls Redis after a failed round: doubling from `first_s` up
    to `cap_s`, and none again after a success.

    It also keeps the log readable: the first failure is logged with its traceback, later
    ones in one line each, and the recovery once, so an outage reads as a few lines per loop
    rather than one traceback per second.
    """

    def __init__(self, what: str, first_s: float = 0.5, cap_s: float = 5.0,
                 logger: logging.Logger | None = None) -> None:
        self.what, self.first_s, self.cap_s = what, first_s, cap_s
        self.log = logger or log
        self.failures = 0

    @property
    def delay_s(self) -> float:
        """The pause before the next round: 0 while things work."""
        if not self.failures:
            return 0.0
        return min(self.cap_s, self.first_s * 2 ** (self.failures - 1))

    def failed(self, error: BaseException) -> float:
        """Count a failed round and log it; returns the pause to take before the next one."""
        self.failures += 1
        if self.failures == 1:
            self.log.warning("%s failed; retrying with backoff", self.what, exc_info=error)
        else:
            self.log.warning("%s failed again (%d in a row, next try in %.1f s): %s: %s", self.what,
                             self.failures, self.delay_s, type(error).__name__, error)
        return self.delay_s

    def succeeded(self) -> None:
        """Count a round that worked: the backoff resets, and a recovery is logged."""
        if self.failures:
            self.log.info("%s works again after %d failed round(s)", self.what, self.failures)
        self.failures = 0
