"""What ties microturn together: config, CLI, Redis and Ray bootstrap, the Serve app builder,
the gateway, and (in later chapters) the event bus, the client SDK, metrics and benchmarks.
Authentication: `local_api_key` (the key `microturn up` keeps and clients find) and
`cluster_secrets` (what a cluster refuses to start without); the check itself is
`protos.api_keys`, shared with the replicas.

`cluster` may import `foreground` and `background` to build the app; they never import it
back, nor each other.
"""
