"""A Realtime session's settings, and how they map onto a microturn session.

| Realtime (`session.update`)            | microturn                                                    |
|----------------------------------------|--------------------------------------------------------------|
| `audio.input.turn_detection` `server_vad`   | turn policy `vad` (Silero VAD + silence threshold)      |
| `audio.input.turn_detection` `semantic_vad` | turn policy `model` (the trained end-of-turn detector)  |
| `audio.input.turn_detection` null / unset   | the server's default (`foreground.turn_policy`, `auto`) |
| `turn_detection.silence_duration_ms` (`server_vad`) | the session's `end_silence_ms`: the VAD's silence threshold |
| `turn_detection.eagerness` (`semantic_vad`) | `end_silence_ms`: high 0, medium 400, low 600; auto: the server's |
| `audio.input.format` pcm 24 kHz / pcmu / pcma | 24 kHz PCM16 chunks (G.711 decoded, 8 -> 24 kHz)      |
| `audio.output.format`                  | the model's 24 kHz PCM16 as is, or downsampled and G.711-encoded |
| `instructions`, `audio.output.voice`   | `SessionOpen.instructions`, `.voice`                         |
| `tools` (type `function`)              | kept by the bridge: calls of these names go to the client    |
| `output_modalities` `["text"]`         | transcript as `response.output_text.*`, no audio deltas       |

The turn policy, instructions and voice are fixed when the microturn session opens (the bridge
opens it at the client's first event, or a second after connecting): changing them later is
refused with an `error` naming the field; formats, tools and modalities can change any time.
Full duplex stays on whatever the client asks: the model may start a response by itself and a
barge-in ends the response in progress (`create_response`/`interrupt_response` are not applied).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cluster.realtime.protocol import FunctionTool, ProtocolError, SessionConfig

POLICIES = {"server_vad": "vad", "semantic_vad": "model"}
# How long a `semantic_vad` session waits in silence before the turn end the detector hears:
# measured on `bench duplex` (clean): 0 answers statements at p50 0.23 s with model speech starting
# between the user's sentences in 69% of turns; 400: 0.41 s, 38%; 600: 0.62 s, 9%.
EAGERNESS_END_SILENCE_MS = {"high": 0, "medium": 400, "low": 600}
MICROTURN_TOOLS = ("web_search", "fetch_url", "calculator", "clock", "ui.render")
TOOL_ALIASES = {"ui_render": "ui.render"}  # function names may not hold a dot in every SDK


def microturn_tool(name: str) -> str | None:
    """The microturn background tool `name` stands for, if any."""
    name = TOOL_ALIASES.get(name, name)
    return name if name in MICROTURN_TOOLS else None


@dataclass
class RealtimeSession:
    id: str
    model: str = "microturn"
    instructions: str = ""
    voice: str = ""
    input_format: str = "audio/pcm"
    output_format: str = "audio/pcm"
    turn_detection: dict[str, Any] | None = None
    modality: str = "audio"
    tools: dict[str, FunctionTool] = field(default_factory=dict)
    tool_choice: Any = "auto"

    @property
    def turn_policy(self) -> str | None:
        """microturn's policy name, or None for the server's default."""
        return _policy_of(self.turn_detection)

    @property
    def end_silence_ms(self) -> int | None:
        """The session's wait in silence before answering, or None for the server's."""
        return _end_silence_of(self.turn_detection)

    def apply(self, update: SessionConfig, opened: bool) -> None:
        """Take a `session.update`; raises `ProtocolError` (nothing applied) for a field that
        can no longer change."""
        audio = update.audio
        given_input = audio.input if audio and audio.input else None
        turn = self.turn_detection
        if given_input is not None and "turn_detection" in given_input.model_fields_set:
            turn = given_input.turn_detection.model_dump(exclude_unset=True) if given_input.turn_detection else None
        voice = audio.output.voice if audio and audio.output and audio.output.voice is not None else self.voice
        instructions = update.instructions if update.instructions is not None else self.instructions
        if opened:
            fixed = [("session.audio.input.turn_detection", (_policy_of(turn), _end_silence_of(turn)),
                      (self.turn_policy, self.end_silence_ms)),
                     ("session.instructions", instructions, self.instructions),
                     ("session.audio.output.voice", voice, self.voice)]
            for param, new, old in fixed:
                if new != old:
                    raise ProtocolError(f"{param}: fixed when the microturn session opened (at the first "
                                        "client event); set it in the first session.update",
                                        param, "session_already_started")
        for tool in update.tools or ():
            if tool.name in MICROTURN_TOOLS or tool.name in TOOL_ALIASES:
                raise ProtocolError(f"session.tools: {tool.name!r} is a microturn tool; ask for it with a "
                                    "conversation.item.create of a function_call item instead", "session.tools")
        self.turn_detection, self.voice, self.instructions = turn, voice, instructions
        if given_input is not None and given_input.format is not None:
            self.input_format = given_input.format.type
        if audio and audio.output and audio.output.format is not None:
            self.output_format = audio.output.format.type
        if update.output_modalities:
            self.modality = update.output_modalities[0]
        if update.tools is not None:
            self.tools = {tool.name: tool for tool in update.tools}
        if update.tool_choice is not None:
            self.tool_choice = update.tool_choice

    def describe(self) -> dict[str, Any]:
        """The `session` object of `session.created` / `session.updated`."""
        def audio_format(kind: str) -> dict[str, Any]:
            return {"type": kind, "rate": 24_000} if kind == "audio/pcm" else {"type": kind}

        return {
            "type": "realtime", "object": "realtime.session", "id": self.id, "model": self.model,
            "output_modalities": [self.modality], "instructions": self.instructions,
            "audio": {
                "input": {"format": audio_format(self.input_format), "transcription": None,
                          "noise_reduction": None, "turn_detection": self.turn_detection},
                "output": {"format": audio_format(self.output_format), "voice": self.voice or None, "speed": 1.0},
            },
            "tools": [tool.model_dump() for tool in self.tools.values()],
            "tool_choice": self.tool_choice, "max_output_tokens": "inf", "tracing": None, "prompt": None,
            "expires_at": 0, "include": None,
        }


def _policy_of(turn: dict[str, Any] | None) -> str | None:
    return POLICIES[turn["type"]] if turn else None


def _end_silence_of(turn: dict[str, Any] | None) -> int | None:
    if not turn:
        return None
    if turn["type"] == "server_vad":
        return turn.get("silence_duration_ms")
    return EAGERNESS_END_SILENCE_MS.get(turn.get("eagerness") or "auto")
