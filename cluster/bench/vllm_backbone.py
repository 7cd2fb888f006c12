"""The vLLM side of `microturn bench compare`: our checkpoint folder served by vLLM, each
session's 200 ms chunk sent as an appended request.

How vLLM is driven, and why this way gives it its best here:
- `vllm.LLM` (synchronous) with one `generate()` call per tick holding all B sessions'
  requests: every request is queued before the call starts stepping the engine, so the
  scheduler can batch them into one forward; no asyncio layer in between (`AsyncLLM` adds one
  per request and batches no better).
- Each request's prompt is the session's whole history of token ids plus the tick's 12 new
  ids, `max_tokens=1`, greedy, `detokenize=False` (nobody reads the text). Prefix caching is
  on with `block_size` 32 (it reuses whole blocks only: each tick recomputes the new ids plus
  the partly filled last block, < 32 tokens).
- Histories grow for the whole run (no windowing: dropping old tokens would change every
  prompt's prefix and defeat the cache), so `max_model_len` is sized to warm-up + timed ticks.
- Eager mode by default (init ~25 s; torch.compile adds ~40 s and was no faster in a probe
  here: 148 vs 137 ms p50 at 32 sessions, both within the noise of the shared cores).
- vLLM's own CPU binding (`VLLM_CPU_OMP_THREADS_BIND=auto`): it computes on one core and
  leaves the other to its busy-polling scheduler process. Binding the worker to both cores
  (`0-1`) oversubscribes them (two OpenMP threads plus the scheduler) and was worse: at 32
  sessions 121-214 ms p50 with spikes past 1 s, against 106-119 ms with `auto` (two runs
  each, alternating, load 3.6-5.5). An operator's `VLLM_CPU_OMP_THREADS_BIND` still wins.

vLLM starts an engine-core process and a worker process (spawned; callers need the
`if __name__ == "__main__":` guard). `close()` shuts them down and waits until both are gone.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch

log = logging.getLogger(__name__)

BLOCK_SIZE = 32  # prefix caching reuses whole blocks; CPU attention wants multiples of 32
EXIT_WAIT_S = 30.0


@dataclass
class VllmTick:
    """One tick: wall time of the batched call and what the prefix cache saved."""

    ms: float
    prompt_tokens: int
    cached_tokens: int


@dataclass
class VllmBackbone:
    """A vLLM engine on a checkpoint folder, started by `start()` and ended by `close()`."""

    checkpoint: Path
    max_sessions: int
    max_model_len: int
    tokens_per_tick: int
    compile: bool = False
    seed: int = 0
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "microturn")
    start_s: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    _llm: Any = None
    _params: Any = None
    _pids: set[int] = field(default_factory=set)

    def start(self) -> None:
        # setdefault: an operator's values win; the engine core inherits these when spawned.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("VLLM_CACHE_ROOT", str(self.cache_dir / "vllm"))
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.cache_dir / "torchinductor"))
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        from vllm import LLM, SamplingParams
        from vllm import __version__ as vllm_version

        # Enough batched tokens that a whole tick is one engine step: B x (new ids + the
        # partly filled block recomputed), and whole prompts when nothing is cached yet.
        batched = max(2048, self.max_sessions * (self.tokens_per_tick + BLOCK_SIZE), self.max_model_len)
        self.settings = {
            "vllm_version": vllm_version, "driver": "LLM.generate, all sessions' requests in one call",
            "block_size": BLOCK_SIZE, "enable_prefix_caching": True, "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_sessions, "max_num_batched_tokens": batched,
            "enforce_eager": not self.compile, "dtype": "float32", "max_tokens": 1,
            "omp_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
            "kv_cache_gib": os.environ["VLLM_CPU_KVCACHE_SPACE"],
        }
        before = _children()
        started = time.perf_counter()
        log.info("vllm: starting the engine on %s (%s)", self.checkpoint,
                 "torch.compile" if self.compile else "eager")
        try:
            self._llm = LLM(model=str(self.checkpoint), dtype="float32", max_model_len=self.max_model_len,
                            enforce_eager=not self.compile, block_size=BLOCK_SIZE, enable_prefix_caching=True,
                            max_num_seqs=self.max_sessions, max_num_batched_tokens=batched, seed=self.seed,
                            disable_log_stats=True)
        finally:
            self._pids = {p.pid for p in _children() - before if not _is_resource_tracker(p)}
        self.start_s = time.perf_counter() - started
        self._params = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
        log.info("vllm: engine ready in %.1f s (processes %s)", self.start_s, sorted(self._pids))

    def tick(self, histories: list[list[int]]) -> VllmTick:
        """Send every history as one request (the caller has appended the tick's ids)."""
        prompts = [{"prompt_token_ids": history} for history in histories]
        started = time.perf_counter()
        outputs = self._llm.generate(prompts, self._params, use_tqdm=False)
        ms = (time.perf_counter() - started) * 1000
        if any(len(o.outputs[0].token_ids) != 1 for o in outputs):
            raise RuntimeError("vllm: a request did not return exactly one token")
        return VllmTick(ms, sum(len(h) for h in histories), sum(o.num_cached_tokens or 0 for o in outputs))

    def greedy_next(self, history: list[int]) -> int:
        """The greedy next id for one prompt (to check vLLM runs the same weights as we do)."""
        (out,) = self._llm.generate([{"prompt_token_ids": history}], self._params, use_tqdm=False)
        return out.outputs[0].token_ids[0]

    def reset_prefix_cache(self) -> None:
        """Forget every cached block: timed sessions start cold, as microturn's slots do."""
        self._llm.reset_prefix_cache()

    def close(self) -> list[int]:
        """Shut the engine down; returns the pids of its processes still alive (should be [])."""
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()
        alive = _wait_gone(self._pids, EXIT_WAIT_S)
        for proc in alive:  # only processes this engine started, by pid
            log.warning("vllm: process %d still alive %.0f s after shutdown: killing it", proc.pid, EXIT_WAIT_S)
            proc.kill()
        left = [p.pid for p in _wait_gone({p.pid for p in alive}, 5.0)]
        log.info("vllm: engine shut down (%d processes ended)", len(self._pids))
        return left


def seeded_ids(count: int, gen: torch.Generator, vocab: int = 256) -> list[int]:
    return torch.randint(0, vocab, (count,), generator=gen).tolist()


def _children() -> set[psutil.Process]:
    return set(psutil.Process().children(recursive=True))


def _is_resource_tracker(process: psutil.Process) -> bool:
    """multiprocessing's spawn starts one tracker per parent; it lives as long as the parent."""
    try:
        return any("resource_tracker" in part for part in process.cmdline())
    except psutil.Error:
        return False


def _wait_gone(pids: set[int], timeout: float) -> list[psutil.Process]:
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return psutil.wait_procs(procs, timeout=timeout)[1]
