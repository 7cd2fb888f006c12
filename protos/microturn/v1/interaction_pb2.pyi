from protos.microturn.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TurnPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TURN_POLICY_UNSPECIFIED: _ClassVar[TurnPolicy]
    TURN_POLICY_MODEL: _ClassVar[TurnPolicy]
    TURN_POLICY_VAD: _ClassVar[TurnPolicy]
    TURN_POLICY_HYBRID: _ClassVar[TurnPolicy]
TURN_POLICY_UNSPECIFIED: TurnPolicy
TURN_POLICY_MODEL: TurnPolicy
TURN_POLICY_VAD: TurnPolicy
TURN_POLICY_HYBRID: TurnPolicy

class SessionOpen(_message.Message):
    __slots__ = ("instructions", "voice", "tools", "turn_policy", "input_sample_rate", "session_id", "token", "resume_after_seq", "end_silence_ms")
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    TURN_POLICY_FIELD_NUMBER: _ClassVar[int]
    INPUT_SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESUME_AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    END_SILENCE_MS_FIELD_NUMBER: _ClassVar[int]
    instructions: str
    voice: str
    tools: _containers.RepeatedScalarFieldContainer[str]
    turn_policy: TurnPolicy
    input_sample_rate: int
    session_id: str
    token: str
    resume_after_seq: int
    end_silence_ms: int
    def __init__(self, instructions: _Optional[str] = ..., voice: _Optional[str] = ..., tools: _Optional[_Iterable[str]] = ..., turn_policy: _Optional[_Union[TurnPolicy, str]] = ..., input_sample_rate: _Optional[int] = ..., session_id: _Optional[str] = ..., token: _Optional[str] = ..., resume_after_seq: _Optional[int] = ..., end_silence_ms: _Optional[int] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("seq", "pcm16", "sample_rate")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PCM16_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    pcm16: bytes
    sample_rate: int
    def __init__(self, seq: _Optional[int] = ..., pcm16: _Optional[bytes] = ..., sample_rate: _Optional[int] = ...) -> None: ...

class RawImage(_message.Message):
    __slots__ = ("width", "height", "rgb")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    RGB_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    rgb: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., rgb: _Optional[bytes] = ...) -> None: ...

class VideoFrame(_message.Message):
    __slots__ = ("seq", "jpeg", "raw")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    JPEG_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    seq: int
    jpeg: bytes
    raw: RawImage
    def __init__(self, seq: _Optional[int] = ..., jpeg: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ...) -> None: ...

