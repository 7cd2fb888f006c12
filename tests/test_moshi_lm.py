"""The Moshi LM in microturn's code, measured against the `moshi` package it re-implements.

- parity: greedy tokens equal to LMGen's at every frame and logits within 1e-4, past the
  point where the temporal KV ring wraps (tiny context 40, small 60);
- the seeded checkpoint loads strictly into moshi's LMModel (and Kyutai's fused names load here);
- batch invariance, bitwise: a session alone vs. with 2, 7, 32 and 70 others, joining mid-way
  and moved by a compaction;
- sampling: Gumbel-top-k frequencies match softmax(logits / temp) over the top k; draws depend
  on the seed only;
- a step allocates no tensor; clear errors for a missing tensor and unsupported options.

Runs single-threaded: on a shared 2-core machine OpenMP's second thread turns each tiny matmul
into a wait for a time slice (100x slower), and single-threaded is how the numbers are stable.
"""

from __future__ import annotations

import pytest
import torch

from foreground.engine.allocations import count_tensor_allocations
from foreground.engine.session_slots import SessionSlots
from foreground.moshi.lm import LMConfig, MoshiLM, MoshiStreams, SamplingConfig
from foreground.moshi.lm_config import LMConfigError
from foreground.moshi.presets import lm_preset
from foreground.moshi.sampling import GumbelTopK, StreamSampling, seed_key

TEXT_CARD = 300


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def moshi_lm(preset: str, seed: int):
    from moshi.models import loaders

    torch.manual_seed(seed)
    return loaders.get_moshi_lm(None, lm_kwargs=lm_preset(preset, text_card=TEXT_CARD), dtype=torch.float32)


