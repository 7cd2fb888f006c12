"""The background pool: jobs from the foreground, reasoners and tools, results on the bus.

- `worker`: `JobWorker`, the consumer of `mt:jobs` (claim, plan, run tools, publish, ack;
  reclaim the jobs of dead workers; each result reaches a session once).
- `reasoners/`: `build_reasoner("direct" | "openai" | "vllm")`, what decides the tool calls.
- `tools/`: the tools and their registry (`default_registry`).
- `deployment`: `BackgroundPool`, the Serve deployment running a worker per replica.
- `autoscaling`: `QueueLagPolicy`, Serve scaling on the queue's backlog.
- `metrics`: the pool's Prometheus metrics (queue, jobs by tool, tool errors, reasoner latency).

`background` never imports `foreground` or `cluster`; they meet on the bus and in `protos/`.
"""
