"""`cluster.event_loop.run`: uvloop by default, asyncio's loop on request, a clear error otherwise."""

import asyncio

import pytest
import uvloop

from cluster import event_loop


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_uvloop_by_default_and_asyncio_on_request(monkeypatch):
    monkeypatch.delenv("MICROTURN_EVENT_LOOP", raising=False)
    assert event_loop.run(_loop_type()) is uvloop.Loop
    monkeypatch.setenv("MICROTURN_EVENT_LOOP", "asyncio")
    assert not issubclass(event_loop.run(_loop_type()), uvloop.Loop)


def test_an_unknown_loop_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv("MICROTURN_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="MICROTURN_EVENT_LOOP"):
        event_loop.run(_loop_type())
