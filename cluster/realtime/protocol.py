"""The OpenAI Realtime protocol (GA, no beta header): client events as typed models, and the
server events the bridge sends, built in one place.

A client event that cannot be taken (not JSON, an unknown `type`, a missing or wrong field)
becomes a `ProtocolError` naming the field as `param` (dotted, `item.content[0].text`), which
the bridge sends back as an `error` event carrying the client's `event_id`; the session goes on.
Unknown *fields* of a known event are ignored, as the SDKs add fields over time.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ProtocolError(ValueError):
    """A client event the bridge refuses; `param` names the field at fault."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value",
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.type = message, param, code, type_


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- session ----------------------------------------------------------------------------------

class AudioFormat(_Model):
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"] = "audio/pcm"
    rate: Literal[24000] | None = None


class TurnDetection(_Model):
    """`server_vad` -> microturn's `vad` policy, `semantic_vad` -> `model`; `silence_duration_ms`
    and `eagerness` set how long the session waits in silence before answering
    (`cluster.realtime.session_config`); the other fields (threshold, prefix_padding_ms,
    create_response, interrupt_response) are read but not applied: microturn's VAD has its own
    settings, and the session stays full duplex."""

    model_config = ConfigDict(extra="allow")
    type: Literal["server_vad", "semantic_vad"]
    silence_duration_ms: int | None = Field(None, ge=0, le=5000)
    eagerness: Literal["low", "medium", "high", "auto"] | None = None


class AudioInput(_Model):
    format: AudioFormat | None = None
    turn_detection: TurnDetection | None = None  # explicit null: the server's default policy


class AudioOutput(_Model):
    format: AudioFormat | None = None
    voice: str | None = None
    speed: float | None = None


class AudioConfig(_Model):
    input: AudioInput | None = None
    output: AudioOutput | None = None


class FunctionTool(_Model):
    type: Literal["function"] = "function"
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)


class SessionConfig(_Model):
    type: Literal["realtime"] | None = None
    model: str | None = None
    instructions: str | None = None
    output_modalities: list[Literal["audio", "text"]] | None = Field(None, min_length=1, max_length=1)
    audio: AudioConfig | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Any = None


# -- client events ------------------------------------------------------------------------------

class ClientEvent(_Model):
    type: str
    event_id: str | None = None


class SessionUpdate(ClientEvent):
    session: SessionConfig


class InputAudioBufferAppend(ClientEvent):
    audio: str


class InputAudioBufferCommit(ClientEvent):
    pass


class InputAudioBufferClear(ClientEvent):
    pass


class ContentPart(_Model):
    type: Literal["input_text", "input_audio", "input_image", "text", "output_text", "output_audio"]
    text: str | None = None
    audio: str | None = None
    image_url: str | None = None
    transcript: str | None = None


class MessageItem(_Model):
    type: Literal["message"]
    id: str | None = None
    role: Literal["user", "system", "assistant"]
    content: list[ContentPart]


class FunctionCallItem(_Model):
    type: Literal["function_call"]
    id: str | None = None
    call_id: str | None = None
    name: str
    arguments: str = "{}"


class FunctionCallOutputItem(_Model):
    type: Literal["function_call_output"]
    id: str | None = None
    call_id: str
    output: str


ITEM_TYPES: dict[str, type[_Model]] = {
    "message": MessageItem, "function_call": FunctionCallItem, "function_call_output": FunctionCallOutputItem,
}


class ConversationItemCreate(ClientEvent):
    previous_item_id: str | None = None
    item: dict[str, Any]  # checked by `parse_item`, so that errors name `item.<field>`


class ConversationItemTruncate(ClientEvent):
    """Acknowledged (`conversation.item.truncated`) so that clients that truncate on a barge-in
    run unchanged; what the model heard itself say is not rewritten."""

    item_id: str
    content_index: int = 0
    audio_end_ms: int = Field(ge=0)


class ResponseCreate(ClientEvent):
    response: dict[str, Any] | None = None


class ResponseCancel(ClientEvent):
    response_id: str | None = None


CLIENT_EVENTS: dict[str, type[ClientEvent]] = {
    "session.update": SessionUpdate,
    "input_audio_buffer.append": InputAudioBufferAppend,
    "input_audio_buffer.commit": InputAudioBufferCommit,
    "input_audio_buffer.clear": InputAudioBufferClear,
    "conversation.item.create": ConversationItemCreate,
    "conversation.item.truncate": ConversationItemTruncate,
    "response.create": ResponseCreate,
    "response.cancel": ResponseCancel,
}


def _param(loc: tuple, prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _refusal(error: ValidationError, prefix: str = "") -> ProtocolError:
    first = error.errors()[0]
    param = _param(first["loc"], prefix)
    code = "missing_required_parameter" if first["type"] == "missing" else "invalid_value"
    return ProtocolError(f"{param}: {first['msg']}", param, code)


def client_event_id(raw: str | bytes) -> str | None:
    """The `event_id` of a raw client event, when it has one (for errors about it)."""
    try:
        value = json.loads(raw)
    except (ValueError, TypeError):
        return None
    event_id = value.get("event_id") if isinstance(value, dict) else None
    return event_id if isinstance(event_id, str) else None


def parse_client_event(raw: str | bytes) -> ClientEvent:
    """One WebSocket text frame -> a typed client event, or `ProtocolError`."""
    try:
        value = json.loads(raw)
    except (ValueError, TypeError) as e:
        raise ProtocolError(f"not a JSON object: {e}", None, "invalid_json") from None
    if not isinstance(value, dict):
        raise ProtocolError("a client event is a JSON object", None, "invalid_json")
    kind = value.get("type")
    if not isinstance(kind, str) or not kind:
        raise ProtocolError("type: missing; every client event names its type", "type", "missing_required_parameter")
    model = CLIENT_EVENTS.get(kind)
    if model is None:
        raise ProtocolError(f"type: unknown client event {kind!r}; this server takes "
                            f"{', '.join(CLIENT_EVENTS)}", "type", "invalid_event_type")
    try:
        return model.model_validate(value)
    except ValidationError as e:
        raise _refusal(e) from None


def parse_item(item: dict[str, Any]) -> MessageItem | FunctionCallItem | FunctionCallOutputItem:
    kind = item.get("type")
    model = ITEM_TYPES.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ProtocolError(f"item.type: {kind!r} is not one of {', '.join(ITEM_TYPES)}", "item.type")
    try:
        return model.model_validate(item)
    except ValidationError as e:
        raise _refusal(e, "item") from None


# -- server events ------------------------------------------------------------------------------

def server_event(event_type: str, /, **fields: Any) -> dict[str, Any]:
    return {"type": event_type, "event_id": new_id("event"), **fields}


def error_event(error: ProtocolError, client_event_id: str | None) -> dict[str, Any]:
    return server_event("error", error={"type": error.type, "code": error.code, "message": error.message,
                                        "param": error.param, "event_id": client_event_id})


def assistant_item(item_id: str, status: str, modality: str, transcript: str | None) -> dict[str, Any]:
    content = [] if transcript is None else [
        {"type": "output_audio", "transcript": transcript} if modality == "audio" else
        {"type": "output_text", "text": transcript}]
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant",
            "status": status, "content": content}


def user_audio_item(item_id: str) -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "user", "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}]}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str,
                       status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "function_call", "status": status,
            "call_id": call_id, "name": name, "arguments": arguments}


def function_call_output_item(item_id: str, call_id: str, output: str) -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "function_call_output", "status": "completed",
            "call_id": call_id, "output": output}
