"""The Moshi family in the tick engine: loading Kyutai's layout, serving, batch invariance, parity."""

from __future__ import annotations

import hashlib
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from cluster.bench.parity import run_parity
from cluster.moshi_reference import write_reference_checkpoint
from foreground.engine.input_validation import InvalidInput
from foreground.engine.tick_scheduler import TickScheduler
from foreground.engine.turn_policy import TurnPolicyConfig
from foreground.family_loader import is_moshi_folder, load_family
from foreground.moshi.checkpoint import CheckpointError, read_moshi_folder
from foreground.moshi.family import MoshiFamily
from foreground.moshi.seeded import write_seeded_moshi

SAMPLES_16K = 1280  # 80 ms


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_seeded_moshi(tmp_path_factory.mktemp("moshi") / "tiny", "tiny", seed=0)


def engine_for(folder, slots: int) -> TickScheduler:
    return TickScheduler(load_family(folder, "tiny"), max_slots=slots, turn=TurnPolicyConfig(policy="model"))


def chunk(session: int, tick: int) -> bytes:
    """A voice-like 80 ms chunk at 16 kHz, different per session, changing over time."""
    t = (torch.arange(SAMPLES_16K) + tick * SAMPLES_16K) / 16_000
    f0 = 120 + 17 * session
    wave = 0.2 * torch.sin(2 * math.pi * f0 * t) * (0.5 + 0.5 * math.sin(tick / 3 + session))
    return (wave * 32767).to(torch.int16).numpy().tobytes()


def test_the_folder_is_kyutais_layout_and_moshis_own_loaders_read_it(tiny):
    from moshi.models.loaders import CheckpointInfo

    config = json.loads((tiny / "config.json").read_text())
    assert config["moshi_name"] == "model.safetensors" and config["mimi_config_name"] == "mimi_config.json"
    assert is_moshi_folder(tiny) and isinstance(load_family(tiny, "tiny"), MoshiFamily)
    info = read_moshi_folder(tiny)
    ck = CheckpointInfo(moshi_weights=info.lm_weights, mimi_weights=info.mimi_weights, tokenizer=info.tokenizer,
                        lm_config=info.lm_config, mimi_config=info.mimi_config)
    ck.get_moshi(dtype=torch.float32)  # strict loads: every tensor name and shape is moshi's
    ck.get_mimi()
    assert ck.get_text_tokenizer().get_piece_size() == config["text_card"]


def test_a_missing_file_or_tensor_is_named(tiny, tmp_path):
    broken = shutil.copytree(tiny, tmp_path / "broken")
    (broken / "tokenizer_spm_32k_3.model").unlink()
    with pytest.raises(CheckpointError, match="tokenizer_spm_32k_3.model"):
        read_moshi_folder(broken)
    shutil.copy(tiny / "tokenizer_spm_32k_3.model", broken)
    state = load_file(str(broken / "model.safetensors"))
    name = next(k for k in state if k.startswith("depformer"))
    del state[name]
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises((KeyError, ValueError), match=name.split(".")[0]):
        MoshiFamily.from_folder(broken)


def run_probe(folder, others: int, ticks: int = 14) -> list[str]:
    """The probe's outputs per tick (audio, tokens, logits), batched with `others` that join
    before it, one that joins later and leaves, and one whose leaving moves the probe's slot."""
    engine = engine_for(folder, others + 2)
    names = [f"o{i}" for i in range(others)]
    for i, name in enumerate(names):
        engine.join(name, seed=100 + i)
    engine.join("probe", seed=7)
    digests = []
    for tick in range(ticks):
        if tick == 5 and others:
            engine.join("late", seed=99)
            names.append("late")
        if tick == 9 and others:
            engine.leave(names.pop())  # "late": the last slot, nothing moves
            engine.leave(names.pop(0))  # the probe is now the last live session: it moves into slot 0
            assert engine.slots.get("probe").slot == 0
        for i, name in enumerate(names):
            engine.submit_audio(name, chunk(i + 1, tick))
        engine.submit_audio("probe", chunk(0, tick))
        outputs = {o.session_id: o for o in engine.tick()}
        h = hashlib.blake2b(outputs["probe"].pcm16, digest_size=16)
        for row in engine.family.output_rows(engine.slots.get("probe").slot):
            h.update(row.numpy().tobytes())
        digests.append(h.hexdigest())
    return digests


@pytest.mark.parametrize("others", [2, 7, 32])
def test_a_sessions_codes_and_audio_do_not_depend_on_its_batch(tiny, others):
    assert run_probe(tiny, others) == run_probe(tiny, 0)


def test_sessions_converse_at_80_ms_with_either_input_rate(tiny):
    engine = engine_for(tiny, 2)
    assert engine.shape.tick_ms == 80 and engine.output_rate == 24_000
    engine.join("a", input_rate=16_000)
    engine.join("b", input_rate=24_000)
    voiced = 0
    for tick in range(10):
        engine.submit_audio("a", chunk(0, tick))
        engine.submit_audio("b", bytes(2 * 1920))
        outputs = engine.tick()
        assert [len(o.pcm16) for o in outputs] == [2 * 1920, 2 * 1920]
        voiced += sum(any(o.pcm16) for o in outputs)
    assert voiced > 0 and sum(r.late_chunks for r in engine.slots.records()) == 0
    with pytest.raises(InvalidInput, match="audio"):
        engine.submit_audio("a", bytes(2 * 3200))  # a 200 ms chunk on an 80 ms replica


def test_what_does_not_apply_to_the_family_is_refused_by_name(tiny):
    engine = engine_for(tiny, 1)
    with pytest.raises(InvalidInput, match="turn_policy"):
        engine.join("x", turn_policy="vad")
    engine.join("y")
    with pytest.raises(InvalidInput, match="video"):
        engine.submit_video("y", jpeg=b"\xff\xd8")


def test_text_that_enters_is_what_the_model_says(tiny):
    """Moshi has no text input: text (a woven result, the client's) is forced into its own
    text stream, which comes back out (after the streams' delay) as what it said."""
    engine = engine_for(tiny, 1)
    engine.join("s")
    engine.submit_text("s", "the tea is ready")
    said = ""
    for tick in range(12):
        engine.submit_audio("s", chunk(0, tick))
        said += "".join(o.text for o in engine.tick())
    assert said.startswith(" the tea is ready")


@pytest.mark.slow
def test_parity_with_the_reference_on_a_checkpoint_moshi_made(tmp_path):
    folder = write_reference_checkpoint(tmp_path / "ref", "tiny", seed=5)
    result = run_parity(folder, sessions=2, frames=24)
    assert result["tokens_equal"] is True
    for key in ("mimi_encode_max_abs_diff", "mimi_decode_max_abs_diff", "lm_logits_max_abs_diff"):
        assert result[key] <= 1e-4, (key, result[key])
