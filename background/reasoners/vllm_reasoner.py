"""The `vllm` reasoner: a vLLM engine inside the pool replica, tool calls as structured output.

Why `AsyncLLM` and not `vllm.LLM`: the pool replica is an asyncio service, and `AsyncLLM`
batches concurrent jobs into one engine step, while `LLM` is blocking and not thread-safe
(in a worker thread it would serve one job at a time). `AsyncLLM` binds its output handler to
the event loop of the first `plan()`, so one reasoner serves one loop (a Serve replica has one;
tests keep one `asyncio.Runner`). Engine start (20-40 s on 2 busy cores, engine core in a spawned
process plus its worker process: vLLM's CPU platform always uses the multiprocessing executor)
runs in a thread so the replica's loop stays responsive, and happens once, lazily.

Planning is two constrained generations, simpler and sturdier than one schema with a `oneOf`
over all tools: (1) the tool: the one the job names, or a choice among the offered names;
(2) its arguments, constrained to that tool's `parameters` JSON schema. The `guidance`
backend is the default: with `xgrammar`, strings bounded only by `maxLength` came out too long
(0/8 valid here; FACTS.md saw raw control characters), `guidance` gave 8/8. With `guidance`,
objects that list `properties` get `additionalProperties: false` unless they say otherwise,
and whitespace is off, so a model cannot pad forever; `max_tokens` is bounded, and every
arguments object is checked with `jsonschema` before it leaves: a cut-off or invalid call
becomes a `ReasonerError`, never a silent bad call. A string with no length bound (ui.render's
`body`) can still run a random-weight model into `max_tokens`: that is such an error.

With the default seeded tiny checkpoint (`tiny_llm.py`) the argument *values* are meaningless
(random weights); they are still valid against the schema, which is what this backend owns.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import jsonschema

from background.reasoners.base import PlannedCall, ReasonerError
from background.reasoners.openai import SYSTEM_PROMPT, chat_messages
from background.reasoners.tiny_llm import TOOL_CALL, write_tiny_reasoner_checkpoint
from protos.microturn.v1 import events_pb2

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "microturn"
EMPTY_OBJECT_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


def tool_functions(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """name -> `{name, description, parameters}`; accepts OpenAI-shaped or bare tool specs."""
    functions: dict[str, dict[str, Any]] = {}
    for spec in tools:
        function = spec["function"] if spec.get("type") == "function" else spec
        functions[function["name"]] = {
            "name": function["name"],
            "description": function.get("description", ""),
            "parameters": function.get("parameters") or EMPTY_OBJECT_SCHEMA,
        }
    return functions


class VLLMReasoner:
    """Plans tool calls with a vLLM engine started on first use and kept for the process.

    `model_dir=None` writes (once) and serves the seeded tiny checkpoint under `cache_dir`.
    """

    def __init__(self, model_dir: str | None = None, seed: int = 0, cache_dir: str | None = None,
                 max_model_len: int = 2048, max_argument_tokens: int = 256,
                 backend: Literal["guidance", "xgrammar"] = "guidance",
                 kv_cache_gib: int = 1, max_num_seqs: int = 8,
                 system_prompt: str = SYSTEM_PROMPT) -> None:
        if max_argument_tokens >= max_model_len // 2:
            raise ValueError(f"vllm reasoner: max_argument_tokens ({max_argument_tokens}) must be "
                             f"under half of max_model_len ({max_model_len}) to leave room for the prompt")
        self.cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR
        self.model_dir = Path(model_dir) if model_dir else None
        self.seed, self.backend, self.system_prompt = seed, backend, system_prompt
        self.max_model_len, self.max_argument_tokens = max_model_len, max_argument_tokens
        self.kv_cache_gib, self.max_num_seqs = kv_cache_gib, max_num_seqs
        self._engine: Any = None  # vllm.v1.engine.async_llm.AsyncLLM once started
        self._tokenizer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_lock: asyncio.Lock | None = None
        self._closed = False
        self.engine_start_s: float | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the engine now (else the first `plan()` does); later calls return at once."""
        if self._closed:
            raise ReasonerError("vllm reasoner: closed (its engine was shut down)")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop, self._start_lock = loop, asyncio.Lock()
        elif self._loop is not loop:
            raise ReasonerError("vllm reasoner: used from a second event loop; its engine's output "
                                "handler lives on the first one (keep one loop per reasoner)")
        assert self._start_lock is not None
        async with self._start_lock:
            if self._engine is None:
                started = time.perf_counter()
                # The engine comes back in a dict emptied here, not as a return value: vLLM
                # keeps a frame from its lazy imports, whose f_back chain (this thread's frames
                # and future) would otherwise keep the engine alive past close(), and its
                # __del__ then fails at interpreter exit.
                started_parts: dict[str, Any] = {}
                try:
                    await asyncio.to_thread(self._start_blocking, started_parts)
                except Exception as e:  # bad checkpoint, engine core died during start, ...
                    raise ReasonerError(f"vllm reasoner: the engine did not start: "
                                        f"{type(e).__name__}: {e}") from e
                self._engine, self._tokenizer = started_parts.pop("engine"), started_parts.pop("tokenizer")
                self.engine_start_s = time.perf_counter() - started
                log.info("vllm reasoner: engine ready in %.1f s (backend %s)",
                         self.engine_start_s, self.backend)

    async def close(self) -> None:
        """Shut the engine down, ending its engine-core process; safe to call twice."""
        self._closed = True
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()
            log.info("vllm reasoner: engine shut down")

    def _start_blocking(self, started_parts: dict[str, Any]) -> None:
        """Environment, checkpoint, engine: everything slow, run off the event loop."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # The engine core reads these at start (and inherits them when spawned); setdefault so
        # an operator's values win. Spawn, not fork: the replica already runs threads.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("VLLM_CACHE_ROOT", str(self.cache_dir / "vllm"))
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.cache_dir / "torchinductor"))
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        model_dir = self.model_dir or write_tiny_reasoner_checkpoint(
            self.cache_dir / "checkpoints" / f"tiny-reasoner-{self.seed}", self.seed)

        from transformers import AutoTokenizer
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=str(model_dir), dtype="float32", max_model_len=self.max_model_len,
            enforce_eager=True, seed=self.seed, max_num_seqs=self.max_num_seqs,
            disable_log_stats=True,
            structured_outputs_config=StructuredOutputsConfig(
                backend=self.backend, disable_any_whitespace=True,
                disable_additional_properties=self.backend == "guidance"),  # guidance-only flag
        )
        started_parts["tokenizer"] = AutoTokenizer.from_pretrained(str(model_dir))
        started_parts["engine"] = AsyncLLM.from_engine_args(args)

    # ---- planning --------------------------------------------------------------------------

    async def plan(self, job: events_pb2.Job, tools: list[dict[str, Any]]) -> list[PlannedCall]:
        functions = tool_functions(tools)
        requested = job.requested_tool
        if requested.tool and requested.arguments_json:
            return [PlannedCall(requested.tool, requested.arguments_json)]  # nothing to reason
        if not functions:
            return []
        if requested.tool and requested.tool not in functions:
            raise ReasonerError(f"the job names tool {requested.tool!r}, which is not among the "
                                f"offered tools ({', '.join(functions)})")
        await self.start()
        started = time.perf_counter()
        prefix = self._prompt_ids(job, [{"type": "function", "function": f}
                                        for f in functions.values()])
        tool = requested.tool or await self._choose_tool(job.job_id, prefix, list(functions))
        arguments = await self._arguments(job.job_id, prefix, tool, functions[tool]["parameters"])
        log.info("vllm reasoner: job %s -> %s in %.0f ms", job.job_id, tool,
                 (time.perf_counter() - started) * 1000)
        return [PlannedCall(tool, arguments)]

    def _prompt_ids(self, job: events_pb2.Job, tools: list[dict[str, Any]]) -> list[int]:
        """The chat rendered up to a tool-call marker, fitted into the context: oldest turns go
        first, then the tool list (the grammar still confines the call to the offered tools),
        and only then the front of what is left."""
        budget = self.max_model_len - self.max_argument_tokens - 32  # 32: the tool name
        messages = chat_messages(job, self.system_prompt)
        while True:
            text = self._tokenizer.apply_chat_template(
                messages, tools=tools or None, add_generation_prompt=True, tokenize=False)
            ids = self._tokenizer.encode(text + TOOL_CALL, add_special_tokens=False)
            if len(ids) <= budget:
                return ids
            if len(messages) > 1:
                messages = messages[1:]
            elif tools:
                tools = []
            else:
                log.warning("vllm reasoner: job %s prompt of %d tokens cut to its last %d",
                            job.job_id, len(ids), budget)
                return ids[-budget:]

    async def _choose_tool(self, job_id: str, prefix: list[int], names: list[str]) -> str:
        from vllm.sampling_params import StructuredOutputsParams

        if len(names) == 1:
            return names[0]
        longest = max(len(self._tokenizer.encode(n, add_special_tokens=False)) for n in names)
        text, finish = await self._generate(
            f"{job_id}-tool", prefix, StructuredOutputsParams(choice=names), longest + 2)
        if text not in names:
            raise ReasonerError(f"vllm reasoner: tool choice {text!r} (finish {finish}) is not one "
                                f"of {', '.join(names)}")
        return text

    async def _arguments(self, job_id: str, prefix: list[int], tool: str,
                         schema: dict[str, Any]) -> str:
        """Arguments for `tool` generated under its schema, then checked against it."""
        from vllm.sampling_params import StructuredOutputsParams

        try:
            cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
            cls.check_schema(schema)
            validator = cls(schema)
        except jsonschema.SchemaError as e:
            raise ReasonerError(f"tool {tool!r}: its parameters are not a valid JSON schema: "
                                f"{e.message}") from e
        prompt = prefix + self._tokenizer.encode(f"{tool}\n", add_special_tokens=False)
        text, finish = await self._generate(
            f"{job_id}-args", prompt, StructuredOutputsParams(json=schema), self.max_argument_tokens)
        if finish == "length":
            raise ReasonerError(f"tool {tool!r}: the arguments were cut off after "
                                f"{self.max_argument_tokens} tokens: {text[:200]!r}")
        try:
            arguments = json.loads(text)
        except json.JSONDecodeError as e:
            raise ReasonerError(f"tool {tool!r}: the arguments are not JSON ({e}): {text[:200]!r}") from e
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise ReasonerError(f"tool {tool!r}: the arguments break the schema at {where}: "
                                f"{error.message}")
        return json.dumps(arguments, ensure_ascii=False)

    async def _generate(self, request_prefix: str, prompt_ids: list[int],
                        structured: Any, max_tokens: int) -> tuple[str, str | None]:
        """One greedy, seeded, constrained generation; returns (text, finish reason)."""
        from vllm.exceptions import VLLMValidationError
        from vllm.sampling_params import RequestOutputKind, SamplingParams
        from vllm.v1.engine.exceptions import EngineDeadError

        engine = self._engine
        if engine is None:
            raise ReasonerError("vllm reasoner: closed while planning")

        params = SamplingParams(temperature=0.0, seed=self.seed, max_tokens=max_tokens,
                                structured_outputs=structured,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        request_id = f"{request_prefix}-{uuid.uuid4().hex[:8]}"
        final = None
        try:
            # Tokens rendered by the engine's renderer: raw prompts to generate() are deprecated.
            (engine_input,) = engine.renderer.render_cmpl([{"prompt_token_ids": prompt_ids}])
            async for output in engine.generate(engine_input, params, request_id):
                final = output
        except (VLLMValidationError, ValueError, TypeError) as e:  # e.g. `if`/`then` in a schema:
            # guidance answers "Grammar error: Unimplemented keys"
            raise ReasonerError(f"vllm reasoner: request {request_id} rejected: {e}") from e
        except EngineDeadError as e:
            raise ReasonerError(f"vllm reasoner: the engine core died ({e}); restart the "
                                f"replica") from e
        if final is None or not final.outputs:
            raise ReasonerError(f"vllm reasoner: request {request_id} finished without output")
        completion = final.outputs[0]
        return completion.text, completion.finish_reason
