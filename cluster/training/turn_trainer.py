"""`microturn train turns`: train the end-of-turn detector on synthesised dialogues, on CPU.

Reproducible: the data come from seeded generators and a fresh espeak-ng process, the order of
the batches from a seeded generator, the weights from `init_turn_detector(seed)`, and training
runs on one thread, so the same seed and budget give bitwise the same weights. `minutes` is a
work budget (utterances and steps sized to take about that long on 2 cores), not a timer,
which would make the result depend on the machine's load.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from cluster.training.turn_calibration import choose_offset, onset_detection
from cluster.training.turn_corpus import TRAIN_VOICES, VALIDATION_VOICES, SentenceGrammar, Utterance
from cluster.training.turn_data import RATE, TurnStreams, build_streams, synthesize_utterances
from cluster.training.turn_scenes import SceneConfig
from foreground.model.checkpoint import (
    DETECTOR_PREFIX,
    init_turn_detector,
    load_checkpoint,
    save_checkpoint,
    write_seeded_checkpoint,
)
from foreground.model.audio_features import LOG_CLAMP
from foreground.model.config import ModelConfig, TurnDetectorConfig, preset
from foreground.model.turn_detector import (
    END,
    ENDED,
    PAUSING,
    SPEAKING,
    SPEECH,
    RunningContext,
    TurnDetector,
    frame_features,
    silence_features,
)

log = logging.getLogger(__name__)

DETECTOR_FILE, SIDECAR_FILE = "turn_detector.safetensors", "turn_detector.json"
BATCH = 256  # a multiple of 32: every layer's rows are whole matmul tiles
SPEAKING_STRIDE = 2  # every 2nd speaking frame is a training sample
LONG_SILENCE_S, LONG_SILENCE_STRIDE = 1.6, 4
PAUSE_MARGIN_S = 0.15
VALIDATION_SNR_DB = (5.0, 30.0)


@dataclass(frozen=True)
class TrainTurnsConfig:
    minutes: float = 2.0
    seed: int = 0
    preset: str = "tiny"
    target_takeover: float = 0.08  # on the validation voices (the target on unseen ones: 0.10)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    utterances_per_minute: int = 440  # training turns and same-words turn ends (`corpus`)
    steps_per_minute: int = 1800  # measured: ~45 steps/s on one thread of this 2-core machine
    validation_utterances: int = 240
    streams: int = 32
    acoustic_scenes: bool = True  # levels, rooms, backgrounds, telephone band (`turn_scenes`)
    context_s: tuple[float, ...] | None = None  # the detector's context time constants (None: the preset's)

    @property
    def utterances(self) -> int:
        return max(8, round(self.utterances_per_minute * self.minutes))

    @property
    def steps(self) -> int:
        return max(10, round(self.steps_per_minute * self.minutes))


@dataclass
class TrainResult:
    checkpoint: Path
    detector: TurnDetector
    report: dict


def corpus(cfg: TrainTurnsConfig) -> tuple[list[Utterance], list[Utterance]]:
    train_grammar = SentenceGrammar(random.Random(cfg.seed))
    val_grammar = SentenceGrammar(random.Random(1_000_003 + cfg.seed))

    def draw(grammar: SentenceGrammar, voices: tuple[str, ...], n: int) -> list[Utterance]:
        out: list[Utterance] = []
        while len(out) < n:
            turn, matched = grammar.utterance(voices)
            out += [turn] + ([matched] if matched else [])
        return out

    return draw(train_grammar, TRAIN_VOICES, cfg.utterances), draw(val_grammar, VALIDATION_VOICES,
                                                                   cfg.validation_utterances)


def train_turns(out_dir: Path, cfg: TrainTurnsConfig = TrainTurnsConfig()) -> TrainResult:
    """Synthesise, featurise, train, calibrate on other voices, write a checkpoint to out_dir."""
    started = time.monotonic()
    model_cfg = preset(cfg.preset)
    if cfg.context_s is not None:
        model_cfg = replace(model_cfg, turn_detector=replace(model_cfg.turn_detector,
                                                             context_time_constants_s=tuple(cfg.context_s)))
    train_utts, val_utts = corpus(cfg)
    log.info("synthesising %d training and %d validation utterances (espeak-ng and flite, fresh process)",
             len(train_utts), len(val_utts))
    audio = synthesize_utterances(train_utts + val_utts)
    scenes = SceneConfig() if cfg.acoustic_scenes else None
    # the threshold is chosen where the targets are set (clean to 10 dB SNR), not at 0 dB
    val_scenes = replace(scenes, snr_db=VALIDATION_SNR_DB) if scenes else None
    train = build_streams(train_utts, audio[: len(train_utts)], cfg.streams, model_cfg, cfg.seed, scenes)
    val = build_streams(val_utts, audio[len(train_utts):], cfg.streams, model_cfg, cfg.seed + 1, val_scenes)
    data_s = time.monotonic() - started
    log.info("data: %.0f s of training audio, %.0f s of validation audio, ready in %.1f s",
             train.seconds, val.seconds, data_s)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the gradient sums then have one order: bitwise reproducible
    try:
        detector = fit(model_cfg, train, cfg)
        with torch.no_grad():
            val_logits = frame_logits(detector, model_cfg, val)
    finally:
        torch.set_num_threads(threads)
    a = model_cfg.audio
    chosen, curve = choose_offset(val_logits, val, a.hop_in, a.frames_per_tick, cfg.target_takeover)
    with torch.no_grad():
        detector.out.bias[END] += chosen.offset
        val_logits[..., END] += chosen.offset
    report = {
        "command": f"microturn train turns --minutes {cfg.minutes:g} --seed {cfg.seed}"
                   + (f" --context-s {' '.join(f'{t:g}' for t in cfg.context_s)}" if cfg.context_s is not None else ""),
        "config": asdict(cfg),
        "voices": {"train": list(TRAIN_VOICES), "validation": list(VALIDATION_VOICES)},
        "scenes": {"config": asdict(scenes) if scenes else None, "validation_snr_db": VALIDATION_SNR_DB,
                   "validation": _count(val.scenes),
                   "train": _count(train.scenes)},
        "data": {"train_utterances": len(train_utts), "validation_utterances": len(val_utts),
                 "train_audio_s": round(train.seconds, 1), "validation_audio_s": round(val.seconds, 1)},
        "validation": {"chosen": chosen.to_json(), **onset_detection(val_logits, val, a.hop_in, a.frames_per_tick),
                       "curve": [p.to_json() for p in curve[::4]]},
        "parameters": sum(p.numel() for p in detector.parameters()),
        "seconds": {"data": round(data_s, 1), "total": round(time.monotonic() - started, 1)},
    }
    checkpoint = write_checkpoint(out_dir, cfg.preset, detector, cfg.seed, report)
    log.info("validation voices: pause takeover %.3f, turn-end latency p50 %s s, within 0.3 s %.2f; "
             "wrote %s in %.0f s", chosen.pause_takeover, chosen.turn_end_latency_p50_s,
             chosen.taken_within_0_3_s, checkpoint, report["seconds"]["total"])
    return TrainResult(checkpoint, detector, report)


def _count(scenes: list[str]) -> dict[str, int]:
    """How many stretches got each kind of background ("pink@12dB+tel" counts as pink, +tel)."""
    out: dict[str, int] = {}
    for name in scenes:
        for key in (name.split("@")[0].split("+")[0], "telephone" if name.endswith("+tel") else None):
            if key:
                out[key] = out.get(key, 0) + 1
    return out


def samples(streams: TurnStreams) -> torch.Tensor:
    """(stream, frame) pairs to train on: every silent frame up to LONG_SILENCE_S, sparser after."""
    labels, silence = streams.labels, streams.silence_s
    frame = torch.arange(labels.shape[1]).expand_as(labels)
    keep = (labels != SPEAKING) & (silence <= LONG_SILENCE_S)
    keep |= (labels != SPEAKING) & (frame % LONG_SILENCE_STRIDE == 0)
    keep |= (labels == SPEAKING) & (frame % SPEAKING_STRIDE == 0)
    return keep.nonzero()


class WindowSource:
    """Streams padded in front once, so that any frame's window is a slice. Before a stream's
    first frame: digital silence and a flat pitch map, what a fresh engine slot starts from.
    With a detector context, its value after every frame, run over each whole stream."""

    def __init__(self, log_mel: torch.Tensor, pitch: torch.Tensor, model_cfg: ModelConfig) -> None:
        cfg = model_cfg.turn_detector
        self.width = cfg.window_frames
        self.padded = []
        for frames, fill in ((log_mel, math.log(LOG_CLAMP)), (pitch, cfg.pitch_scale / cfg.pitch_candidates)):
            s, _, c = frames.shape
            self.padded.append(torch.cat([frames.new_full((s, self.width - 1, c), fill), frames], dim=1))
        self.context = None
        if cfg.context_features:
            with torch.no_grad():
                features = frame_features(cfg, log_mel, pitch)
                self.context = RunningContext(model_cfg, len(log_mel)).sequence(features, silence_features(model_cfg))

    def __call__(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Log-mel [N, W, C] and pitch [N, W, P] of the W frames up to each (stream, frame), and
        the context after that frame [N, K * F] (None without one)."""
        out = [p.unfold(1, self.width, 1)[pairs[:, 0], pairs[:, 1]].transpose(1, 2).contiguous()
               for p in self.padded]
        context = self.context[pairs[:, 0], pairs[:, 1]] if self.context is not None else None
        return out[0], out[1], context


