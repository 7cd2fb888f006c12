"""The event loop microturn's own processes run on: uvloop, or asyncio's own.

The gateway's process carries every relayed stream and every Realtime bridge in one event loop,
and right after each tick all their messages arrive at once, so the loop's cost per message is
what the last of them waits for. uvloop (the loop Ray Serve's replicas already run on) takes a
message through that loop in less time than asyncio's own; the code on it is the same asyncio.
`MICROTURN_EVENT_LOOP=asyncio` runs asyncio's loop instead (to compare, or to rule the loop out).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the configured loop (`MICROTURN_EVENT_LOOP`, default uvloop)."""
    name = os.environ.get("MICROTURN_EVENT_LOOP", "uvloop")
    if name not in LOOPS:
        main.close()
        raise ValueError(f"MICROTURN_EVENT_LOOP must be one of {', '.join(LOOPS)} (got {name!r})")
    with asyncio.Runner(loop_factory=LOOPS[name]) as runner:
        return runner.run(main)
