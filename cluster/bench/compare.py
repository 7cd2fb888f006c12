"""`microturn bench compare`: the same backbone weights served two ways, same run, same machine.

(a) microturn: B sessions in one `TickScheduler`, one batched `tick()` per 200 ms chunk, ticks
    back to back (as `bench tick` drives it, default invariant kernels). The tick is the whole
    interaction model: featuriser, VAD, embeddings, backbone, heads (text, flow-matching audio,
    turn, delegate, end-of-turn detector), turn policy and vocoder, 12 tokens per session.
    The model step (`runner.step`) and the backbone alone are timed inside the same ticks.
(b) vLLM on the same checkpoint folder (`vllm_backbone.py`, in a process of its own): per
    tick, every session's whole history plus the tick's 12 new seeded-random ids as one request,
    `max_tokens=1`, prefix caching on, one engine forward for all of them. That is backbone + LM
    head for the uncached tokens plus vLLM's input processing, scheduling and sampling: no
    audio, no heads beyond the LM head. Each session count first runs one throwaway cycle of
    batch shapes on other ids (vLLM's CPU kernels pay once per new shape), then starts from an
    empty prefix cache.

Each side's floor (its matmul FLOPs at the matmul rate measured in the same process) goes
with the times, so that the ratio can be read against what each side must compute: microturn
the whole interaction model over a 256-entry window, vLLM the decoder over the uncached tokens.

The sides take turns every 5 ticks, so both see the same minutes of load from other jobs on
the shared cores (run one after the other, a busy minute landed on one side only and moved the
ratio tenfold). Both sides compute on one thread by default (see NOTES["threads"] for why).
After the timed ticks, each side's matrix products are replayed alone (microturn's) and each
side is profiled op by op over a few more ticks (`op_profile`; vLLM's in its own process):
`profile` says where each side's tick goes, side by side.
microturn's cache is 4 sinks + a 252-entry ring, and it attends over all of it every tick;
vLLM's histories grow instead (windowing them would defeat the prefix cache). With the
default 5 warm-up + 30 timed ticks, vLLM's timed contexts run from 72 to 420 tokens, 246 on
average: about the size of microturn's cache.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cluster.bench.gemm_replay import record_matmuls, replay
from cluster.bench.op_profile import profile_ticks
from cluster.bench.tick import synthetic_chunks
from cluster.bench.tick_floor import matmul_rate_gflops, tick_flops
from cluster.bench.vllm_backbone import BLOCK_SIZE, VllmBackbone, seeded_ids
from foreground.engine.percentiles import percentile
from foreground.engine.tick_scheduler import TickScheduler
from foreground.model.family import ReferenceFamily
from foreground.engine.turn_policy import TurnPolicyConfig
from foreground.model.checkpoint import ensure_seeded_checkpoint, load_checkpoint
from foreground.model.config import ModelConfig
from foreground.model.interaction_model import InteractionModel
from foreground.model.tick_flops import prefill_flops

log = logging.getLogger(__name__)

WARMUP_TICKS = 5
ROUND_TICKS = 5  # the sides take turns every this many ticks
REPLAY_TICKS = 3  # microturn ticks whose matrix products are replayed alone (after the timed ones)
PROFILE_TICKS = 3  # ticks of each side profiled op by op (after the timed ones)
TARGET_RATIO = 2.0  # DESIGN.md §6: microturn's tick >= 2x faster than vLLM's at 32 sessions

NOTES = {
    "microturn_tick": "TickScheduler.tick(): the whole interaction model per session and tick "
                      "(dMel featuriser, VAD, embeddings of 4 video patches + 2 text + 5 audio "
                      "frames + 1 act token, 4-layer MoE backbone over a 256-entry cache, text / "
                      "flow-matching audio / turn / delegate heads, end-of-turn detector, turn "
                      "policy, vocoder), one batched forward for all sessions, invariant kernels",
    "microturn_model_step": "runner.step() inside the same ticks: embeddings, backbone, heads, detector",
    "microturn_backbone": "the decoder stack alone inside the same ticks (no embeddings, no heads)",
    "vllm_tick": "one LLM.generate() with every session's history + 12 new ids, max_tokens=1: "
                 "backbone + LM head on the uncached tokens (the 12 new ones and the partly filled "
                 "last block), plus vLLM's input processing, scheduling and sampling; no audio, "
                 "vision or interaction heads",
    "histories": "vLLM histories grow for the whole run (no window), microturn's cache is 4 sinks + "
                 "252 ring entries; see vllm_context_tokens_mean",
    "order": "the sides take turns every 5 timed ticks, so both see the same load from other jobs; "
             "load_average has it",
    "vllm_forwards_per_tick": "engine steps that ran the model in a tick: 1 when the scheduler "
                              "batched every session's request into one forward, as microturn does",
    "profile": f"{PROFILE_TICKS} ticks of each side after the timed ones under torch.profiler (in vLLM's "
               "process for vLLM): every op's own CPU time per tick, the matrix products among it "
               "(ATen's and vLLM's oneDNN linears; vLLM's fused MoE and attention kernels hold their "
               "products inside) and the largest ops. The profiler slows small ops: read the split, "
               "not the wall time",
    "vllm_tick_ms_p50_only_new_tokens": "p50 over the ticks where every history was block-aligned, "
                                        "so vLLM computed just the 12 new ids per session, as microturn "
                                        "does (1 tick in 8; see vllm_ticks_only_new_tokens)",
    "threads": "microturn_threads torch threads each side, 1 by default: vLLM's host process (its "
               "engine core in it, no scheduler process) computes on as many (vllm.compute_threads); "
               "2 threads on these shared, oversubscribed cores once gave microturn p50 167-1617 ms "
               "and multi-second p99 at 32 sessions, 1 thread 71-79 ms",
    "ratio": "vLLM / microturn, > 1 means microturn is faster",
    "floors": "each side's matmul FLOPs per tick at the matmul rate measured in this process on "
              "microturn_threads threads (matmul_gflops; vLLM computes on as many): microturn's "
              "as bench tick counts them, vLLM's for the tokens it computed (decoder over the uncached "
              "tokens, each attending to its whole history, and the LM head for the sampled position). "
              "ratio_at_microturn_floor = vLLM p50 / microturn's floor: the most a microturn tick with "
              "no time over its floor would reach against this vLLM",
    "gemm_replay": "microturn_gemm_replay_ms: the matrix products of microturn's tick (recorded over "
                   f"{REPLAY_TICKS} ticks after the timed ones), each run alone at its shape on microturn_threads "
                   "threads (bench tick's gemm_replay_ms): no microturn tick with these kernels takes "
                   "less. ratio_at_microturn_gemm_replay = vLLM p50 / that: the most microturn could "
                   "reach against this vLLM if its tick ran nothing but its products",
}


def run_compare(sessions: Sequence[int], ticks: int, preset: str = "tiny", checkpoint: Path | None = None,
                warmup: int = WARMUP_TICKS, seed: int = 0, vllm_compile: bool = False,
                microturn_threads: int = 1) -> dict[str, Any]:
    """Both sides for every session count; one result dict (the JSON the CLI prints)."""
    if not sessions or min(sessions) < 1 or ticks < 1 or warmup < 0 or microturn_threads < 1:
        raise ValueError("bench compare: --sessions must be counts >= 1, --ticks and --microturn-threads >= 1")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(microturn_threads)
    try:
        return _compare(sessions, ticks, preset, checkpoint, warmup, seed, vllm_compile)
    finally:
        torch.set_num_threads(threads_before)


def _compare(sessions: Sequence[int], ticks: int, preset: str, checkpoint: Path | None, warmup: int,
             seed: int, vllm_compile: bool) -> dict[str, Any]:
    folder = Path(checkpoint or ensure_seeded_checkpoint(preset))
    load = {"start": _load()}
    model = load_checkpoint(folder)
    tpt = model.cfg.tokens_per_tick
    probe = _greedy_probe(model, seed)
    max_model_len = _round_up(tpt * (warmup + ticks + PROFILE_TICKS) + 1, BLOCK_SIZE)
    engine = VllmBackbone(folder, max(sessions), max_model_len, tpt, compile=vllm_compile, seed=seed,
                          compute_threads=torch.get_num_threads())
    results = []
    try:
        engine.start()
        load["vllm_started"] = _load()
        same_weights = engine.greedy_next(probe["ids"]) == probe["next"]
        for b in sessions:
            ours, theirs = _MicroturnRun(model, b), _VllmRun(engine, b, tpt, seed, model.cfg)
            theirs.warm(warmup)
            ours.run(warmup, timed=False)
            for done in range(0, ticks, ROUND_TICKS):  # the same minutes of shared-core load for both
                n = min(ROUND_TICKS, ticks - done)
                ours.run(n)
                theirs.run(n)
            floors = _Floors(matmul_rate_gflops(), sum(tick_flops(ours.engine, b).values()))
            products = replay(record_matmuls(lambda: ours.run(1, timed=False), REPLAY_TICKS))
            results.append(_row(b, ours.ms, theirs.ms, tpt, floors, products.replay_ms))
            results[-1]["profile"] = _profiles(ours, theirs)
            log.info("%d sessions: microturn tick p50 %.1f ms (backbone %.1f), vllm %.1f ms: ratio %.2f", b,
                     results[-1]["microturn_tick_ms_p50"], results[-1]["microturn_backbone_ms_p50"],
                     results[-1]["vllm_tick_ms_p50"], results[-1]["ratio_p50"])
            load[f"after_{b}_sessions"] = _load()
    finally:
        left = engine.close()
    return {
        "bench": "compare",
        "preset": preset,
        "checkpoint": str(folder),
        "sessions": list(sessions),
        "ticks": ticks,
        "warmup_ticks": warmup,
        "tokens_per_session_per_tick": tpt,
        "microturn_threads": torch.get_num_threads(),
        "results": results,
        "target": _target(results),
        "vllm_greedy_check": {"same_next_token_as_microturn_backbone": same_weights,
                              "microturn_top2_logit_margin": round(probe["margin"], 4)},
        "vllm_engine_start_s": round(engine.start_s, 1),
        "vllm": engine.settings,
        "vllm_processes_left": left,
        "load_average": load,
        "cpu_count": os.cpu_count(),
        "notes": NOTES,
    }


def _profiles(ours: _MicroturnRun, theirs: _VllmRun) -> dict[str, Any]:
    """Each side op by op over PROFILE_TICKS more ticks (vLLM's in its own process)."""
    mine = profile_ticks(lambda n: ours.run(n, timed=False), PROFILE_TICKS)
    theirs.engine.start_profile()
    theirs.run(PROFILE_TICKS, timed=False)
    return {"microturn": mine.to_json(), "vllm": theirs.engine.stop_profile(PROFILE_TICKS).to_json()}


class _MicroturnRun:
    """`bench tick`'s drive (seeded speech-level chunks, ticks back to back), with the model
    step and the backbone timed inside each tick by wrapping them on this engine only."""

    def __init__(self, model: InteractionModel, sessions: int) -> None:
        self.engine = TickScheduler(ReferenceFamily(model), max_slots=sessions, turn=TurnPolicyConfig(policy="hybrid"))
        self.names = [f"compare-{i}" for i in range(sessions)]
        for i, name in enumerate(self.names):
            self.engine.join(name, seed=i)
        self.chunks = synthetic_chunks(sessions, model.cfg.audio.input_samples_per_tick, seed=0)
        self.ms: dict[str, list[float]] = {"tick": [], "model_step": [], "backbone": []}
        self._inner: dict[str, list[float]] = {"model_step": [], "backbone": []}
        runner = self.engine.family.runner
        runner.step = _timed(runner.step, self._inner["model_step"])
        runner.backbone.step = _timed(runner.backbone.step, self._inner["backbone"])

    def run(self, ticks: int, timed: bool = True) -> None:
        for _ in range(ticks):
            for name, chunk in zip(self.names, self.chunks, strict=True):
                self.engine.submit_audio(name, chunk)
            for sink in self._inner.values():
                sink.clear()
            started = time.perf_counter()
            outputs = self.engine.tick()
            elapsed = (time.perf_counter() - started) * 1000
            if len(outputs) != len(self.names):
                raise RuntimeError(f"microturn: a tick gave {len(outputs)} outputs for {len(self.names)} sessions")
            if timed:
                self.ms["tick"].append(elapsed)
                for key, sink in self._inner.items():
                    self.ms[key].append(sink[0])


class _VllmRun:
    """Each tick appends 12 seeded-random ids to every session's history and sends them all."""

    def __init__(self, engine: VllmBackbone, sessions: int, tpt: int, seed: int, cfg: ModelConfig) -> None:
        self.engine, self.sessions, self.tpt, self.seed, self.cfg = engine, sessions, tpt, seed, cfg
        self.gens = [torch.Generator().manual_seed(seed * 1_000_003 + sessions * 1_000 + i)
                     for i in range(sessions)]
        self.histories: list[list[int]] = [[] for _ in range(sessions)]
        self.ms: dict[str, list[float]] = {"tick": [], "context": [], "cached": [], "computed": [], "flops": [],
                                           "forwards": []}

    def warm(self, warmup: int) -> None:
        """A throwaway pass over one cycle of batch shapes (the uncached token count repeats
        every lcm(12, block)/12 ticks) on other ids, so that first-seen-shape costs of vLLM's
        CPU kernels stay out of the timed ticks; then an empty prefix cache and `warmup` ticks
        of the sessions' own histories."""
        throwaway = [torch.Generator().manual_seed(2**40 + self.seed * 1_000 + i) for i in range(self.sessions)]
        histories: list[list[int]] = [[] for _ in range(self.sessions)]
        for _ in range(math.lcm(self.tpt, BLOCK_SIZE) // self.tpt):
            if len(histories[0]) + self.tpt >= self.engine.max_model_len:
                break
            for history, gen in zip(histories, throwaway, strict=True):
                history.extend(seeded_ids(self.tpt, gen))
            self.engine.tick(histories)
        self.engine.reset_prefix_cache()
        self.run(warmup, timed=False)

    def run(self, ticks: int, timed: bool = True) -> None:
        for _ in range(ticks):
            for history, gen in zip(self.histories, self.gens, strict=True):
                history.extend(seeded_ids(self.tpt, gen))
            tick = self.engine.tick(self.histories)
            if timed:
                self.ms["tick"].append(tick.ms)
                self.ms["forwards"].append(tick.forwards)
                self.ms["context"].append(tick.prompt_tokens / self.sessions)
                self.ms["cached"].append(tick.cached_tokens / tick.prompt_tokens)
                computed = (tick.prompt_tokens - tick.cached_tokens) / self.sessions
                self.ms["computed"].append(computed)
                # Every history has the same length, so every session computed the same count.
                self.ms["flops"].append(self.sessions * prefill_flops(self.cfg, round(computed),
                                                                      len(self.histories[0])))


def _greedy_probe(model: InteractionModel, seed: int) -> dict[str, Any]:
    """A text-only prompt and our backbone's greedy next id, to check that vLLM runs the very
    same weights: one prefill of our streaming backbone (as tests/test_model.py does it)."""
    from foreground.model.kv_ring import RingKVCache
    from foreground.kernels import rms_norm
    from foreground.model.backbone import Backbone, BackboneWorkspace

    cfg, ids = model.cfg, seeded_ids(48, torch.Generator().manual_seed(seed + 7))
    t = len(ids)
    backbone, ws, cache = Backbone(cfg, model.model), BackboneWorkspace(cfg, 1, t), RingKVCache(cfg, 1, t)
    with torch.inference_mode():
        cache.plan(1, t)
        ws.hidden[:t].copy_(model.model.embed_tokens.weight[torch.tensor(ids)])
        x = backbone.step(ws, cache, 1)
        normed = rms_norm(x, model.model.norm.weight, cfg.rms_norm_eps, torch.empty_like(x), torch.empty(t, 1))
        logits = normed[-1] @ model.lm_head.weight.T
    top2 = torch.topk(logits, 2).values
    return {"ids": ids, "next": int(logits.argmax()), "margin": float(top2[0] - top2[1])}


def _timed(fn: Callable[..., Any], sink: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            sink.append((time.perf_counter() - started) * 1000)
    return wrapper


@dataclass(frozen=True)
class _Floors:
    """The matmul rate measured after a session count's ticks, and microturn's tick FLOPs."""

    gflops: float
    microturn_flops: int

    def ms(self, flops: float) -> float:
        return flops / self.gflops / 1e6


def _row(b: int, mt: dict[str, list[float]], vl: dict[str, list[float]], tpt: int,
         floors: _Floors, gemm_replay_ms: float) -> dict[str, Any]:
    def p(values: list[float], q: float) -> float:
        return round(percentile(values, q), 2)

    row = {
        "sessions": b,
        "microturn_tick_ms_p50": p(mt["tick"], 50), "microturn_tick_ms_p99": p(mt["tick"], 99),
        "microturn_model_step_ms_p50": p(mt["model_step"], 50),
        "microturn_backbone_ms_p50": p(mt["backbone"], 50), "microturn_backbone_ms_p99": p(mt["backbone"], 99),
        "vllm_tick_ms_p50": p(vl["tick"], 50), "vllm_tick_ms_p99": p(vl["tick"], 99),
        "vllm_tick_ms_min": round(min(vl["tick"]), 2), "microturn_tick_ms_min": round(min(mt["tick"]), 2),
    }
    row["ratio_p50"] = round(row["vllm_tick_ms_p50"] / row["microturn_tick_ms_p50"], 2)
    row["ratio_p99"] = round(row["vllm_tick_ms_p99"] / row["microturn_tick_ms_p99"], 2)
    row["ratio_vs_backbone_p50"] = round(row["vllm_tick_ms_p50"] / row["microturn_backbone_ms_p50"], 2)
    row["vllm_context_tokens_mean"] = round(sum(vl["context"]) / len(vl["context"]), 1)
    row["vllm_computed_tokens_per_session_mean"] = round(sum(vl["computed"]) / len(vl["computed"]), 1)
    row["vllm_prefix_cached_fraction"] = round(sum(vl["cached"]) / len(vl["cached"]), 3)
    row["vllm_forwards_per_tick"] = round(sum(vl["forwards"]) / len(vl["forwards"]), 2)
    aligned = [ms for ms, new in zip(vl["tick"], vl["computed"], strict=True) if new <= tpt]
    row["vllm_tick_ms_p50_only_new_tokens"] = p(aligned, 50) if aligned else None
    row["vllm_ticks_only_new_tokens"] = len(aligned)
    mt_floor, vl_floor = floors.ms(floors.microturn_flops), floors.ms(percentile(vl["flops"], 50))
    row.update({
        "matmul_gflops": round(floors.gflops, 1),
        "microturn_flop_floor_ms": round(mt_floor, 2),
        "microturn_floor_ratio": round(row["microturn_tick_ms_p50"] / mt_floor, 2),
        "vllm_flop_floor_ms": round(vl_floor, 2),
        "vllm_floor_ratio": round(row["vllm_tick_ms_p50"] / vl_floor, 2),
        "ratio_at_microturn_floor": round(row["vllm_tick_ms_p50"] / mt_floor, 2),
        "microturn_gemm_replay_ms": round(gemm_replay_ms, 2),
        "ratio_at_microturn_gemm_replay": round(row["vllm_tick_ms_p50"] / gemm_replay_ms, 2),
    })
    return row


def _target(results: list[dict[str, Any]]) -> dict[str, Any]:
    at32 = next((r for r in results if r["sessions"] == 32), None)
    return {"sessions": 32, "ratio_p50_at_least": TARGET_RATIO,
            "met": None if at32 is None else at32["ratio_p50"] >= TARGET_RATIO}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
