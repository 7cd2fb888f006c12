"""One model response as the Realtime protocol tells it: created, its items and content part,
audio and transcript deltas, done (completed, or cancelled by a barge-in or `response.cancel`).

microturn's model speaks in turns it takes by itself; a response is one such turn (from the
first tick it voices, or MODEL_SPEECH_STARTED, to YIELDED / INTERRUPTED / MODEL_SPEECH_STOPPED),
or a function call of the client's own tools. `Response` only builds the events;
`response_lifecycle` decides when.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cluster.realtime.protocol import assistant_item, function_call_item, new_id, server_event


@dataclass
class Response:
    modality: str = "audio"  # "audio": audio deltas + transcript; "text": text deltas only
    output_format: str = "audio/pcm"
    requested: bool = False  # by the client's response.create (else the model took the turn itself)
    id: str = field(default_factory=lambda: new_id("resp"))
    item_id: str = ""  # the assistant message, once the model speaks
    transcript: str = ""
    audio_bytes: int = 0
    output: list[dict[str, Any]] = field(default_factory=list)

    @property
    def speaking(self) -> bool:
        return bool(self.item_id)

    def _index(self) -> dict[str, Any]:
        return {"response_id": self.id, "item_id": self.item_id, "output_index": 0, "content_index": 0}

    def describe(self, status: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "realtime.response", "status": status, "status_details": details,
                "output": self.output, "output_modalities": [self.modality], "conversation_id": "conv_microturn",
                "max_output_tokens": "inf", "metadata": None, "usage": None,
                "audio": {"output": {"format": {"type": self.output_format}}}}

    def created(self) -> dict[str, Any]:
        return server_event("response.created", response=self.describe("in_progress"))

    def start_speaking(self, previous_item_id: str | None) -> list[dict[str, Any]]:
        self.item_id = new_id("item")
        item = assistant_item(self.item_id, "in_progress", self.modality, None)
        part = {"type": "audio", "transcript": ""} if self.modality == "audio" else {"type": "text", "text": ""}
        return [server_event("response.output_item.added", response_id=self.id, output_index=0, item=item),
                server_event("conversation.item.added", previous_item_id=previous_item_id, item=item),
                server_event("response.content_part.added", part=part, **self._index())]

    def audio_delta(self, audio_b64: str) -> dict[str, Any]:
        return server_event("response.output_audio.delta", delta=audio_b64, **self._index())

    def text_delta(self, text: str) -> dict[str, Any]:
        self.transcript += text
        kind = "response.output_audio_transcript.delta" if self.modality == "audio" else "response.output_text.delta"
        return server_event(kind, delta=text, **self._index())

    def function_call(self, call_id: str, name: str, arguments: str) -> list[dict[str, Any]]:
        """A call of one of the client's function tools, as the next output item."""
        item_id, index = new_id("item"), len(self.output) + (1 if self.item_id else 0)
        added = function_call_item(item_id, call_id, name, "", "in_progress")
        done = function_call_item(item_id, call_id, name, arguments, "completed")
        self.output.append(done)
        at = {"response_id": self.id, "output_index": index}
        return [server_event("response.output_item.added", item=added, **at),
                server_event("conversation.item.added", previous_item_id=None, item=added),
                server_event("response.function_call_arguments.delta", item_id=item_id, call_id=call_id,
                             delta=arguments, **at),
                server_event("response.function_call_arguments.done", item_id=item_id, call_id=call_id,
                             name=name, arguments=arguments, **at),
                server_event("response.output_item.done", item=done, **at),
                server_event("conversation.item.done", previous_item_id=None, item=done)]

    def done(self, status: str = "completed", reason: str | None = None) -> list[dict[str, Any]]:
        """Everything that closes the response: its part and item (when the model spoke), then
        `response.done` with `status` (`completed`, `cancelled`, `incomplete`)."""
        events = []
        if self.item_id:
            item_status = "completed" if status == "completed" else "incomplete"
            item = assistant_item(self.item_id, item_status, self.modality, self.transcript)
            if self.modality == "audio":
                events += [server_event("response.output_audio.done", **self._index()),
                           server_event("response.output_audio_transcript.done", transcript=self.transcript,
                                        **self._index()),
                           server_event("response.content_part.done",
                                        part={"type": "audio", "transcript": self.transcript}, **self._index())]
            else:
                events += [server_event("response.output_text.done", text=self.transcript, **self._index()),
                           server_event("response.content_part.done", part={"type": "text", "text": self.transcript},
                                        **self._index())]
            events += [server_event("response.output_item.done", response_id=self.id, output_index=0, item=item),
                       server_event("conversation.item.done", previous_item_id=None, item=item)]
            self.output.insert(0, item)
        details = {"type": status, "reason": reason} if status != "completed" else None
        events.append(server_event("response.done", response=self.describe(status, details)))
        return events
