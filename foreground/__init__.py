"""The foreground: the real-time interaction model and the 200 ms tick engine.

- `foreground.model`: the reference interaction model (issue 3).
- `foreground.engine`: session slots, the tick scheduler, turn policies (issue 3).
- `foreground.kernels`: batch-invariant operators (issue 4).
- `foreground.deployment`: the Ray Serve deployment that hosts a replica's sessions.

`foreground` never imports `background`: they meet on the event bus and in `protos`.
"""
