"""Serving the foreground: sessions held by a replica, streamed over gRPC.

- `session_directory`: where each session lives (Redis), read by gateways.
- `live_session`: one session's server side: seq numbers, outbox, replay buffer for resume.
- `session_journal`: what each session needs to continue on another replica, journalled in Redis.
- `session_host`: the replica's sessions around one tick engine and its wall-clock loop.
- `open_errors`: why opening a session fails (the exceptions the session port maps to statuses).
- `session_restore`: taking over a session whose replica was lost, from its journal.
- `replica_loops`: the loops beside the tick loop: sweeper, journal writer, heartbeat.
- `tick_delivery`: each tick's outputs as the server messages a session's client gets.
- `interaction_service`: `microturn.v1.Interaction` on the replica's own port.
- `metrics`: the replica's Prometheus metrics (ray.util.metrics), fed once per tick.
- `replica`: the Ray Serve deployment that owns all of the above.
"""
