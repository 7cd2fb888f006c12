"""The tick engine: every 200 ms, ONE batched forward of every live session.

`tick()` reads like nano-vllm's `step()`: gather each session's chunk, featurise, one
forward, decide turns, voice the audio, hand out outputs. Everything a tick touches was
allocated when the scheduler was built; joining and leaving only flip slots.
"""

from __future__ import annotations

import codecs
import logging
import math
import re
import time
from dataclasses import dataclass, field, replace

import torch

from foreground.engine.chunk_queue import ChunkQueue
from foreground.engine.delegation import CollectingJobSink, JobSink, make_job
from foreground.engine.input_validation import (
    InvalidInput,
    check_audio_chunk,
    check_sample_rate,
    check_text,
)
from foreground.engine.kv_ring import RingKVCache
from foreground.engine.output_level import OutputLevel
from foreground.engine.session_slots import SessionRecord, SessionSlots
from foreground.engine.turn_policy import TurnEvent, TurnPolicy, TurnPolicyConfig, TurnState
from foreground.engine.vad import BatchedSileroVad
from foreground.kernels.matmul import use_invariant_kernels
from foreground.model.audio_features import DMelFeaturizer, Resampler24kTo16k
from foreground.model.config import PAD_ID
from foreground.model.interaction_model import InteractionModel
from foreground.model.pitch_salience import PitchSalience
from foreground.model.runner import NOISE_PAGES, ModelRunner, TickInputs, TickOutputs
from foreground.model.vision import decode_frame
from foreground.model.vocoder import ChannelVocoder

log = logging.getLogger(__name__)

VAD_WINDOWS_PER_TICK = 6
SILENT_PEAK = 200  # int16 peak below which a queued chunk counts as silence (-44 dBFS)


@dataclass
class SessionOutput:
    """What one session gets from one tick."""

    session_id: str
    tick: int
    pcm16: bytes  # 200 ms of 24 kHz PCM16 mono (silence when the model does not speak)
    speech: bool
    text: str
    events: list[TurnEvent]
    delegated_job_id: str = ""
    woven: list = field(default_factory=list)  # WovenResult: background results that entered now
    input_seq: int = 0  # the client's chunk seq this tick used (0: none arrived: silence)
    input_received_ns: int = 0
    tick_started_ns: int = 0
    tick_ended_ns: int = 0


@dataclass(frozen=True)
class WovenResult:
    """A background result whose first tokens entered the model's input this tick."""

    event_id: str
    job_id: str
    epoch: int
    published_ns: int
    received_ns: int = 0  # when the replica read it from the bus


class _StreamBuffers:
    """Per-slot audio buffers of the tick (state only in the sense of the slot's rows)."""

    def __init__(self, cfg, max_slots: int) -> None:
        a = cfg.audio
        self.pcm16k = torch.zeros(max_slots, a.input_samples_per_tick)
        self.pcm24k = torch.zeros(max_slots, a.output_samples_per_tick)
        self.resampled = torch.zeros(max_slots, a.input_samples_per_tick)
        self.is24k = torch.zeros(max_slots, 1, dtype=torch.bool)
        self.any24k = torch.zeros((), dtype=torch.bool)
        self.user_log_mel = torch.zeros(max_slots, a.frames_per_tick, a.n_mels)
        self.prev_out_mel = torch.full((max_slots, a.frames_per_tick, a.n_mels), a.log_mel_floor)
        self.gated_mel = torch.zeros(max_slots, a.frames_per_tick, a.n_mels)
        self.speaking = torch.zeros(max_slots, 1, 1, dtype=torch.bool)
        self.vad_probs = torch.zeros(max_slots, VAD_WINDOWS_PER_TICK)
        self.pcm_out = torch.zeros(max_slots, a.output_samples_per_tick)
        self.pcm16_out = torch.zeros(max_slots, a.output_samples_per_tick, dtype=torch.int16)
        self.silence_mel = torch.full((a.frames_per_tick, a.n_mels), a.log_mel_floor)

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.prev_out_mel]

    def reset(self, slot: int) -> None:
        self.prev_out_mel[slot].copy_(self.silence_mel)