def user_codes(cfg: LMConfig, frames: int, seed: int, slots: int = 1) -> torch.Tensor:
    """[frames, slots, user streams] codes, with some zero tokens (-1: 'no input')."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, cfg.card, (frames, slots, cfg.user_streams), generator=gen)
    codes[torch.rand(codes.shape, generator=gen) < 0.05] = -1
    return codes


class Outputs:
    """Preallocated outputs of a step for up to n slots."""

    def __init__(self, cfg: LMConfig, n: int) -> None:
        self.text = torch.zeros(n, dtype=torch.int64)
        self.audio = torch.zeros(n, cfg.dep_q, dtype=torch.int64)
        self.valid = torch.zeros(n, dtype=torch.bool)

    def step(self, streams: MoshiStreams, codes: torch.Tensor, **kw) -> None:
        b = codes.shape[0]
        streams.step(codes, self.text[:b], self.audio[:b], self.valid[:b], **kw)


def compare_with_lmgen(ref_lm, state: dict, cfg: LMConfig, frames: int) -> tuple[float, float]:
    """Greedy LMGen vs MoshiStreams on the same user codes; returns the max logit diffs."""
    from moshi.models.lm import LMGen

    captured: dict[str, list] = {}
    forward_text, forward_depformer = ref_lm.forward_text, ref_lm.forward_depformer

    def text_hook(*args, **kwargs):
        out = forward_text(*args, **kwargs)
        captured["text"], captured["audio"] = out[1][:, 0, 0].clone(), []
        return out

    def depformer_hook(*args, **kwargs):
        out = forward_depformer(*args, **kwargs)
        captured["audio"].append(out[:, 0, 0].clone())
        return out

    ref_lm.forward_text, ref_lm.forward_depformer = text_hook, depformer_hook
    gen = LMGen(ref_lm, use_sampling=False)
    streams = MoshiStreams(MoshiLM.from_state_dict(cfg, state), max_slots=1)
    streams.set_sampling(0, SamplingConfig(use_sampling=False))
    out = Outputs(cfg, 1)
    text_diff = audio_diff = 0.0
    with gen.streaming(1):
        for t, codes in enumerate(user_codes(cfg, frames, seed=5)):
            ref = gen.step(codes.unsqueeze(2))
            out.step(streams, codes)
            text_diff = max(text_diff, (streams.text_logits[0] - captured["text"][0]).abs().max().item())
            audio_diff = max(audio_diff, (streams.audio_logits[0] - torch.stack(captured["audio"], 1)[0])
                             .abs().max().item())
            assert bool(out.valid[0]) == (ref is not None), f"frame {t}: validity differs"
            if ref is not None:
                assert out.text[0] == ref[0, 0, 0], f"frame {t}: text token differs"
                assert torch.equal(out.audio[0], ref[0, 1:, 0]), f"frame {t}: audio tokens differ"
    return text_diff, audio_diff


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_greedy_parity_with_lmgen(preset):
    ref = moshi_lm(preset, seed=3)
    cfg = LMConfig.from_kyutai(lm_preset(preset, text_card=TEXT_CARD))
    frames = cfg.context + 24  # the KV ring wraps for the last 24 frames
    text_diff, audio_diff = compare_with_lmgen(ref, ref.state_dict(), cfg, frames)
    assert text_diff <= 1e-4 and audio_diff <= 1e-4, (text_diff, audio_diff)


def test_greedy_parity_with_lmgen_config_variants():
    """Shared depformer weights (a schedule), output biases, a text delay and max_delay 2."""
    from moshi.models import loaders

    kwargs = dict(lm_preset("tiny", text_card=TEXT_CARD), bias_proj=True,
                  depformer_weights_per_step_schedule=[0, 0, 1, 1, 2, 2, 3, 3],
                  delays=[1, 0, 2, 1, 1, 1, 0, 1, 1, 0, 2, 1, 1, 1, 1, 1, 1])
    torch.manual_seed(1)
    ref = loaders.get_moshi_lm(None, lm_kwargs=kwargs, dtype=torch.float32)
    state = ref.state_dict()
    for name, value in state.items():
        if name.endswith(".bias"):
            value.normal_()  # moshi initialises them to 0
    cfg = LMConfig.from_kyutai(kwargs)
    text_diff, audio_diff = compare_with_lmgen(ref, state, cfg, frames=cfg.context + 8)
    assert text_diff <= 1e-4 and audio_diff <= 1e-4, (text_diff, audio_diff)


def test_seeded_state_dict_loads_strictly_into_moshi():
    cfg = LMConfig.from_kyutai(lm_preset("tiny", text_card=TEXT_CARD))
    state = MoshiLM.seeded_state_dict(cfg, seed=7)
    ref = moshi_lm("tiny", seed=0)
    ref.load_state_dict(state, strict=True)
    text_diff, audio_diff = compare_with_lmgen(ref, state, cfg, frames=12)
    assert text_diff <= 1e-4 and audio_diff <= 1e-4, (text_diff, audio_diff)


def test_fused_projection_names_load_like_lmmodel():
    """Kyutai's checkpoints stack each attention's per-step weights (`in_proj_weight`)."""
    cfg = LMConfig.from_kyutai(lm_preset("tiny", text_card=TEXT_CARD))
    state = MoshiLM.seeded_state_dict(cfg, seed=1)
    fused = dict(state)
    prefix = "depformer.layers.0.self_attn."
    for fused_name, name in (("in_proj_weight", "in_projs"), ("out_proj.weight", "out_projs")):
        fused[prefix + fused_name] = torch.cat([fused.pop(f"{prefix}{name}.{i}.weight") for i in range(cfg.dep_q)])
    a, b = MoshiLM.from_state_dict(cfg, state), MoshiLM.from_state_dict(cfg, fused)
    for x, y in zip(a.depformer_layers[0].attention, b.depformer_layers[0].attention, strict=True):
        assert torch.equal(x.in_proj, y.in_proj) and torch.equal(x.out_proj, y.out_proj)


def run_alone(lm: MoshiLM, codes: torch.Tensor, sampling: SamplingConfig) -> list[tuple]:
    streams, out = MoshiStreams(lm, max_slots=1), Outputs(lm.cfg, 1)
    streams.set_sampling(0, sampling)
    record = []
    for frame_codes in codes:
        out.step(streams, frame_codes.view(1, -1))
        record.append(snapshot(streams, out, 0))
    return record


def snapshot(streams: MoshiStreams, out: Outputs, slot: int) -> tuple:
    return (out.text[slot].clone(), out.audio[slot].clone(), out.valid[slot].clone(),
            streams.text_logits[slot].clone(), streams.audio_logits[slot].clone())


def run_batched(lm: MoshiLM, probes: dict, others: int, frames: int) -> dict[str, list[tuple]]:
    """The probes join at tick 2, after half the fillers and before the rest. Tick 5: the
    lowest filler leaves (compaction moves the last live session into its slot). Tick 7: the
    fillers behind the probes leave. Tick 9: the lowest filler leaves again, so a probe (now
    last) moves. Tick 11: new fillers join behind the probes. Each session has its own codes
    and sampling settings."""
    cfg = lm.cfg
    max_slots = others + len(probes) + others // 2
    streams, out = MoshiStreams(lm, max_slots), Outputs(cfg, max_slots)
    slots = SessionSlots(max_slots, [streams])
    codes = {name: c for name, (c, _) in probes.items()}
    sampling = {name: s for name, (_, s) in probes.items()}
    fillers = [f"filler-{i}" for i in range(others + others // 2)]
    for i, name in enumerate(fillers):
        codes[name] = user_codes(cfg, frames + 12, seed=100 + i)[:, 0]
        sampling[name] = SamplingConfig(seed=1000 + i, temp=0.6 + 0.05 * (i % 5), top_k=1 + (i * 7) % 60,
                                        use_sampling=i % 3 != 0)
    half = (others + 1) // 2
    joins = {0: fillers[:half], 2: list(probes), 3: fillers[half:others], 11: fillers[others:]}
    frame_of: dict[str, int] = {}
    record: dict[str, list[tuple]] = {name: [] for name in probes}
    slots_held: dict[str, set[int]] = {name: set() for name in probes}

    def live_fillers() -> list[str]:
        return [r.session_id for r in slots.records() if r.session_id.startswith("filler")]

    def behind_probes() -> list[str]:
        last_probe = max(slots.get(p).slot for p in probes)
        return [r.session_id for r in slots.records()[last_probe + 1:]]

    leaves = {5: lambda: live_fillers()[:1], 7: lambda: behind_probes()[::-1], 9: lambda: live_fillers()[:1]}
    tick = 0
    while any(len(r) < frames for r in record.values()):
        for name in joins.get(tick, []):
            streams.set_sampling(slots.join(name).slot, sampling[name])
            frame_of[name] = 0
        for name in leaves.get(tick, lambda: [])():
            slots.leave(name)
            del frame_of[name]
        live = slots.records()
        batch = torch.stack([codes[r.session_id][frame_of[r.session_id]] for r in live])
        out.step(streams, batch)
        for r in live:
            frame_of[r.session_id] += 1
            if r.session_id in record and len(record[r.session_id]) < frames:
                record[r.session_id].append(snapshot(streams, out, r.slot))
                slots_held[r.session_id].add(r.slot)
        tick += 1
    assert any(len(held) > 1 for held in slots_held.values()), "no probe was moved by a compaction"
    return record


def test_batch_invariance_bitwise():
    cfg = LMConfig.from_kyutai(lm_preset("tiny", text_card=TEXT_CARD))
    lm = MoshiLM.from_state_dict(cfg, MoshiLM.seeded_state_dict(cfg, seed=2))
    frames = cfg.context + 6
    probes = {"probe-sampled": (user_codes(cfg, frames, seed=11)[:, 0], SamplingConfig(seed=11)),
              "probe-greedy": (user_codes(cfg, frames, seed=12)[:, 0], SamplingConfig(use_sampling=False))}
    alone = {name: run_alone(lm, c, s) for name, (c, s) in probes.items()}
    for others in (2, 7, 32, 70):  # 70: past 64 live rows, the matmuls run 3 row tiles, not 2
        batched = run_batched(lm, probes, others, frames)
        for name in probes:
            for frame, (a, b) in enumerate(zip(alone[name], batched[name], strict=True)):
                for what, x, y in zip(("text", "audio", "valid", "text logits", "audio logits"), a, b, strict=True):
                    assert torch.equal(x, y), f"{name} with {others} others, frame {frame}: {what} differs"


def test_gumbel_top_k_frequencies_follow_softmax():
    vocab, top_k, temp, draws = 12, 5, 0.8, 8192
    logits = torch.linspace(-1.0, 1.5, vocab)[torch.randperm(vocab, generator=torch.Generator().manual_seed(0))]
    sampler, params = GumbelTopK(draws, vocab, max_top_k=8), StreamSampling(draws, vocab, max_top_k=8)
    for row in range(draws):
        params.set(row, use_sampling=True, temperature=temp, top_k=top_k)
    seeds = torch.tensor([seed_key(s) for s in range(draws)])
    tokens = torch.zeros(draws, dtype=torch.int64)
    sampler.sample(logits.expand(draws, vocab).contiguous(), params, seeds, torch.full((draws,), 3), 1, tokens)
    kept = logits.topk(top_k).indices
    expected = torch.zeros(vocab)
    expected[kept] = torch.softmax(logits[kept] / temp, dim=0)
    freq = torch.bincount(tokens, minlength=vocab).float() / draws
    assert (freq - expected).abs().max() < 0.02, (freq, expected)
    assert freq[expected == 0].sum() == 0  # nothing outside the top k
    # The same over steps of one session, and greedy rows take the argmax.
    params.set(0, use_sampling=False, temperature=temp, top_k=top_k)
    greedy = torch.zeros(1, dtype=torch.int64)
    sampler.sample(logits.view(1, -1), params, seeds[:1], torch.zeros(1, dtype=torch.int64), 0, greedy)
    assert greedy.item() == logits.argmax().item()
    params.set(0, use_sampling=True, temperature=temp, top_k=top_k)
    over_steps = torch.zeros(vocab)
    for step in range(2000):
        sampler.sample(logits.view(1, -1), params, seeds[:1], torch.tensor([step]), 0, greedy)
        over_steps[greedy.item()] += 1
    assert (over_steps / 2000 - expected).abs().max() < 0.04


def test_sampling_depends_on_seed_only():
    cfg = LMConfig.from_kyutai(lm_preset("tiny", text_card=TEXT_CARD))
    lm = MoshiLM.from_state_dict(cfg, MoshiLM.seeded_state_dict(cfg, seed=4))
    codes = user_codes(cfg, 16, seed=9)[:, 0]
    a = run_alone(lm, codes, SamplingConfig(seed=21))
    b = run_alone(lm, codes, SamplingConfig(seed=21))
    c = run_alone(lm, codes, SamplingConfig(seed=22))

    def tokens(record: list[tuple]) -> list[tuple]:
        return [(int(text), audio.tolist()) for text, audio, *_ in record]

    assert tokens(a) == tokens(b)
    assert tokens(a) != tokens(c)
    assert len({text for text, _ in tokens(a)[1:]}) > 5  # a spread of text tokens, not one mode


def test_step_allocates_nothing():
    cfg = LMConfig.from_kyutai(lm_preset("small", text_card=TEXT_CARD))
    lm = MoshiLM.from_state_dict(cfg, MoshiLM.seeded_state_dict(cfg, seed=0))
    streams, out = MoshiStreams(lm, max_slots=5), Outputs(cfg, 5)
    for slot in range(5):
        streams.set_sampling(slot, SamplingConfig(seed=slot, use_sampling=slot != 1))
    codes = user_codes(cfg, 3, seed=1, slots=3)
    forced = torch.tensor([-1, 7, -1])
    out.step(streams, codes[0], forced_text=forced)
    with count_tensor_allocations() as report:
        out.step(streams, codes[1], forced_text=forced)
        out.step(streams, codes[2])
    assert report.count == 0, dict(report.by_op)
    assert out.text[1] == 7  # the frame out of step 2 carries step 1's text (text leads audio by 1)


def test_bfloat16_loads_and_runs():
    cfg = LMConfig.from_kyutai(lm_preset("tiny", text_card=TEXT_CARD))
    state = MoshiLM.seeded_state_dict(cfg, seed=0)
    lm16, lm32 = MoshiLM.from_state_dict(cfg, state, dtype=torch.bfloat16), MoshiLM.from_state_dict(cfg, state)
    s16, s32 = MoshiStreams(lm16, 2), MoshiStreams(lm32, 2)
    out16, out32 = Outputs(cfg, 2), Outputs(cfg, 2)
    for codes in user_codes(cfg, 4, seed=3, slots=2):
        out16.step(s16, codes)
        out32.step(s32, codes)
    assert s16.text_logits.dtype == torch.float32
    assert ((s16.text_logits - s32.text_logits).abs().max() < 0.5)
    assert out16.valid.all() and ((out16.audio >= 0) & (out16.audio < cfg.card)).all()


def test_missing_or_misshapen_tensor_is_named():
    cfg = LMConfig.from_kyutai(lm_preset("tiny", text_card=TEXT_CARD))
    state = MoshiLM.seeded_state_dict(cfg, seed=0)
    missing = {k: v for k, v in state.items() if k != "depformer_in.3.weight"}
    with pytest.raises(ValueError, match=r"missing tensor 'depformer_in\.3\.weight'"):
        MoshiLM.from_state_dict(cfg, missing)
    wrong = dict(state, **{"linears.2.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=r"'linears\.2\.weight' has shape \[3, 3\]"):
        MoshiLM.from_state_dict(cfg, wrong)


@pytest.mark.parametrize("key, value", [("lora", True), ("conditioners", {"x": {}}), ("quantize", True),
                                        ("demux_second_text_stream", True), ("norm", "layer_norm"),
                                        ("gating", "gelu"), ("depformer_gating", "none"), ("fuser", {"sum": []}),
                                        ("some_new_option", 1)])
def test_unsupported_config_key_is_named(key, value):
    with pytest.raises(LMConfigError, match=repr(key)):
        LMConfig.from_kyutai(dict(lm_preset("tiny"), **{key: value}))


def test_default_config_is_moshi_7b():
    cfg = LMConfig.from_kyutai(None)
    assert (cfg.dim, cfg.num_layers, cfg.context, cfg.n_q, cfg.dep_q, cfg.max_delay) == (4096, 32, 3000, 16, 8, 1)
    assert cfg.depformer_dim_feedforward == (int(4.125 * 1024),) * 8