def fit(model_cfg: ModelConfig, train: TurnStreams, cfg: TrainTurnsConfig) -> TurnDetector:
    torch.manual_seed(cfg.seed)
    detector = TurnDetector(model_cfg)
    init_turn_detector(detector, cfg.seed)
    pairs = samples(train)
    labels = train.labels[pairs[:, 0], pairs[:, 1]]
    counts = torch.bincount(labels, minlength=3).float()
    log.info("training on %d frames (speaking %d, pausing %d, ended %d), %d steps of %d",
             len(pairs), *counts.int().tolist(), cfg.steps, BATCH)
    loss_fn = DetectorLoss(counts)
    end_weight = duration_neutral_weights(train, pairs, labels)
    opt = torch.optim.AdamW(detector.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    order, cursor, started = torch.randperm(len(pairs), generator=gen), 0, time.monotonic()
    windows = WindowSource(train.log_mel, train.pitch, model_cfg)
    for step in range(cfg.steps):
        if cursor + BATCH > len(order):
            order, cursor = torch.randperm(len(pairs), generator=gen), 0
        batch = order[cursor: cursor + BATCH]
        cursor += BATCH
        loss = loss_fn(detector(*windows(pairs[batch])), labels[batch], end_weight[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, cfg.steps // 20) == 0 or step == cfg.steps - 1:
            done = time.monotonic() - started
            log.info("step %5d/%d  loss %.4f  %.0f s, ~%.0f s left", step + 1, cfg.steps, loss.item(),
                     done, done / (step + 1) * (cfg.steps - step - 1))
    detector.eval()
    return detector


def duration_neutral_weights(streams: TurnStreams, pairs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """END-loss weights that keep silence length from deciding pause vs end while a pause could
    still last: a turn-end frame t seconds into its silence counts as much as the share of
    pauses longer than t. Otherwise the net learns "0.8 s of silence: an end" (most silences
    that long are) and takes over every long pause whose prosody is ambiguous. Past the
    longest pause (plus a margin) silence alone is a turn end again: weight 1."""
    silence = streams.silence_s[pairs[:, 0], pairs[:, 1]]
    pauses = torch.tensor([(e.end - e.start) / RATE for e in streams.events if e.kind == PAUSING])
    longest = float(pauses.max()) if len(pauses) else 0.0
    survive = _share_longer(pauses, silence) if len(pauses) else torch.ones_like(silence)
    weight = torch.where(silence >= longest + PAUSE_MARGIN_S, torch.ones_like(silence), survive)
    return torch.where(labels == ENDED, weight, torch.ones_like(weight))


def _share_longer(pauses: torch.Tensor, silence: torch.Tensor) -> torch.Tensor:
    """For each silence length, the share of pauses strictly longer, by binary search: the
    [samples x pauses] comparison it replaces took 11 GB at `--minutes 12`."""
    ranked = pauses.sort().values
    longer = len(ranked) - torch.searchsorted(ranked, silence, right=True)
    return longer.float() / len(ranked)


class DetectorLoss:
    """Binary cross-entropy of SPEECH on every sample and of END on the silent ones, each
    class-balanced (pause frames are a minority: ~12% of samples)."""

    def __init__(self, counts: torch.Tensor) -> None:
        speaking, pausing, ended = counts.clamp(min=1).tolist()
        self.speech_pos_weight = torch.tensor((pausing + ended) / speaking)
        self.end_pos_weight = torch.tensor(pausing / ended)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, end_weight: torch.Tensor) -> torch.Tensor:
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        speech = bce(logits[:, SPEECH], (labels == SPEAKING).float(), pos_weight=self.speech_pos_weight)
        silent = labels != SPEAKING
        end = bce(logits[silent, END], (labels[silent] == ENDED).float(), weight=end_weight[silent],
                  pos_weight=self.end_pos_weight)
        return speech + end


def frame_logits(detector: TurnDetector, model_cfg: ModelConfig, streams: TurnStreams,
                 chunk: int = 2048) -> torch.Tensor:
    """[S, T, 2] for every frame (the training forward; bitwise the engine's logits)."""
    s, t = streams.labels.shape
    pairs = torch.stack(torch.meshgrid(torch.arange(s), torch.arange(t), indexing="ij"), -1).view(-1, 2)
    windows = WindowSource(streams.log_mel, streams.pitch, model_cfg)
    out = [detector(*windows(pairs[i: i + chunk])) for i in range(0, len(pairs), chunk)]
    return torch.cat(out).view(s, t, -1)


def write_checkpoint(out_dir: Path, preset_name: str, detector: TurnDetector, seed: int,
                     report: dict) -> Path:
    """The seeded backbone with this detector (`turn_head_calibrated: true`), plus the detector
    alone with its sidecar (what `foreground/model/trained/` ships)."""
    out_dir = Path(out_dir)
    model = load_checkpoint(write_seeded_checkpoint(out_dir, preset_name, seed, trained_turns=False,
                                                    turn_detector=detector.cfg))
    model_cfg = model.cfg
    model.cfg = replace(model.cfg, turn_head_calibrated=True)
    model.interaction.turn_detector.load_state_dict(detector.state_dict())
    save_checkpoint(model, out_dir)
    tensors = {k: v.detach().contiguous() for k, v in detector.state_dict().items()}
    meta = {"turn_detector": json.dumps(asdict(model_cfg.turn_detector)), "audio": json.dumps(asdict(model_cfg.audio)),
            "seed": str(seed), "command": report["command"]}
    save_file(tensors, str(out_dir / DETECTOR_FILE), metadata=meta)
    (out_dir / SIDECAR_FILE).write_text(json.dumps(report, indent=2) + "\n")
    assert all((DETECTOR_PREFIX + k) in model.state_dict() for k in tensors)
    return out_dir
