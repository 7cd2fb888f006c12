"""A foreground replica for a gateway in the test's own process, without Ray: the gateway's
routed open goes straight to the replica object, as Serve's handle would take it there."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace

import ray

from cluster.config import LimitsConfig
from cluster.gateway import Gateway
from foreground.deployment import ForegroundReplica, ReplicaSettings
from protos.api_keys import ApiKeys


class InProcessReplica(ForegroundReplica):
    """A replica whose drain the test awaits itself (`stop`): Serve calls the async `__del__`,
    the garbage collector must not."""

    stop = ForegroundReplica.__del__

    def __del__(self) -> None:
        pass

    @classmethod
    async def start(cls, settings: ReplicaSettings) -> InProcessReplica:
        replica = cls.__new__(cls)  # Serve awaits this async __init__
        await replica.__init__(settings)
        return replica


class Routed:
    """What the gateway calls on the foreground app's handle, without Serve: this replica."""

    def __init__(self, replica: ForegroundReplica) -> None:
        self.open_session = SimpleNamespace(remote=replica.open_session)


def replica_and_gateway(redis_url: str, key_hashes: tuple[str, ...], max_sessions: int,
                        limits: LimitsConfig | None = None) -> Iterator[SimpleNamespace]:
    """For a module fixture (`yield from`): a replica and a gateway in front of it on their own
    event loop; yields `loop`, `replica` and `gateway` (addresses), and stops both after."""
    loop = asyncio.new_event_loop()
    extra = {"limits": limits.model_dump()} if limits else {}

    async def start():
        settings = ReplicaSettings(max_sessions=max_sessions, redis_url=redis_url, threads=1,
                                   gateway_node_ip=ray.util.get_node_ip_address(),  # as `microturn up` says
                                   api_key_hashes=key_hashes, **extra)
        replica = await InProcessReplica.start(settings)
        gateway = Gateway("127.0.0.1", 0, Routed(replica), redis_url, ApiKeys(list(key_hashes)), limits=limits)
        await gateway.start()
        return replica, gateway

    replica, gateway = loop.run_until_complete(start())
    yield SimpleNamespace(loop=loop, replica=replica.address, gateway=gateway.address)
    loop.run_until_complete(gateway.stop(0))
    loop.run_until_complete(replica.stop())
    loop.close()
