"""The reference model: transformers parity, checkpoints, head shapes, an allocation-free step."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from foreground.engine.allocations import count_tensor_allocations
from foreground.model.kv_ring import RingKVCache
from foreground.kernels import rms_norm
from foreground.model.backbone import Backbone, BackboneWorkspace
from foreground.model.checkpoint import CheckpointError, load_checkpoint, write_seeded_checkpoint
from foreground.model.config import PRESETS, ModelConfig, ModelConfigError
from foreground.model.runner import ModelRunner, TickInputs, TickOutputs


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_seeded_checkpoint(tmp_path_factory.mktemp("tiny"), "tiny", seed=3)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_checkpoint(tiny_dir)


def _our_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Text-only prefill of each row of `ids` as one step of our streaming backbone."""
    cfg, (b, t) = model.cfg, ids.shape
    backbone, ws, cache = Backbone(cfg, model.model), BackboneWorkspace(cfg, b, t), RingKVCache(cfg, b, t)
    cache.plan(b, t)
    ws.hidden[: b * t].copy_(model.model.embed_tokens.weight[ids.reshape(-1)])
    x = backbone.step(ws, cache, b)
    normed = rms_norm(x, model.model.norm.weight, cfg.rms_norm_eps, torch.empty_like(x), torch.empty(b * t, 1))
    return (normed @ model.lm_head.weight.T).view(b, t, -1)


@pytest.mark.timeout(120)
def test_backbone_matches_transformers_mixtral(tiny, tiny_dir):
    from transformers import MixtralForCausalLM

    hf = MixtralForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    ids = torch.randint(0, 256, (3, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(ids).logits
    ours = _our_logits(tiny, ids)
    assert (ours - expected).abs().max().item() <= 1e-4


def test_seeded_checkpoints_are_reproducible(tmp_path, tiny_dir):
    again = write_seeded_checkpoint(tmp_path / "again", "tiny", seed=3)
    other = write_seeded_checkpoint(tmp_path / "other", "tiny", seed=4)
    a, b, c = (load_file(str(d / "model.safetensors")) for d in (tiny_dir, again, other))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


def test_checkpoint_holds_a_mixtral_config(tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "mixtral" and config["head_dim"] >= 32
    names = load_file(str(tiny_dir / "model.safetensors")).keys()
    assert "model.layers.0.block_sparse_moe.experts.0.w1.weight" in names
    assert "model.layers.0.block_sparse_moe.gate.weight" in names


def test_missing_tensor_is_named(tmp_path, tiny_dir):
    tensors = load_file(str(tiny_dir / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    _copy_with(tiny_dir, tmp_path, tensors)
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight.*missing"):
        load_checkpoint(tmp_path)


def test_misshaped_tensor_is_named(tmp_path, tiny_dir):
    tensors = load_file(str(tiny_dir / "model.safetensors"))
    tensors["interaction.turn_head.weight"] = torch.zeros(5, 7)
    _copy_with(tiny_dir, tmp_path, tensors)
    with pytest.raises(CheckpointError, match=r"interaction\.turn_head\.weight.*\(5, 7\)"):
        load_checkpoint(tmp_path)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="microturn.json|model.safetensors"):
        load_checkpoint(tmp_path)


def _copy_with(src, dst, tensors):
    """A copy of the checkpoint `src` whose `model.safetensors` holds `tensors`."""
    save_file(tensors, str(dst / "model.safetensors"))
    for name in ("config.json", "microturn.json", "interaction.safetensors"):
        (dst / name).write_bytes((src / name).read_bytes())


def test_presets_keep_head_dim_for_vllm():
    assert all(cfg.head_dim >= 32 for cfg in PRESETS.values())
    with pytest.raises(ModelConfigError, match="head_dim"):
        ModelConfig(head_dim=16, hidden_size=128)


def test_runner_outputs_have_the_stream_shapes_and_allocate_nothing(tiny):
    cfg, slots = tiny.cfg, 4
    runner, cache = ModelRunner(tiny, slots), RingKVCache(tiny.cfg, slots, cfg.tokens_per_tick)
    inputs, out = TickInputs.allocate(cfg, slots), TickOutputs.allocate(cfg, slots)
    inputs.user_bins.random_(0, cfg.audio.dmel_bins, generator=torch.Generator().manual_seed(1))
    inputs.has_video[1] = True
    inputs.video.uniform_()
    for _ in range(2):  # warm-up
        cache.plan(slots, cfg.tokens_per_tick)
        runner.step(inputs, cache, slots, out)
    with count_tensor_allocations() as report:
        cache.plan(slots, cfg.tokens_per_tick)
        runner.step(inputs, cache, slots, out)
    assert report.count == 0, report.by_op
    f, c = cfg.audio.frames_per_tick, cfg.audio.n_mels
    assert out.text_ids.shape == (slots, f) and out.log_mel.shape == (slots, f, c)
    assert out.turn_logits.shape == (slots, cfg.turn_classes) and out.delegate_logit.shape == (slots, 1)
    assert torch.isfinite(out.log_mel).all() and ((0 <= out.text_ids) & (out.text_ids < cfg.vocab_size)).all()
