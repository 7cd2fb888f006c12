"""The tick engine: every tick (200 ms, or 80 ms for a Moshi frame), ONE batched forward of
every live session.

`tick()` reads like nano-vllm's `step()`: gather each session's chunk, resample, one forward of
the model family, decide turns, voice the audio, hand out outputs. Everything a tick touches was
allocated when the scheduler was built; joining and leaving only flip slots. The model itself
sits behind `ModelFamily` (foreground.engine.model_family): this file knows nothing of its
insides.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace

import torch

from foreground.engine.chunk_gather import ChunkGather
from foreground.engine.chunk_queue import ChunkQueue, QueuedChunk
from foreground.engine.delegation import CollectingJobSink, JobSink, make_job
from foreground.engine.input_validation import (
    InvalidInput,
    LimitExceeded,
    check_audio_chunk,
    check_end_silence_ms,
    check_sample_rate,
    check_text,
)
from foreground.engine.model_family import ModelFamily
from foreground.engine.output_level import OutputLevel
from foreground.engine.resampler import Resampler16kTo24k, Resampler24kTo16k
from foreground.engine.session_slots import SessionRecord, SessionSlots
from foreground.engine.session_state import PendingResult, SessionState, WovenResult
from foreground.engine.turn_policy import TurnEvent, TurnPolicyConfig
from foreground.engine.stage_clock import STAGES
from foreground.engine.vad import BatchedSileroVad
from foreground.kernels.matmul import use_invariant_kernels
from protos.microturn.v1 import events_pb2

log = logging.getLogger(__name__)

SILENT_PEAK = 200  # int16 peak below which a queued chunk counts as silence (-44 dBFS)
JITTER_BUFFER_MS = 800  # queued audio per session before the oldest chunk is dropped

__all__ = ["SessionOutput", "TickScheduler", "WovenResult"]


@dataclass
class SessionOutput:
    """What one session gets from one tick."""

    session_id: str
    tick: int
    pcm16: bytes  # one tick of PCM16 mono at the family's output rate (silence when the model does not speak)
    speech: bool
    text: str
    events: list[TurnEvent]
    delegated_job_id: str = ""
    woven: list = field(default_factory=list)  # WovenResult: background results that entered now
    input_seq: int = 0  # the client's chunk seq this tick used (0: none arrived: silence)
    input_received_ns: int = 0
    tick_started_ns: int = 0
    tick_ended_ns: int = 0


class _AudioBuffers:
    """Per-slot audio rows of one tick, at 16 kHz (the VAD) and at the model's rate."""

    def __init__(self, family: ModelFamily, max_slots: int) -> None:
        shape = family.shape
        n16, n24, n_out = shape.samples(16_000), shape.samples(24_000), shape.samples(shape.output_rate)
        self.pcm16k = torch.zeros(max_slots, n16)
        self.pcm24k = torch.zeros(max_slots, n24)
        self.up24k = torch.zeros(max_slots, n24)
        self.down16k = torch.zeros(max_slots, n16)
        self.is24k = torch.zeros(max_slots, 1, dtype=torch.bool)
        self.any24k = torch.zeros((), dtype=torch.bool)
        self.any16k = torch.zeros((), dtype=torch.bool)
        self.speaking = torch.zeros(max_slots, 1, 1, dtype=torch.bool)
        self.pcm_out = torch.zeros(max_slots, n_out)
        self.pcm16_out = torch.zeros(max_slots, n_out, dtype=torch.int16)
        self.text_ids = torch.zeros(max_slots, shape.text_slots_per_tick, dtype=torch.int64)


