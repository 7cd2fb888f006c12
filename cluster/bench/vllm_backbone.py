"""The vLLM side of `microturn bench compare`: our checkpoint folder served by vLLM, each
session's 200 ms chunk sent as an appended request.

How vLLM is driven, and why this way gives it its best here:
- `vllm.LLM` (synchronous) with one `generate()` call per tick holding all B sessions'
  requests, its engine core in the same process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so that
  `generate()` queues every request before it takes the first engine step: one forward per tick
  over all sessions (`forwards_per_tick` counts them). With the engine core in its own process
  (vLLM's default), it started stepping as soon as the first requests of a tick arrived, and a
  32-session tick took 2-3 forwards (12 for 5 ticks in a profile here, from 1 to 31 requests
  each), at 192 ms of op time a tick against 127 for one forward.
- The engine lives in a process of its own (`_host`, spawned), not in the bench's: vLLM's CPU
  worker binds its process's OpenMP threads and replaces `torch.set_num_threads` with a no-op,
  which would take microturn's thread count out of the bench's hands. Ticks are timed in that
  process, around `generate()`; the pipe to it is not counted.
- Each request's prompt is the session's whole history of token ids plus the tick's 12 new
  ids, `max_tokens=1`, greedy, `detokenize=False` (nobody reads the text). Prefix caching is
  on with `block_size` 32 (it reuses whole blocks only: each tick recomputes the new ids plus
  the partly filled last block, < 32 tokens).
- Histories grow for the whole run (no windowing: dropping old tokens would change every
  prompt's prefix and defeat the cache), so `max_model_len` is sized to warm-up + timed ticks.
- Eager mode by default (init ~25 s; torch.compile adds ~40 s and was no faster in a probe
  here: 148 vs 137 ms p50 at 32 sessions, both within the noise of the shared cores).
- vLLM computes on `compute_threads` torch threads, as many as microturn's side, set in the
  host before vLLM starts. (`VLLM_CPU_OMP_THREADS_BIND` binds the worker processes of vLLM's
  multiprocess executor only; with the engine core in the host, torch's default, every core,
  would apply: 2 here, against microturn's 1.) `settings["compute_threads"]` is what the host
  computed on.

Callers need the `if __name__ == "__main__":` guard (the host is spawned). `close()` ends the
host and waits until it is gone.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch

from cluster.bench.op_profile import OpProfiler, TickProfile

log = logging.getLogger(__name__)

BLOCK_SIZE = 32  # prefix caching reuses whole blocks; CPU attention wants multiples of 32
START_TIMEOUT_S = 600.0
CALL_TIMEOUT_S = 300.0
EXIT_WAIT_S = 30.0


@dataclass
class VllmTick:
    """One tick: wall time of the batched call, what the prefix cache saved, engine forwards."""

    ms: float
    prompt_tokens: int
    cached_tokens: int
    forwards: int


@dataclass
class VllmBackbone:
    """A vLLM engine on a checkpoint folder, in a process of its own, started by `start()`
    and ended by `close()`."""

    checkpoint: Path
    max_sessions: int
    max_model_len: int
    tokens_per_tick: int
    compile: bool = False
    seed: int = 0
    compute_threads: int = 1
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "microturn")
    start_s: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    _conn: Any = None
    _process: Any = None

    def start(self) -> None:
        # setdefault: an operator's values win; the host process inherits these.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("VLLM_CACHE_ROOT", str(self.cache_dir / "vllm"))
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.cache_dir / "torchinductor"))
        # Enough batched tokens that a whole tick is one engine step: B x (new ids + the
        # partly filled block recomputed), and whole prompts when nothing is cached yet.
        batched = max(2048, self.max_sessions * (self.tokens_per_tick + BLOCK_SIZE), self.max_model_len)
        llm_args = dict(model=str(self.checkpoint), dtype="float32", max_model_len=self.max_model_len,
                        enforce_eager=not self.compile, block_size=BLOCK_SIZE, enable_prefix_caching=True,
                        max_num_seqs=self.max_sessions, max_num_batched_tokens=batched, seed=self.seed,
                        disable_log_stats=True)
        started = time.perf_counter()
        log.info("vllm: starting the engine on %s (%s)", self.checkpoint,
                 "torch.compile" if self.compile else "eager")
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_host, args=(child, llm_args, self.compute_threads),
                                        name="vllm-host")  # not a daemon: vLLM may start helpers
        self._process.start()
        child.close()
        host = self._call("ready", timeout=START_TIMEOUT_S)
        self.start_s = time.perf_counter() - started
        self.settings = {
            "vllm_version": host["vllm_version"], "driver": "LLM.generate, all sessions' requests in one call, "
            "engine core in the same process (VLLM_ENABLE_V1_MULTIPROCESSING=0)",
            "block_size": BLOCK_SIZE, "enable_prefix_caching": True, "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_sessions, "max_num_batched_tokens": batched,
            "enforce_eager": not self.compile, "dtype": "float32", "max_tokens": 1,
            "compute_threads": host["threads"], "kv_cache_gib": os.environ["VLLM_CPU_KVCACHE_SPACE"],
        }
        log.info("vllm: engine ready in %.1f s (process %d, %d compute threads)", self.start_s,
                 self._process.pid, host["threads"])

    def tick(self, histories: list[list[int]]) -> VllmTick:
        """Send every history as one request (the caller has appended the tick's ids)."""
        return VllmTick(**self._call("tick", histories))

    def greedy_next(self, history: list[int]) -> int:
        """The greedy next id for one prompt (to check vLLM runs the same weights as we do)."""
        return self._call("greedy_next", history)

    def reset_prefix_cache(self) -> None:
        """Forget every cached block: timed sessions start cold, as microturn's slots do."""
        self._call("reset_prefix_cache")

    def start_profile(self) -> None:
        """Profile the host's ops (where vLLM's model runs) until `stop_profile`."""
        self._call("start_profile")

    def stop_profile(self, ticks: int) -> TickProfile:
        return self._call("stop_profile", ticks)

    def close(self) -> list[int]:
        """End the host; returns the pids of its processes still alive (should be [])."""
        process, self._process = self._process, None
        if process is None:
            return []
        tree = _tree(process.pid)
        if process.is_alive():
            try:
                self._call("close", timeout=EXIT_WAIT_S)
            except RuntimeError as e:
                log.warning("vllm: the host did not close cleanly: %s", e)
        process.join(EXIT_WAIT_S)
        self._conn.close()
        alive = psutil.wait_procs(tree, timeout=1.0)[1]
        for proc in alive:  # only processes this engine started, by pid
            log.warning("vllm: process %d still alive after shutdown: killing it", proc.pid)
            proc.kill()
        left = [p.pid for p in psutil.wait_procs(alive, timeout=5.0)[1]]
        log.info("vllm: engine shut down")
        return left

    def _call(self, command: str, argument: Any = None, timeout: float = CALL_TIMEOUT_S) -> Any:
        if command != "ready":
            self._conn.send((command, argument))
        if not self._conn.poll(timeout):
            raise RuntimeError(f"vllm host: no answer to {command!r} in {timeout:.0f} s")
        try:
            status, value = self._conn.recv()
        except EOFError as e:
            raise RuntimeError(f"vllm host: ended while answering {command!r}") from e
        if status != "ok":
            raise RuntimeError(f"vllm host: {command!r} failed: {value}")
        return value


def _host(conn, llm_args: dict[str, Any], threads: int) -> None:
    """The host process: one `LLM` with its engine core here, answering the bench's calls."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    torch.set_num_threads(threads)  # before vLLM's CPU worker turns set_num_threads into a no-op
    try:
        from vllm import LLM, SamplingParams
        from vllm import __version__ as vllm_version

        llm = LLM(**llm_args)
        forwards = _ForwardCounter(llm)
        params = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
        profiler = OpProfiler()
        conn.send(("ok", {"vllm_version": vllm_version, "threads": torch.get_num_threads()}))
    except Exception as e:  # noqa: BLE001 - told to the bench, which raises it
        conn.send(("error", repr(e)))
        return

    def tick(histories: list[list[int]]) -> dict:
        prompts = [{"prompt_token_ids": history} for history in histories]
        forwards.count = 0
        started = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        ms = (time.perf_counter() - started) * 1000
        if any(len(o.outputs[0].token_ids) != 1 for o in outputs):
            raise RuntimeError("a request did not return exactly one token")
        return {"ms": ms, "prompt_tokens": sum(len(h) for h in histories),
                "cached_tokens": sum(o.num_cached_tokens or 0 for o in outputs), "forwards": forwards.count}

    def greedy_next(history: list[int]) -> int:
        (out,) = llm.generate([{"prompt_token_ids": history}], params, use_tqdm=False)
        return out.outputs[0].token_ids[0]

    commands = {"tick": tick, "greedy_next": greedy_next,
                "reset_prefix_cache": lambda _: llm.reset_prefix_cache(),
                "start_profile": lambda _: profiler.start(), "stop_profile": profiler.stop}
    while True:
        try:
            command, argument = conn.recv()
        except EOFError:  # the bench is gone
            command = "close"
        if command == "close":
            llm.llm_engine.engine_core.shutdown()
            with contextlib.suppress(OSError):
                conn.send(("ok", None))
            return
        try:
            conn.send(("ok", commands[command](argument)))
        except Exception as e:  # noqa: BLE001 - told to the bench, which raises it
            conn.send(("error", repr(e)))


class _ForwardCounter:
    """Counts the engine steps that ran the model (vLLM 0.32's in-process `EngineCore.step_fn`,
    which returns (outputs, model_executed))."""

    def __init__(self, llm: Any) -> None:
        self.count = 0
        core = llm.llm_engine.engine_core.engine_core
        step = core.step_fn

        def counted() -> Any:
            outputs, executed = step()
            self.count += bool(executed)
            return outputs, executed

        core.step_fn = counted


def seeded_ids(count: int, gen: torch.Generator, vocab: int = 256) -> list[int]:
    return torch.randint(0, vocab, (count,), generator=gen).tolist()


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
