"""microturn's turn events told as Realtime events.

- USER_SPEECH_STARTED / STOPPED -> `input_audio_buffer.speech_started` / `speech_stopped`, then
  `input_audio_buffer.committed` and the user's audio item (`conversation.item.added` / `done`),
  unless the client committed that speech itself (`input_audio_buffer.commit`);
- MODEL_SPEECH_STARTED -> the model's response speaks; YIELDED / MODEL_SPEECH_STOPPED -> it is
  `completed`; INTERRUPTED (a barge-in) -> `cancelled` (`turn_detected`); see `response_lifecycle`;
- with extensions, every turn event with its cause (`microturn.turn`) and two latencies
  (`microturn.latency`): `turn_taking`, from the user's stop to the model's start (in ticks, and
  on this gateway's wall clock), and `interruption_stop`, from sending the chunk in which the
  replica heard the user start to the model's first silent tick arriving here.
"""

from __future__ import annotations

import time

from cluster.realtime.outbox import Outbox, item_added
from cluster.realtime.protocol import new_id, server_event, user_audio_item
from cluster.realtime.response_lifecycle import ResponseLifecycle
from cluster.realtime.session_link import SessionLink
from protos.microturn.v1 import interaction_pb2 as pb

Kind = pb.TurnEvent.Kind


class TurnEvents:
    def __init__(self, link: SessionLink, out: Outbox, responses: ResponseLifecycle) -> None:
        self.link = link
        self.out = out
        self.responses = responses
        self.epoch = 0
        self.input_seq = 0  # the client chunk the replica's latest tick used
        self.model_audible = False  # the latest tick voiced the model
        self.user_item: str | None = None  # the user's speech in progress (speech_started .. stopped)
        self.user_committed = False
        self.marks: dict[str, int] = {}  # tick / wall-clock marks for latencies

    async def on_tick(self, tick: int, audio: pb.AudioOut) -> None:
        """Each tick's audio: which client chunk it used, whether the model spoke (its response
        starts at the first voiced tick), and the end of an interruption."""
        self.input_seq = audio.timing.input_seq or self.input_seq
        self.model_audible = audio.speech
        if audio.speech and not self.responses.muted:
            await self.responses.speak()
        elif "barge_in_seq" in self.marks:
            await self._stop_latency(self.marks.pop("barge_in_seq"), tick)

    async def on_turn(self, tick: int, turn: pb.TurnEvent) -> None:
        self.epoch = max(self.epoch, turn.epoch + (turn.kind == Kind.INTERRUPTED))
        at_ms = max(self.input_seq - 1, 0) * self.link.tick_ms  # where in the client's audio it was heard
        await self.out.extension("turn", kind=Kind.Name(turn.kind), cause=turn.cause, epoch=turn.epoch, tick=tick,
                                 audio_ms=at_ms)
        if turn.kind == Kind.USER_SPEECH_STARTED:
            self.user_item, self.user_committed = new_id("item"), False
            self.marks["user_started_tick"] = tick
            await self.out.emit("input_audio_buffer.speech_started", audio_start_ms=at_ms, item_id=self.user_item)
            if self.responses.speaking:  # a barge-in, or a backchannel
                if self.model_audible:  # still voiced in this tick: measure at the first silent one
                    self.marks["barge_in_seq"] = self.input_seq
                else:
                    await self._stop_latency(self.input_seq, tick)
        elif turn.kind == Kind.USER_SPEECH_STOPPED:
            item_id = self.user_item or new_id("item")
            self.user_item = None
            self.marks["user_stopped_tick"] = tick
            self.marks["user_stopped_seq"] = self.input_seq
            await self.out.emit("input_audio_buffer.speech_stopped", audio_end_ms=at_ms, item_id=item_id)
            if not self.user_committed:
                await self._commit_user_audio(item_id)
        elif turn.kind == Kind.MODEL_SPEECH_STARTED:
            if not self.responses.muted:
                await self.responses.speak()
            await self._turn_taking_latency(tick, turn.cause)
        elif turn.kind == Kind.INTERRUPTED:
            await self.responses.turn_ended("cancelled", "turn_detected")
        elif turn.kind in (Kind.YIELDED, Kind.MODEL_SPEECH_STOPPED):
            await self.responses.turn_ended("completed")

    async def commit(self) -> None:
        """The client's `input_audio_buffer.commit`: the user's audio so far is an item (the
        speech in progress, if any, which is then not committed again when it stops)."""
        await self._commit_user_audio(self.user_item or new_id("item"))
        self.user_committed = self.user_item is not None

    async def _commit_user_audio(self, item_id: str) -> None:
        previous = self.out.follow(item_id)
        await self.out.send(server_event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id),
                            *item_added(previous, user_audio_item(item_id)))

    async def _turn_taking_latency(self, tick: int, cause: str) -> None:
        stopped = self.marks.get("user_stopped_tick")
        if stopped is not None:
            sent = self.link.upstream.sent_ns.get(self.marks.get("user_stopped_seq", -1))
            await self.out.extension("latency", kind="turn_taking", ms=(tick - stopped) * self.link.tick_ms,
                                     wall_ms=round((time.time_ns() - sent) / 1e6, 1) if sent else None,
                                     cause=cause, tick=tick)
            del self.marks["user_stopped_tick"]

    async def _stop_latency(self, seq: int, tick: int) -> None:
        """From sending the client's chunk in which the replica heard the user start, to the
        model's first silent tick arriving here (wall clock, this gateway)."""
        sent = self.link.upstream.sent_ns.get(seq)
        if sent:
            await self.out.extension("latency", kind="interruption_stop", ms=round((time.time_ns() - sent) / 1e6, 1),
                                     tick=tick)