class TickScheduler:
    def __init__(self, family: ModelFamily, max_slots: int, turn: TurnPolicyConfig,
                 jobs: JobSink | None = None, default_input_rate: int = 16_000,
                 invariant_kernels: bool = True, text_queue_bytes: int = 16_384) -> None:
        self.text_queue_bytes = text_queue_bytes  # per session: text and results waiting to enter
        # Batch invariance is the default: a session's outputs do not depend on its batch.
        use_invariant_kernels(invariant_kernels)
        self.family, self.shape = family, family.shape
        self.max_slots = max_slots
        family.allocate(max_slots)
        tick_ms = self.shape.tick_ms
        self.queue = ChunkQueue(max_slots, depth=max(4, math.ceil(JITTER_BUFFER_MS / tick_ms)))
        self.down = Resampler24kTo16k(max_slots, chunk_in=self.shape.samples(24_000))
        self.up = Resampler16kTo24k(max_slots, chunk_in=self.shape.samples(16_000))
        self.vad = BatchedSileroVad(max_slots, tick_samples=self.shape.samples(16_000))
        self.vad_probs = torch.zeros(max_slots, self.vad.windows_per_tick)
        self.level = OutputLevel(self.shape.samples(self.shape.output_rate), tick_ms, max_slots)
        self.audio = _AudioBuffers(family, max_slots)
        self.slots = SessionSlots(max_slots, [self.queue, self.down, self.up, self.vad, self.level,
                                              *family.slot_parts()])
        self.turn_config = replace(turn, tick_ms=tick_ms)
        # a result held back while the user speaks is woven after this many ticks anyway
        self.weave_max_wait_ticks = math.ceil(turn.weave_max_wait_ms / tick_ms)
        self.policy = family.turn_policy(self.turn_config)
        self.jobs = jobs or CollectingJobSink()
        self.default_input_rate = default_input_rate
        self.tick_count = 0
        self.gather16, self.gather24 = ChunkGather(max_slots), ChunkGather(max_slots)
        # Per-slot scalars are written, and each session's PCM read, through NumPy views of the
        # tick's tensors (no tensor op per session).
        self._is24k, self._text_ids = self.audio.is24k.numpy(), self.audio.text_ids.numpy()
        self._speaking = self.audio.speaking.numpy()
        self._pcm16_out = self.audio.pcm16_out.numpy()
        self._peak_scratch = torch.zeros(self.queue.samples.shape[-1], dtype=torch.int16)
        self._peak = torch.zeros((), dtype=torch.int16)

    @property
    def output_rate(self) -> int:
        return self.shape.output_rate

    @property
    def live(self) -> int:
        return self.slots.live

    @property
    def free(self) -> int:
        return self.slots.free

    # -- sessions ---------------------------------------------------------------------------

    def join(self, session_id: str, input_rate: int | None = None, seed: int | None = None,
             turn_policy: str | None = None, end_silence_ms: int | None = None) -> SessionRecord:
        """Take a slot (raises SessionsFull); `turn_policy` and `end_silence_ms` override the
        replica's settings for this session."""
        rate = check_sample_rate(input_rate or self.default_input_rate, "open.input_sample_rate")
        if turn_policy not in (None, "model", "vad", "hybrid"):
            raise InvalidInput("open.turn_policy", f"unknown turn policy {turn_policy!r}")
        policy = self.policy
        if turn_policy or end_silence_ms is not None:
            config = replace(self.turn_config, policy=turn_policy or self.turn_config.policy)
            if end_silence_ms is not None:
                wait = check_end_silence_ms(end_silence_ms)
                config = replace(config, silence_threshold_ms=wait, min_end_silence_ms=wait)
            policy = self.family.turn_policy(config, requested=bool(turn_policy))
        state = SessionState(input_rate=rate, policy=policy, text_out=self.family.text_decoder())
        record = self.slots.join(session_id, state)
        self.family.open_slot(record.slot, seed if seed is not None else hash(session_id) & 0x7FFFFFFF)
        return record

    def leave(self, session_id: str) -> SessionRecord:
        return self.slots.leave(session_id)

    def restore(self, session_id: str, input_rate: int | None = None, turn_policy: str | None = None,
                end_silence_ms: int | None = None, epoch: int = 0, model_speaking: bool = False,
                user_speaking: bool = False, conversation: list[tuple[str, str, int]] = ()) -> SessionRecord:
        """Re-join a session that another replica held until it was lost, from its journal
        (`foreground.serve.session_journal`): a fresh slot under the same id, its turn epoch
        and floor, its conversation (for background jobs), and a re-prefill of the model.

        Re-prefill means what a family can rebuild without the lost audio. The reference
        model: the last `restore_text_tokens` of the conversation ("who: text" lines) are
        queued as text input, which enters at its usual pace (`text_slots_per_tick` a tick);
        that is as much text as its KV ring window held (its window holds
        attention_window / tokens_per_tick ticks, each with that many text slots); the audio
        context restarts from the restored tick. A family without `restore_text_tokens` (the
        Moshi family: its text stream is the model's own speech, so forcing the conversation
        into it would make the model say it) gets no re-prefill: its context restarts from
        the audio that follows, and the conversation still goes to background jobs."""
        record = self.join(session_id, input_rate=input_rate, turn_policy=turn_policy, end_silence_ms=end_silence_ms)
        state = record.state
        state.turn.epoch, state.turn.model_speaking = epoch, model_speaking
        state.turn.user_speaking = state.turn.user_spoke = user_speaking
        state.conversation = [(who, text, tick) for who, text, tick in conversation]
        budget = getattr(self.family, "restore_text_tokens", 0)
        if budget and conversation:
            said = "\n".join(f"{who}: {text}" for who, text, _ in conversation)
            state.text_in.extend(self.family.encode_text(said)[-budget:])
        return record

    # -- what the serve layer reads and asks --------------------------------------------------

    def epoch(self, session_id: str) -> int:
        """The session's turn epoch (it rises at every barge-in)."""
        return self.slots.get(session_id).state.turn.epoch

    def conversation(self, session_id: str) -> list[tuple[str, str, int]]:
        return list(self.slots.get(session_id).state.conversation)

    def note_stale_result(self, session_id: str, text: str) -> None:
        """A result of an older epoch: kept in the conversation, never voiced."""
        with self.slots.lock:
            self.slots.get(session_id).state.conversation.append(("tool", f"(stale, not voiced) {text}",
                                                                  self.tick_count))

    def request_tool(self, session_id: str, tool: str, arguments_json: str) -> events_pb2.Job:
        """A client asked for a tool by name: the job for the background pool."""
        state = self.slots.get(session_id).state
        job = make_job(session_id, state.turn.epoch, list(state.conversation), tool, arguments_json)
        self.jobs.submit(job)
        return job

    # -- ingest (any time, from the network) --------------------------------------------------

    def submit_audio(self, session_id: str, pcm16: bytes, sample_rate: int = 0, seq: int = 0) -> None:
        received_ns = time.time_ns()
        record = self.slots.get(session_id)
        rate = sample_rate or record.state.input_rate
        check_audio_chunk(pcm16, rate, self.shape.tick_ms)
        with self.slots.lock:
            self.queue.push(self.slots.get(session_id), pcm16, rate, (seq, received_ns))

    def submit_text(self, session_id: str, text: str) -> None:
        check_text(text)
        tokens = self.family.encode_text(text)
        record = self.slots.get(session_id)
        with self.slots.lock:
            self._check_text_room(record.state, len(text.encode("utf-8")))
            record.state.text_in.extend(tokens)
            record.state.conversation.append(("user", text, self.tick_count))

    def submit_result(self, session_id: str, text: str, result: WovenResult, urgent: bool = False) -> None:
        """A background result to weave into the model's input at a tick boundary: before
        the client's own text, and not while the user is speaking unless `urgent` or it has
        waited `weave_max_wait_ms` (a detector stuck on "speech" must not hold it forever)."""
        tokens = self.family.encode_text(text or "(empty result)")
        with self.slots.lock:
            state = self.slots.get(session_id).state
            state.results_in.append(PendingResult(tokens, result, urgent, self.tick_count))
            state.conversation.append(("tool", text, self.tick_count))

    def _check_text_room(self, state: SessionState, adding: int) -> None:
        """Text enters a few tokens a tick: a client that sends more than it can take is told."""
        waiting = len(state.text_in) + sum(len(p.tokens) for p in state.results_in)
        if waiting + adding > self.text_queue_bytes:
            raise LimitExceeded("text.text", "text_queue_bytes",
                                f"{waiting} tokens are still waiting to enter the model")

    def submit_video(self, session_id: str, jpeg: bytes | None = None, raw_rgb: bytes | None = None,
                     width: int = 0, height: int = 0) -> None:
        """Decoded outside the slots' lock (the tick's gather waits on it), stored under it."""
        self.slots.get(session_id)  # an unknown session fails before any decoding
        frame = self.family.decode_video(jpeg, raw_rgb, width, height)
        with self.slots.lock:
            record = self.slots.get(session_id)
            self.family.store_video(record.slot, frame)

    # -- the tick -----------------------------------------------------------------------------

    def tick(self) -> list[SessionOutput]:
        started_ns = time.time_ns()
        STAGES.start()
        with self.slots.lock:
            records = self.slots.records()
            batch = len(records)
            if batch:
                self._gather(records)
        if not batch:
            self.tick_count += 1
            return []
        STAGES.lap("engine.gather")
        model_audio = self._resample(batch)
        STAGES.lap("engine.resample")
        self.vad.speech_prob(self.audio.pcm16k[:batch], out=self.vad_probs[:batch])
        STAGES.lap("engine.vad")
        self.family.forward(batch, model_audio, self.audio.text_ids[:batch])
        STAGES.lap("model.forward_rest")
        states = [r.state for r in records]
        probs = self.vad_probs[:batch].tolist()
        threshold = self.turn_config.vad_threshold
        for state, windows in zip(states, probs, strict=True):
            state.heard_speech = max(windows) >= threshold
        decisions = self.family.decide(states, self.tick_count, probs)
        STAGES.lap("engine.decide")
        self._voice(batch, decisions)
        outputs = self._collect(records, decisions)
        self.family.end_tick(batch)
        STAGES.lap("engine.collect")
        self.tick_count += 1
        ended_ns = time.time_ns()
        for out in outputs:
            out.tick_started_ns, out.tick_ended_ns = started_ns, ended_ns
        return outputs

    def _gather(self, records: list[SessionRecord]) -> None:
        """Each session's oldest queued chunk (or silence) into the tick's buffers."""
        buf, text_slots = self.audio, self.shape.text_slots_per_tick
        self.gather16.start()
        self.gather24.start()
        for record in records:
            slot, chunk, state = record.slot, self._next_chunk(record), record.state
            state.input_meta = chunk.meta if chunk and chunk.meta else (0, 0)
            if chunk is None:
                record.late_chunks += state.audio_started
                buf.pcm16k[slot].zero_()
                buf.pcm24k[slot].zero_()
                self._is24k[slot] = self.shape.model_rate == 24_000
            elif chunk.rate == 24_000:
                self.gather24.add(chunk.row, slot)
                self._is24k[slot] = True
            else:
                self.gather16.add(chunk.row, slot)
                self._is24k[slot] = False
            state.woven_now = []
            for i in range(text_slots):
                self._text_ids[slot, i] = self._next_text_token(state)
        self.gather16.copy(self.queue.rows(), buf.pcm16k)
        self.gather24.copy(self.queue.rows(), buf.pcm24k)

    def _resample(self, b: int) -> torch.Tensor:
        """Fill in the 16 kHz rows (the VAD) and the model-rate rows of every slot; return
        the model-rate rows."""
        buf = self.audio
        if bool(torch.any(buf.is24k[:b], out=buf.any24k)):
            self.down.resample(buf.pcm24k[:b], out=buf.down16k[:b])
            torch.where(buf.is24k[:b], buf.down16k[:b], buf.pcm16k[:b], out=buf.pcm16k[:b])
        if self.shape.model_rate == 16_000:
            return buf.pcm16k[:b]
        if not bool(torch.all(buf.is24k[:b], out=buf.any16k)):
            self.up.resample(buf.pcm16k[:b], out=buf.up24k[:b])
            torch.where(buf.is24k[:b], buf.pcm24k[:b], buf.up24k[:b], out=buf.pcm24k[:b])
        return buf.pcm24k[:b]

    def _next_chunk(self, record: SessionRecord):
        """The oldest queued chunk. A session whose queue holds more than the chunk it needs
        is behind real time (a chunk slipped past a tick boundary and the client keeps
        sending at pace): it catches up by skipping a chunk that is not speech, as jitter
        buffers shrink in pauses, rather than carrying an extra tick of delay for good. Not
        speech: near-silent, or the last tick's VAD heard no speech (steady noise, hum or a
        tone never pauses, and would otherwise keep the session a tick late for its whole life)."""
        chunk = self.queue.pop(record)
        while (chunk is not None and record.state.queue_size > 0
               and (not record.state.heard_speech or self._near_silent(chunk))):
            record.skipped_chunks += 1
            chunk = self.queue.pop(record)
        if chunk is not None:
            record.state.audio_started = True
        return chunk

    def _next_text_token(self, state: SessionState) -> int:
        """Background results first (held while the user speaks, unless urgent or overdue),
        then the client's text, else padding. A result of an older epoch (the user barged in
        since) is never overdue: it waits for the user, as before."""
        turn = state.turn
        for pending in state.results_in:
            overdue = (self.tick_count - pending.submitted_tick >= self.weave_max_wait_ticks
                       and pending.result.epoch >= turn.epoch)
            if turn.user_speaking and not (pending.urgent or pending.started or overdue):
                continue
            if not pending.started:
                pending.started = True
                state.woven_now.append(pending.result)
            token = pending.tokens.pop(0)
            if not pending.tokens:
                state.results_in.remove(pending)
            return token
        return state.text_in.pop(0) if state.text_in else self.shape.pad_token

    def _near_silent(self, chunk: QueuedChunk) -> bool:
        samples = self.queue.rows()[chunk.row, : chunk.rate * self.shape.tick_ms // 1000]
        torch.abs(samples, out=self._peak_scratch[: samples.numel()])
        return int(torch.amax(self._peak_scratch[: samples.numel()], dim=0, out=self._peak)) < SILENT_PEAK

    def _voice(self, b: int, decisions) -> None:
        """The model's audio where it voices the floor, brought to playback level, as PCM16."""
        buf = self.audio
        for i, decision in enumerate(decisions):
            self._speaking[i] = decision.speak
        self.family.voice(b, buf.speaking[:b], buf.pcm_out[:b])
        STAGES.lap("model.voice")
        self.level.apply(buf.pcm_out[:b], buf.speaking[:b, :, 0])
        torch.mul(buf.pcm_out[:b], 32767.0, out=buf.pcm_out[:b]).round_().clamp_(-32768.0, 32767.0)
        buf.pcm16_out[:b].copy_(buf.pcm_out[:b])
        STAGES.lap("engine.output_level")

    def _collect(self, records: list[SessionRecord], decisions) -> list[SessionOutput]:
        text_ids = self.family.output_text_ids(len(records))
        outputs = []
        for i, (record, decision) in enumerate(zip(records, decisions, strict=True)):
            state = record.state
            text = state.text_out.decode(text_ids[i]) if decision.speak else ""
            job_id = ""
            if decision.delegate:
                job = make_job(record.session_id, decision.events[-1].epoch, list(state.conversation))
                self.jobs.submit(job)
                job_id = job.job_id
            record.ticks += 1
            outputs.append(SessionOutput(
                session_id=record.session_id, tick=self.tick_count,
                pcm16=self._pcm16_out[i].tobytes(), speech=decision.speak,
                text=text, events=decision.events, delegated_job_id=job_id, woven=state.woven_now,
                input_seq=state.input_meta[0], input_received_ns=state.input_meta[1]))
        return outputs
