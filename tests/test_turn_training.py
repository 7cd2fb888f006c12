"""The learned end-of-turn detector: trainer-engine alignment, reproducible training, checkpoints,
the shipped weights, and the turn policies that read it."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cluster.training.turn_data import featurize
from cluster.training.turn_trainer import SIDECAR_FILE, TrainTurnsConfig, WindowSource, train_turns
from foreground.engine.turn_policy import TurnEventKind as K
from foreground.engine.turn_policy import TurnPolicy, TurnPolicyConfig, TurnState, resolve_policy
from foreground.model.checkpoint import (
    DETECTOR_PREFIX,
    MICROTURN_CONFIG,
    TRAINED_DETECTOR,
    head_calibrated,
    init_turn_detector,
    load_checkpoint,
    write_seeded_checkpoint,
)
from foreground.model.interaction_model import InteractionModel
from foreground.model.turn_detector import END, SPEECH
from turn_probe import TICK, engine_logits, speech_track

TINY = TrainTurnsConfig(minutes=0.02, validation_utterances=16, streams=8)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    return load_checkpoint(write_seeded_checkpoint(tmp_path_factory.mktemp("seeded"), "tiny", seed=0))


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Two trainings with the same seed and a budget of seconds (each in its own folder)."""
    return [train_turns(tmp_path_factory.mktemp(f"turns{i}"), TINY) for i in range(2)]


@pytest.fixture(scope="module")
def with_context(seeded):
    """The seeded model with a detector that also reads the session's running context."""
    d = replace(seeded.cfg.turn_detector, context_time_constants_s=(1.0, 5.0))
    model = InteractionModel(replace(seeded.cfg, turn_detector=d))
    init_turn_detector(model.interaction.turn_detector, seed=3)
    return model.eval()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("which", ["seeded", "with_context"])
def test_the_trainers_forward_gives_the_engines_logits_bitwise(which, request):
    model = request.getfixturevalue(which)
    probe = speech_track("Hello there, could you tell me the weather today?", lead_ticks=2, tail_ticks=8)
    other = np.random.default_rng(0).normal(0, 3000, len(probe)).astype(np.int16)
    engine = engine_logits(model, {"other": other, "probe": probe})["probe"]
    log_mel, pitch = featurize(probe[None], model.cfg)
    ticks = len(engine)
    frames = torch.arange(ticks) * model.cfg.audio.frames_per_tick + model.cfg.audio.frames_per_tick - 1
    windows = WindowSource(log_mel, pitch, model.cfg)(torch.stack([torch.zeros_like(frames), frames], 1))
    with torch.no_grad():
        trainer = model.interaction.turn_detector(*windows)
    assert torch.equal(trainer, engine), f"max difference {float((trainer - engine).abs().max())}"


@pytest.mark.timeout(120)
def test_the_detector_output_does_not_depend_on_the_batch(seeded):
    probe = speech_track("Could you remind me what time the pharmacy closes?", lead_ticks=1, tail_ticks=4)
    rng = np.random.default_rng(1)
    alone = engine_logits(seeded, {"probe": probe})["probe"]
    crowd = {f"f{i}": rng.normal(0, 500 * (i + 1), len(probe)).astype(np.int16) for i in range(9)}
    batched = engine_logits(seeded, {**crowd, "probe": probe})["probe"]
    assert torch.equal(alone, batched)


