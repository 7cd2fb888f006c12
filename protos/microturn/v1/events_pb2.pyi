from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConversationTurn(_message.Message):
    __slots__ = ("role", "text", "tick")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TICK_FIELD_NUMBER: _ClassVar[int]
    role: str
    text: str
    tick: int
    def __init__(self, role: _Optional[str] = ..., text: _Optional[str] = ..., tick: _Optional[int] = ...) -> None: ...

class ToolRequest(_message.Message):
    __slots__ = ("tool", "arguments_json")
    TOOL_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    tool: str
    arguments_json: str
    def __init__(self, tool: _Optional[str] = ..., arguments_json: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("session_id", "job_id", "epoch", "conversation", "requested_tool", "urgent", "created_unix_ms")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_TOOL_FIELD_NUMBER: _ClassVar[int]
    URGENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    job_id: str
    epoch: int
    conversation: _containers.RepeatedCompositeFieldContainer[ConversationTurn]
    requested_tool: ToolRequest
    urgent: bool
    created_unix_ms: int
    def __init__(self, session_id: _Optional[str] = ..., job_id: _Optional[str] = ..., epoch: _Optional[int] = ..., conversation: _Optional[_Iterable[_Union[ConversationTurn, _Mapping]]] = ..., requested_tool: _Optional[_Union[ToolRequest, _Mapping]] = ..., urgent: _Optional[bool] = ..., created_unix_ms: _Optional[int] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("job_id", "call_id", "tool", "arguments_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    call_id: str
    tool: str
    arguments_json: str
    def __init__(self, job_id: _Optional[str] = ..., call_id: _Optional[str] = ..., tool: _Optional[str] = ..., arguments_json: _Optional[str] = ...) -> None: ...

class ToolResult(_message.Message):
    __slots__ = ("job_id", "call_id", "tool", "result_json", "error", "duration_s")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    call_id: str
    tool: str
    result_json: str
    error: str
    duration_s: float
    def __init__(self, job_id: _Optional[str] = ..., call_id: _Optional[str] = ..., tool: _Optional[str] = ..., result_json: _Optional[str] = ..., error: _Optional[str] = ..., duration_s: _Optional[float] = ...) -> None: ...

class UiComponent(_message.Message):
    __slots__ = ("job_id", "component", "props_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    PROPS_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    component: str
    props_json: str
    def __init__(self, job_id: _Optional[str] = ..., component: _Optional[str] = ..., props_json: _Optional[str] = ...) -> None: ...

class Transcript(_message.Message):
    __slots__ = ("role", "text", "final")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    role: str
    text: str
    final: bool
    def __init__(self, role: _Optional[str] = ..., text: _Optional[str] = ..., final: _Optional[bool] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "field")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    field: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., field: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("session_id", "event_id", "job_id", "epoch", "created_unix_ms", "urgent", "tool_call", "tool_result", "ui", "transcript", "error", "summary")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    URGENT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    TOOL_RESULT_FIELD_NUMBER: _ClassVar[int]
    UI_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    event_id: str
    job_id: str
    epoch: int
    created_unix_ms: int
    urgent: bool
    tool_call: ToolCall
    tool_result: ToolResult
    ui: UiComponent
    transcript: Transcript
    error: Error
    summary: str
    def __init__(self, session_id: _Optional[str] = ..., event_id: _Optional[str] = ..., job_id: _Optional[str] = ..., epoch: _Optional[int] = ..., created_unix_ms: _Optional[int] = ..., urgent: _Optional[bool] = ..., tool_call: _Optional[_Union[ToolCall, _Mapping]] = ..., tool_result: _Optional[_Union[ToolResult, _Mapping]] = ..., ui: _Optional[_Union[UiComponent, _Mapping]] = ..., transcript: _Optional[_Union[Transcript, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., summary: _Optional[str] = ...) -> None: ...
