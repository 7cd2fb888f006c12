"""The OpenAI Realtime protocol on the gateway: `/v1/realtime` over WebSocket, and the console.

- `protocol`: client events as typed models, server events, errors that name the field;
- `session_config`: Realtime session settings and how they map onto a microturn session;
- `audio`: G.711, 8 <-> 24 kHz, the input buffer cut into tick-sized chunks;
- `responses`: one model response as Realtime events;
- `bridge`: one WebSocket connection <-> one `Interaction.Converse` stream;
- `server`: the aiohttp app (auth before the upgrade, the console's static files).
"""
