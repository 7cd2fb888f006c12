"""A foreground replica for a gateway in the test's own process, without Ray: the gateway's
routed open goes straight to the replica object, as Serve's handle would take it there."""

from __future__ import annotations

from types import SimpleNamespace

from foreground.deployment import ForegroundReplica, ReplicaSettings


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