class TextInput(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class SessionClose(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ClientMessage(_message.Message):
    __slots__ = ("open", "audio", "video", "text", "tool_request", "close")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOOL_REQUEST_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    open: SessionOpen
    audio: AudioChunk
    video: VideoFrame
    text: TextInput
    tool_request: _events_pb2.ToolRequest
    close: SessionClose
    def __init__(self, open: _Optional[_Union[SessionOpen, _Mapping]] = ..., audio: _Optional[_Union[AudioChunk, _Mapping]] = ..., video: _Optional[_Union[VideoFrame, _Mapping]] = ..., text: _Optional[_Union[TextInput, _Mapping]] = ..., tool_request: _Optional[_Union[_events_pb2.ToolRequest, _Mapping]] = ..., close: _Optional[_Union[SessionClose, _Mapping]] = ...) -> None: ...

class SessionOpened(_message.Message):
    __slots__ = ("session_id", "token", "output_sample_rate", "tick_ms", "replica", "resumed", "last_seq", "next_tick_unix_ns")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    TICK_MS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    NEXT_TICK_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    token: str
    output_sample_rate: int
    tick_ms: int
    replica: str
    resumed: bool
    last_seq: int
    next_tick_unix_ns: int
    def __init__(self, session_id: _Optional[str] = ..., token: _Optional[str] = ..., output_sample_rate: _Optional[int] = ..., tick_ms: _Optional[int] = ..., replica: _Optional[str] = ..., resumed: _Optional[bool] = ..., last_seq: _Optional[int] = ..., next_tick_unix_ns: _Optional[int] = ...) -> None: ...

class TickTiming(_message.Message):
    __slots__ = ("input_seq", "input_received_unix_ns", "tick_started_unix_ns", "tick_ended_unix_ns")
    INPUT_SEQ_FIELD_NUMBER: _ClassVar[int]
    INPUT_RECEIVED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    TICK_STARTED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    TICK_ENDED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    input_seq: int
    input_received_unix_ns: int
    tick_started_unix_ns: int
    tick_ended_unix_ns: int
    def __init__(self, input_seq: _Optional[int] = ..., input_received_unix_ns: _Optional[int] = ..., tick_started_unix_ns: _Optional[int] = ..., tick_ended_unix_ns: _Optional[int] = ...) -> None: ...

class AudioOut(_message.Message):
    __slots__ = ("audio_seq", "pcm16", "speech", "timing")
    AUDIO_SEQ_FIELD_NUMBER: _ClassVar[int]
    PCM16_FIELD_NUMBER: _ClassVar[int]
    SPEECH_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    audio_seq: int
    pcm16: bytes
    speech: bool
    timing: TickTiming
    def __init__(self, audio_seq: _Optional[int] = ..., pcm16: _Optional[bytes] = ..., speech: _Optional[bool] = ..., timing: _Optional[_Union[TickTiming, _Mapping]] = ...) -> None: ...

class TextOut(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class TurnEvent(_message.Message):
    __slots__ = ("kind", "cause", "epoch")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[TurnEvent.Kind]
        USER_SPEECH_STARTED: _ClassVar[TurnEvent.Kind]
        USER_SPEECH_STOPPED: _ClassVar[TurnEvent.Kind]
        MODEL_SPEECH_STARTED: _ClassVar[TurnEvent.Kind]
        MODEL_SPEECH_STOPPED: _ClassVar[TurnEvent.Kind]
        INTERRUPTED: _ClassVar[TurnEvent.Kind]
        YIELDED: _ClassVar[TurnEvent.Kind]
        BACKCHANNEL: _ClassVar[TurnEvent.Kind]
        DELEGATED: _ClassVar[TurnEvent.Kind]
        BACKCHANNEL_HEARD: _ClassVar[TurnEvent.Kind]
    KIND_UNSPECIFIED: TurnEvent.Kind
    USER_SPEECH_STARTED: TurnEvent.Kind
    USER_SPEECH_STOPPED: TurnEvent.Kind
    MODEL_SPEECH_STARTED: TurnEvent.Kind
    MODEL_SPEECH_STOPPED: TurnEvent.Kind
    INTERRUPTED: TurnEvent.Kind
    YIELDED: TurnEvent.Kind
    BACKCHANNEL: TurnEvent.Kind
    DELEGATED: TurnEvent.Kind
    BACKCHANNEL_HEARD: TurnEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    kind: TurnEvent.Kind
    cause: str
    epoch: int
    def __init__(self, kind: _Optional[_Union[TurnEvent.Kind, str]] = ..., cause: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class GoAway(_message.Message):
    __slots__ = ("reason", "retry_after_ms")
    REASON_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    retry_after_ms: int
    def __init__(self, reason: _Optional[str] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class Woven(_message.Message):
    __slots__ = ("event_id", "job_id", "epoch", "published_unix_ns", "woven_unix_ns", "received_unix_ns")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    WOVEN_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    job_id: str
    epoch: int
    published_unix_ns: int
    woven_unix_ns: int
    received_unix_ns: int
    def __init__(self, event_id: _Optional[str] = ..., job_id: _Optional[str] = ..., epoch: _Optional[int] = ..., published_unix_ns: _Optional[int] = ..., woven_unix_ns: _Optional[int] = ..., received_unix_ns: _Optional[int] = ...) -> None: ...

class SessionClosed(_message.Message):
    __slots__ = ("reason", "ticks", "late_chunks")
    REASON_FIELD_NUMBER: _ClassVar[int]
    TICKS_FIELD_NUMBER: _ClassVar[int]
    LATE_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    ticks: int
    late_chunks: int
    def __init__(self, reason: _Optional[str] = ..., ticks: _Optional[int] = ..., late_chunks: _Optional[int] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("seq", "tick", "opened", "audio", "text", "turn", "transcript", "tool_call", "tool_result", "ui", "error", "go_away", "closed", "woven")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TICK_FIELD_NUMBER: _ClassVar[int]
    OPENED_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    TOOL_RESULT_FIELD_NUMBER: _ClassVar[int]
    UI_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    GO_AWAY_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    WOVEN_FIELD_NUMBER: _ClassVar[int]
    seq: int
    tick: int
    opened: SessionOpened
    audio: AudioOut
    text: TextOut
    turn: TurnEvent
    transcript: _events_pb2.Transcript
    tool_call: _events_pb2.ToolCall
    tool_result: _events_pb2.ToolResult
    ui: _events_pb2.UiComponent
    error: _events_pb2.Error
    go_away: GoAway
    closed: SessionClosed
    woven: Woven
    def __init__(self, seq: _Optional[int] = ..., tick: _Optional[int] = ..., opened: _Optional[_Union[SessionOpened, _Mapping]] = ..., audio: _Optional[_Union[AudioOut, _Mapping]] = ..., text: _Optional[_Union[TextOut, _Mapping]] = ..., turn: _Optional[_Union[TurnEvent, _Mapping]] = ..., transcript: _Optional[_Union[_events_pb2.Transcript, _Mapping]] = ..., tool_call: _Optional[_Union[_events_pb2.ToolCall, _Mapping]] = ..., tool_result: _Optional[_Union[_events_pb2.ToolResult, _Mapping]] = ..., ui: _Optional[_Union[_events_pb2.UiComponent, _Mapping]] = ..., error: _Optional[_Union[_events_pb2.Error, _Mapping]] = ..., go_away: _Optional[_Union[GoAway, _Mapping]] = ..., closed: _Optional[_Union[SessionClosed, _Mapping]] = ..., woven: _Optional[_Union[Woven, _Mapping]] = ...) -> None: ...
