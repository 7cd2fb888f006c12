"""The OpenAI Realtime protocol on the gateway: `/v1/realtime` over WebSocket, and the console.

- `protocol`: client events as typed models, server events, errors that name the field;
- `session_config`: Realtime session settings and how they map onto a microturn session;
- `audio`: G.711, 8 <-> 24 kHz, the input buffer cut into tick-sized chunks;
- `responses`: one model response as Realtime events;
- `bridge`: one WebSocket connection <-> one `Interaction.Converse` stream, routing each event
  to the part that tells it: `session_link` (the session, audio pacing, timing),
  `response_lifecycle` (when responses begin and end), `turn_events` (speech and turns),
  `tool_items` (function calls and outputs); `outbox` sends to the client in order;
- `server`: the aiohttp app (auth before the upgrade, the console's static files).
"""