class TickScheduler:
    def __init__(self, model: InteractionModel, max_slots: int, turn: TurnPolicyConfig,
                 jobs: JobSink | None = None, default_input_rate: int = 16_000,
                 invariant_kernels: bool = True) -> None:
        cfg = self.cfg = model.cfg
        # Batch invariance is the default: a session's outputs do not depend on its batch.
        use_invariant_kernels(invariant_kernels)
        self.max_slots = max_slots
        self.runner = ModelRunner(model, max_slots)
        self.cache = RingKVCache(cfg, max_slots, cfg.tokens_per_tick)
        self.inputs = TickInputs.allocate(cfg, max_slots)
        self.outputs = TickOutputs.allocate(cfg, max_slots)
        self.featurizer = DMelFeaturizer(cfg.audio, max_slots)
        self.pitch = PitchSalience(cfg.audio, cfg.turn_detector, max_slots * cfg.audio.frames_per_tick)
        self.resampler = Resampler24kTo16k(max_slots)
        self.vad = BatchedSileroVad(max_slots)
        self.vocoder = ChannelVocoder(cfg.audio, max_slots)
        self.level = OutputLevel(cfg.audio.output_samples_per_tick, cfg.audio.tick_ms, max_slots)
        self.queue = ChunkQueue(max_slots)
        self.buffers = _StreamBuffers(cfg, max_slots)
        self.buffers.user_log_mel = self.inputs.user_log_mel  # one tensor: dMel and the turn detector read it
        self.slots = SessionSlots(max_slots, [
            self.cache, _TensorsOf(self.inputs), self.featurizer, self.resampler, self.vad,
            self.vocoder, self.level, self.queue, self.buffers, self.runner.turn_detector,
        ])
        self.turn_config = turn
        # a result held back while the user speaks is woven after this many ticks anyway
        self.weave_max_wait_ticks = math.ceil(turn.weave_max_wait_ms / cfg.audio.tick_ms)
        self.policy = TurnPolicy(turn)
        self.jobs = jobs or CollectingJobSink()
        self.default_input_rate = default_input_rate
        self.tick_count = 0
        self._peak_scratch = torch.zeros(self.queue.samples.shape[-1], dtype=torch.int16)
        self._peak = torch.zeros((), dtype=torch.int16)

    # -- sessions ---------------------------------------------------------------------------

    def join(self, session_id: str, input_rate: int | None = None, seed: int | None = None,
             turn_policy: str | None = None) -> SessionRecord:
        """Take a slot (raises SessionsFull); `turn_policy` overrides the replica's default."""
        rate = check_sample_rate(input_rate or self.default_input_rate, "open.input_sample_rate")
        if turn_policy not in (None, "model", "vad", "hybrid"):
            raise InvalidInput("open.turn_policy", f"unknown turn policy {turn_policy!r}")
        policy = TurnPolicy(replace(self.turn_config, policy=turn_policy)) if turn_policy else self.policy
        record = self.slots.join(session_id)
        record.extra.update(rate=rate, turn=TurnState(), text_in=[], results_in=[], conversation=[], policy=policy,
                            text_out=codecs.getincrementaldecoder("utf-8")(errors="replace"))
        page = (seed if seed is not None else hash(session_id)) % NOISE_PAGES
        self.inputs.noise_page[record.slot] = page
        return record

    def leave(self, session_id: str) -> SessionRecord:
        return self.slots.leave(session_id)

    # -- ingest (any time, from the network) --------------------------------------------------

    def submit_audio(self, session_id: str, pcm16: bytes, sample_rate: int = 0, seq: int = 0) -> None:
        received_ns = time.time_ns()
        record = self.slots.get(session_id)
        rate = sample_rate or record.extra["rate"]
        check_audio_chunk(pcm16, rate, self.cfg.audio.tick_ms)
        with self.slots.lock:
            self.queue.push(self.slots.get(session_id), pcm16, rate, (seq, received_ns))

    def submit_text(self, session_id: str, text: str) -> None:
        data = check_text(text)
        record = self.slots.get(session_id)
        with self.slots.lock:
            record.extra["text_in"].extend(data)
            record.extra["conversation"].append(("user", text, self.tick_count))

    def submit_result(self, session_id: str, text: str, result: WovenResult, urgent: bool = False) -> None:
        """A background result to weave into the model's input at a tick boundary: before
        the client's own text, and not while the user is speaking unless `urgent` or it has
        waited `weave_max_wait_ms` (a detector stuck on "speech" must not hold it forever)."""
        data = text.encode("utf-8") or b"(empty result)"
        with self.slots.lock:
            record = self.slots.get(session_id)
            record.extra["results_in"].append([bytearray(data), result, urgent, False, self.tick_count])
            record.extra["conversation"].append(("tool", text, self.tick_count))

    def submit_video(self, session_id: str, jpeg: bytes | None = None, raw_rgb: bytes | None = None,
                     width: int = 0, height: int = 0) -> None:
        try:
            frame = decode_frame(jpeg, raw_rgb, width, height, self.cfg.vision.image_size)
        except ValueError as e:  # its message names the field in backticks
            named = re.search(r"`([\w.]+)`", str(e))
            raise InvalidInput(named.group(1) if named else "video", str(e)) from e
        with self.slots.lock:
            record = self.slots.get(session_id)
            self.inputs.video[record.slot].copy_(frame)
            self.inputs.has_video[record.slot] = True

    # -- the tick -----------------------------------------------------------------------------

    def tick(self) -> list[SessionOutput]:
        started_ns = time.time_ns()
        with self.slots.lock:
            records = self.slots.records()
            batch = len(records)
            if batch:
                self._gather(records)
        if not batch:
            self.tick_count += 1
            return []
        self._featurize(batch)
        self.cache.plan(batch, self.cfg.tokens_per_tick)
        self.runner.step(self.inputs, self.cache, batch, self.outputs)
        decisions = self._decide(records)
        self._voice(batch, decisions)
        outputs = self._collect(records, decisions)
        self._advance(batch)
        ended_ns = time.time_ns()
        for out in outputs:
            out.tick_started_ns, out.tick_ended_ns = started_ns, ended_ns
        return outputs

    def _gather(self, records: list[SessionRecord]) -> None:
        """Each session's oldest queued chunk (or silence) into the tick's buffers."""
        buf, text_slots = self.buffers, self.cfg.text_slots_per_tick
        n16, n24 = buf.pcm16k.shape[1], buf.pcm24k.shape[1]
        for record in records:
            slot, chunk = record.slot, self._next_chunk(record)
            record.extra["input_meta"] = chunk[2] if chunk and chunk[2] else (0, 0)
            if chunk is None:
                record.late_chunks += record.extra.get("audio_started", False)
                buf.pcm16k[slot].zero_()
                buf.is24k[slot] = False
            elif chunk[1] == 24_000:
                buf.pcm24k[slot].copy_(chunk[0][:n24]).div_(32768.0)
                buf.is24k[slot] = True
            else:
                buf.pcm16k[slot].copy_(chunk[0][:n16]).div_(32768.0)
                buf.is24k[slot] = False
            woven = record.extra["woven_now"] = []
            for i in range(text_slots):
                self.inputs.text_ids[slot, i] = self._next_text_token(record, woven)

    def _next_chunk(self, record: SessionRecord):
        """The oldest queued chunk. A session whose queue holds more than the chunk it needs
        is behind real time (a chunk slipped past a tick boundary and the client keeps
        sending at pace): it catches up by skipping a near-silent chunk, as jitter buffers
        shrink in pauses, rather than carrying an extra 200 ms of delay for good."""
        chunk = self.queue.pop(record)
        while chunk is not None and record.extra.get("queue_size", 0) > 0 and self._near_silent(chunk):
            record.skipped_chunks += 1
            chunk = self.queue.pop(record)
        if chunk is not None:
            record.extra["audio_started"] = True
        return chunk

    def _next_text_token(self, record: SessionRecord, woven: list) -> int:
        """Background results first (held while the user speaks, unless urgent or overdue),
        then the client's text, else padding. A result of an older epoch (the user barged in
        since) is never overdue: it waits for the user, as before."""
        results = record.extra["results_in"]
        turn = record.extra["turn"]
        for entry in results:
            data, result, urgent, started, submitted = entry
            overdue = self.tick_count - submitted >= self.weave_max_wait_ticks and result.epoch >= turn.epoch
            if turn.user_speaking and not (urgent or started or overdue):
                continue
            if not started:
                entry[3] = True
                woven.append(result)
            token = data.pop(0)
            if not data:
                results.remove(entry)
            return token
        pending = record.extra["text_in"]
        return pending.pop(0) if pending else PAD_ID

    def _near_silent(self, chunk) -> bool:
        samples = chunk[0][: chunk[1] * self.cfg.audio.tick_ms // 1000]
        torch.abs(samples, out=self._peak_scratch[: samples.numel()])
        return int(torch.amax(self._peak_scratch[: samples.numel()], dim=0, out=self._peak)) < SILENT_PEAK

    def _featurize(self, b: int) -> None:
        buf = self.buffers
        if bool(torch.any(buf.is24k[:b], out=buf.any24k)):
            self.resampler.resample(buf.pcm24k[:b], out=buf.resampled[:b])
            torch.where(buf.is24k[:b], buf.resampled[:b], buf.pcm16k[:b], out=buf.pcm16k[:b])
        self.featurizer.featurize(buf.pcm16k[:b], buf.user_log_mel[:b], self.inputs.user_bins[:b])
        self.pitch.compute(self.featurizer.power_rows(), b * self.cfg.audio.frames_per_tick,
                           out=self.inputs.user_pitch[:b])
        self.featurizer.quantize(buf.prev_out_mel[:b], self.inputs.self_bins[:b])
        self.vad.speech_prob(buf.pcm16k[:b], out=buf.vad_probs[:b])

    def _decide(self, records: list[SessionRecord]):
        b = len(records)
        vad = self.buffers.vad_probs[:b].tolist()
        turn = self.outputs.turn_logits[:b].tolist()
        delegate = self.outputs.delegate_logit[:b, 0].tolist()
        detector = self.outputs.turn_detector_logits[:b].tolist()
        return [r.extra["policy"].decide(r.extra["turn"], self.tick_count, vad[i], turn[i], delegate[i],
                                         detector_logits=detector[i])
                for i, r in enumerate(records)]

    def _voice(self, b: int, decisions) -> None:
        """The model's audio where it voices the floor (not while it holds it silently for a
        possible backchannel), silence elsewhere; fed back next tick; brought to playback level."""
        buf = self.buffers
        for i, decision in enumerate(decisions):
            buf.speaking[i] = decision.speak
        torch.where(buf.speaking[:b], self.outputs.log_mel[:b], buf.silence_mel, out=buf.gated_mel[:b])
        buf.prev_out_mel[:b].copy_(buf.gated_mel[:b])
        self.vocoder.synthesize(buf.gated_mel[:b], out_pcm=buf.pcm_out[:b])
        self.level.apply(buf.pcm_out[:b], buf.speaking[:b, :, 0])
        self.vocoder.to_pcm16(buf.pcm_out[:b], out=buf.pcm16_out[:b])

    def _collect(self, records: list[SessionRecord], decisions) -> list[SessionOutput]:
        text_ids = self.outputs.text_ids[: len(records)].tolist()
        outputs = []
        for i, (record, decision) in enumerate(zip(records, decisions, strict=True)):
            text = ""
            if decision.speak:
                data = bytes(t for t in text_ids[i] if t < 256)
                text = record.extra["text_out"].decode(data)
            job_id = ""
            if decision.delegate:
                job = make_job(record.session_id, decision.events[-1].epoch, record.extra["conversation"])
                self.jobs.submit(job)
                job_id = job.job_id
            record.ticks += 1
            outputs.append(SessionOutput(
                session_id=record.session_id, tick=self.tick_count,
                pcm16=self.buffers.pcm16_out[i].numpy().tobytes(), speech=decision.speak,
                text=text, events=decision.events, delegated_job_id=job_id, woven=record.extra["woven_now"],
                input_seq=record.extra["input_meta"][0], input_received_ns=record.extra["input_meta"][1]))
        return outputs

    def _advance(self, b: int) -> None:
        self.inputs.has_video[:b].zero_()
        self.inputs.noise_page[:b].add_(1).remainder_(NOISE_PAGES)
        self.tick_count += 1


class _TensorsOf:
    """Adapts a dataclass of per-slot tensors (TickInputs) to the SlotState protocol."""

    def __init__(self, holder) -> None:
        self.holder = holder

    def state_tensors(self) -> list[torch.Tensor]:
        return list(vars(self.holder).values())

    def reset(self, slot: int) -> None:
        for t in self.state_tensors():
            t[slot].zero_()