@pytest.mark.timeout(180)
def test_training_on_a_tiny_budget_is_reproducible(tiny_runs):
    a, b = (run.detector.state_dict() for run in tiny_runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    report = tiny_runs[0].report
    assert report["voices"]["validation"] and not set(report["voices"]["validation"]) & set(report["voices"]["train"])
    assert report["command"].startswith("microturn train turns")


@pytest.mark.timeout(180)
def test_a_trained_checkpoint_loads_and_its_detector_follows_the_audio(tiny_runs):
    folder = tiny_runs[0].checkpoint
    assert json.loads((folder / MICROTURN_CONFIG).read_text())["turn_head_calibrated"] is True
    model = load_checkpoint(folder)
    detector = model.interaction.turn_detector.state_dict()
    assert all(torch.equal(detector[k], v) for k, v in tiny_runs[0].detector.state_dict().items())
    track = speech_track("I was thinking about the weather today.", lead_ticks=3, tail_ticks=8)
    logits = engine_logits(model, {"s": track})["s"]
    speech_ticks = np.flatnonzero([np.abs(track[k * TICK:(k + 1) * TICK]).max() > 1000 for k in range(len(logits))])
    silent_before, silent_after = logits[:3], logits[speech_ticks[-1] + 4:]
    assert not torch.equal(logits[speech_ticks[1]], silent_before[-1])  # the output moves with the audio
    assert logits[speech_ticks[1:-1], SPEECH].min() > silent_after[:, SPEECH].max()


@pytest.mark.skipif(not TRAINED_DETECTOR.exists(), reason="no shipped detector weights")
@pytest.mark.timeout(120)
def test_the_shipped_detector_is_merged_into_the_seeded_checkpoint_and_hears_turns(seeded, tmp_path):
    shipped = load_file(str(TRAINED_DETECTOR))
    state = seeded.state_dict()
    assert seeded.cfg.turn_head_calibrated
    assert all(torch.equal(state[DETECTOR_PREFIX + k], v) for k, v in shipped.items())
    sidecar = json.loads((TRAINED_DETECTOR.parent / SIDECAR_FILE).read_text())
    assert sidecar["command"].startswith("microturn train turns") and "chosen" in sidecar["validation"]
    # speech: "the user speaks"; 1.6 s after a statement ended: "the turn has ended"
    track = speech_track("My neighbour finally sold his old red car last week.", lead_ticks=3, tail_ticks=8)
    logits = engine_logits(seeded, {"s": track})["s"]
    loud = [np.abs(track[k * TICK:(k + 1) * TICK]).max() > 1000 for k in range(len(logits))]
    last_speech = int(np.flatnonzero(loud)[-1])
    assert (logits[np.flatnonzero(loud)[1:-1], SPEECH] > 0).all()
    assert logits[last_speech + 8, SPEECH] < 0 and logits[last_speech + 8, END] > 0
    # without the detector the seeded checkpoint still writes (uncalibrated)
    plain = load_checkpoint(write_seeded_checkpoint(tmp_path, "tiny", seed=0, trained_turns=False))
    assert not plain.cfg.turn_head_calibrated


@pytest.mark.skipif(not TRAINED_DETECTOR.exists(), reason="no shipped detector weights")
@pytest.mark.timeout(120)
def test_auto_runs_the_model_policy_only_on_a_checkpoint_with_a_trained_detector(tmp_path):
    trained = write_seeded_checkpoint(tmp_path / "trained", "tiny", seed=0)
    plain = write_seeded_checkpoint(tmp_path / "plain", "tiny", seed=0, trained_turns=False)
    assert head_calibrated(trained) and load_checkpoint(trained).cfg.turn_head_calibrated
    assert not head_calibrated(plain) and not load_checkpoint(plain).cfg.turn_head_calibrated
    assert resolve_policy("auto", head_calibrated(trained)) == "model"
    assert resolve_policy("auto", head_calibrated(plain)) == "hybrid"


SILENT, VOICED = [0.05] * 6, [0.9] * 6
HEAD = [0.0, 0.0, 0.0]
QUIET_PAUSE, QUIET_END, TALK = [-5.0, -3.0], [-5.0, 3.0], [5.0, -9.0]


def test_the_model_policy_follows_the_detector_alone():
    policy = TurnPolicy(TurnPolicyConfig(policy="model", head_calibrated=True, backchannel_max_ms=0))  # no hold
    state = TurnState()
    steps = [(SILENT, QUIET_END), (VOICED, TALK), (SILENT, QUIET_PAUSE), (SILENT, QUIET_END),
             (VOICED, TALK)]  # the VAD alone does not decide; it confirms the detector's speech
    decisions = [policy.decide(state, i, vad, HEAD, -9.0, detector_logits=d) for i, (vad, d) in enumerate(steps)]
    assert [d.speak for d in decisions] == [False, False, False, True, False]  # nothing said yet at 0
    assert (K.MODEL_SPEECH_STARTED, "head") in [(e.kind, e.cause) for e in decisions[3].events]
    assert (K.INTERRUPTED, "head") in [(e.kind, e.cause) for e in decisions[4].events] and state.epoch == 1


def test_hybrid_takes_a_free_floor_on_the_detector_and_keeps_the_vad_guard():
    policy = TurnPolicy(TurnPolicyConfig(policy="hybrid", head_calibrated=True, backchannel_max_ms=0))  # no hold
    state = TurnState()
    assert not policy.decide(state, 0, VOICED, HEAD, -9.0, detector_logits=QUIET_END).speak  # VAD: user speaks
    assert not policy.decide(state, 1, SILENT, HEAD, -9.0, detector_logits=QUIET_PAUSE).speak
    assert policy.decide(state, 2, SILENT, HEAD, -9.0, detector_logits=QUIET_END).speak
    barge = policy.decide(state, 3, VOICED, HEAD, -9.0, detector_logits=QUIET_END)
    assert not barge.speak and (K.INTERRUPTED, "vad") in [(e.kind, e.cause) for e in barge.events]


def test_an_uncalibrated_detector_is_ignored():
    policy = TurnPolicy(TurnPolicyConfig(policy="hybrid", head_calibrated=False, silence_threshold_ms=400))
    state = TurnState()
    speak = [policy.decide(state, i, vad, HEAD, -9.0, detector_logits=QUIET_END).speak
             for i, vad in enumerate([VOICED, SILENT, SILENT, SILENT])]
    assert speak == [False, False, True, True]  # the silence threshold, as before
