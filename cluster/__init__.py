"""What ties microturn together: config, CLI, Redis and Ray bootstrap, the Serve app builder,
the gateway, and (in later chapters) the event bus, the client SDK, metrics and benchmarks.

`cluster` may import `foreground` and `background` to build the app; they never import it
back, nor each other.
"""
