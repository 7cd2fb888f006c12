"""Short garbage-collector pauses in long-running server processes.

A microturn server process imports torch, Ray and gRPC: ~290,000 objects that live as long as it
does. Python's oldest-generation collection walks all of them while holding the GIL (168 ms in
the gateway's process on the 2-core dev machine), so a tick, or every chunk a gateway relays,
waits that long whenever one runs. `gc.freeze()` once start-up is over moves them to a permanent
generation the collector no longer walks; whatever the server allocates afterwards is collected
as before (CPython's documented use of `gc.freeze`, for servers).

Foreground, background and the gateway all call this, so it lives beside the other pieces they
share.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_startup_objects(process: str) -> int:
    """Collect once, then freeze everything alive; returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("%s: %d start-up objects moved out of the collector's walks (gc.freeze)", process, frozen)
    return frozen


def thaw_startup_objects() -> None:
    """Back to the collector's walks: for a process that goes on after its server stopped (a
    test session, a bench), whose start-up objects may become garbage."""
    gc.unfreeze()
