"""Serving the foreground: sessions held by a replica, streamed over gRPC.

- `session_directory`: where each session lives (Redis), read by gateways.
- `live_session`: one session's server side: seq numbers, outbox, replay buffer for resume.
- `session_journal`: what each session needs to continue on another replica, journalled in Redis.
- `session_host`: the replica's sessions around one tick engine and its wall-clock loop.
- `interaction_service`: `microturn.v1.Interaction` on the replica's own port.
- `metrics`: the replica's Prometheus metrics (ray.util.metrics), fed once per tick.
- `replica`: the Ray Serve deployment that owns all of the above.
"""
