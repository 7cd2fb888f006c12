"""How fast one API key may open sessions: a token bucket per key, at each entry point.

A session holds its slot until it closes or idles out (`foreground.idle_timeout_s`), so a client
that opens and abandons a few sessions a second keeps a replica full. Each gateway and each
replica's session port therefore lets one API key open `limits.opens_burst` new sessions at
once, then `limits.opens_per_key_per_second`; an open past that fails with RESOURCE_EXHAUSTED
naming the limit, and a `retry-after-ms` trailer. Resumes and reopens (an open that names its
session_id) are not counted: they need the session's token, and a replica's failover reopens
all of its sessions at once. The buckets live in each process (no Redis round trip per open),
so N gateways admit up to N times the rate; keys are held only as SHA-256 digests.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable

import grpc

from protos.api_keys import presented_key

MAX_KEYS = 10_000  # past this many buckets, those that have refilled are forgotten


class OpenRate:
    """`per_second` opens a second per key, after a burst of `burst`."""

    def __init__(self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second, self.burst, self.clock = per_second, burst, clock
        self._buckets: dict[bytes, tuple[float, float]] = {}  # key digest -> (tokens, when counted)

    def take(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> float:
        """Count one open for the call's key (no key: one shared bucket): 0.0 when it may go on,
        else the seconds until it could."""
        digest = hashlib.sha256((presented_key(metadata) or "").encode()).digest()
        now = self.clock()
        tokens = self._tokens(digest, now)
        if tokens < 1.0:
            return (1.0 - tokens) / self.per_second
        self._buckets[digest] = (tokens - 1.0, now)
        if len(self._buckets) > MAX_KEYS:
            self._buckets = {d: b for d, b in self._buckets.items() if self._tokens(d, now) < self.burst}
        return 0.0

    async def admit(self, context: grpc.aio.ServicerContext) -> None:
        """Let a call that opens a new session go on, or end it with RESOURCE_EXHAUSTED."""
        wait_s = self.take(context.invocation_metadata())
        if not wait_s:
            return
        retry_ms = math.ceil(wait_s * 1000)
        context.set_trailing_metadata((("retry-after-ms", str(retry_ms)),))
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, (
            f"open: this API key opened more than {self.per_second:g} new sessions a second after a burst of "
            f"{self.burst} (limit `limits.opens_per_key_per_second`, burst `limits.opens_burst`); "
            f"retry in {retry_ms} ms"))

    def _tokens(self, digest: bytes, now: float) -> float:
        tokens, at = self._buckets.get(digest, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.per_second)
