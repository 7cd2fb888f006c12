"""The `vllm` reasoner: a real vLLM engine (CPU) on the seeded tiny checkpoint, tool calls as
structured output checked against their schemas.

One engine per test session (start ~25 s): the `reasoner` fixture is module-scoped, keeps one
`asyncio.Runner` (the engine's output handler lives on one event loop), and the last test shuts
the engine down and checks that its engine-core and worker processes are gone.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import psutil
import pytest

from background.reasoners.base import PlannedCall, Reasoner, ReasonerError
from background.reasoners.tiny_llm import write_tiny_reasoner_checkpoint
from background.reasoners.vllm_reasoner import VLLMReasoner
from protos.microturn.v1 import events_pb2

WEB_SEARCH_PARAMETERS = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "pattern": "^[a-zA-Z0-9 ,.?'-]{1,80}$"},
        "max_results": {"type": "integer", "minimum": 1, "maximum": 10},
    },
    "required": ["query", "max_results"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "web_search", "description": "Search the web.",
                                      "parameters": WEB_SEARCH_PARAMETERS}},
    {"type": "function", "function": {
        "name": "calculator", "description": "Evaluate an arithmetic expression.",
        "parameters": {"type": "object", "properties": {
            "expression": {"type": "string", "pattern": "^[0-9+*/(). -]{1,40}$"}},
            "required": ["expression"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "clock", "description": "The time in a timezone.",
        "parameters": {"type": "object", "properties": {
            "timezone": {"enum": ["UTC", "Europe/Berlin", "America/New_York"]}},
            "required": ["timezone"], "additionalProperties": False}}},
]
ENV_KEYS = ("VLLM_CPU_KVCACHE_SPACE", "HF_HUB_OFFLINE", "VLLM_CACHE_ROOT",
            "TORCHINDUCTOR_CACHE_DIR", "VLLM_WORKER_MULTIPROC_METHOD")


def make_job(i: int, tool: str = "", arguments_json: str = "") -> events_pb2.Job:
    job = events_pb2.Job(session_id="s1", job_id=f"job-{i}", epoch=1)
    job.conversation.add(role="user", text=f"What is the weather in Paris, question {i}?", tick=3)
    job.conversation.add(role="assistant", text="Let me look that up.", tick=5)
    job.requested_tool.tool = tool
    job.requested_tool.arguments_json = arguments_json
    return job


def _schema(tool: str) -> dict:
    return next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == tool)


def check_valid(call: PlannedCall) -> None:
    jsonschema.validate(json.loads(call.arguments_json), _schema(call.tool))


def _is_resource_tracker(process: psutil.Process) -> bool:
    """multiprocessing's spawn starts one tracker per parent; it lives as long as the parent."""
    try:
        return any("resource_tracker" in part for part in process.cmdline())
    except psutil.NoSuchProcess:
        return False


def _still_running(pids: set[int]) -> list[psutil.Process]:
    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return psutil.wait_procs(processes, timeout=30)[1]


class RunningReasoner:
    """A started reasoner, the one event loop it lives on, and the processes it started."""

    def __init__(self, cache_dir: Path) -> None:
        self.runner = asyncio.Runner()
        self.reasoner = VLLMReasoner(cache_dir=str(cache_dir), seed=0)
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        self.runner.run(self.reasoner.start())
        self.engine_pids = {p.pid for p in psutil.Process().children(recursive=True)
                            if p.pid not in before and not _is_resource_tracker(p)}

    def plan(self, job: events_pb2.Job, tools: list[dict] = TOOLS) -> list[PlannedCall]:
        return self.runner.run(self.reasoner.plan(job, tools))

    def close(self) -> None:
        self.runner.run(self.reasoner.close())
        self.runner.close()


@pytest.fixture(scope="module")
def running(tmp_path_factory) -> Iterator[RunningReasoner]:
    saved = {key: os.environ.get(key) for key in ENV_KEYS}
    running = RunningReasoner(tmp_path_factory.mktemp("vllm_reasoner"))
    try:
        yield running
    finally:
        running.close()
        for key, value in saved.items():  # the reasoner sets these for its engine core
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---- without an engine ---------------------------------------------------------------------


def test_tiny_checkpoint_is_reproducible(tmp_path):
    a = write_tiny_reasoner_checkpoint(tmp_path / "a", seed=7)
    b = write_tiny_reasoner_checkpoint(tmp_path / "b", seed=7)
    c = write_tiny_reasoner_checkpoint(tmp_path / "c", seed=8)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


@pytest.mark.timeout(120)
def test_tiny_checkpoint_loads_in_transformers(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = write_tiny_reasoner_checkpoint(tmp_path / "ckpt", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    assert model.config.model_type == "mixtral" and model.config.head_dim >= 32
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Wie spät ist es? ✓"}], tools=TOOLS,
        add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n") and "- web_search: Search the web." in text
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text  # byte-level: every string round-trips
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_plans_without_the_engine_when_nothing_to_reason():
    reasoner = VLLMReasoner()
    assert isinstance(reasoner, Reasoner)
    given = make_job(0, "web_search", '{"query": "x", "max_results": 1}')
    assert asyncio.run(reasoner.plan(given, TOOLS)) == [
        PlannedCall("web_search", '{"query": "x", "max_results": 1}')]
    assert asyncio.run(reasoner.plan(make_job(1), [])) == []
    with pytest.raises(ReasonerError, match="not among the offered tools"):
        asyncio.run(reasoner.plan(make_job(2, "fetch_url"), TOOLS))
    assert reasoner._engine is None  # none of these started an engine


# ---- with one engine for the module --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_named_tool_arguments_are_valid_json_for_its_schema(running):
    latencies = []
    for i in range(8):
        started = time.perf_counter()
        calls = running.plan(make_job(i, "web_search"))
        latencies.append(time.perf_counter() - started)
        assert [c.tool for c in calls] == ["web_search"]
        check_valid(calls[0])
    print(f"engine start {running.reasoner.engine_start_s:.1f} s; "
          f"plan latency median {sorted(latencies)[4] * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_same_job_same_seed_same_arguments(running):
    job = make_job(42, "web_search")
    assert running.plan(job) == running.plan(job)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_job_without_a_tool_calls_an_offered_one(running):
    calls = running.plan(make_job(7))
    assert len(calls) == 1 and calls[0].tool in {"web_search", "calculator", "clock"}
    check_valid(calls[0])
    only_clock = [t for t in TOOLS if t["function"]["name"] == "clock"]
    (call,) = running.plan(make_job(8), only_clock)
    assert call.tool == "clock" and json.loads(call.arguments_json)["timezone"] in (
        "UTC", "Europe/Berlin", "America/New_York")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_concurrent_jobs_are_batched_and_all_valid(running):
    async def eight() -> list[list[PlannedCall]]:
        return await asyncio.gather(*(running.reasoner.plan(make_job(i, "web_search"), TOOLS)
                                      for i in range(100, 108)))

    for calls in running.runner.run(eight()):
        check_valid(calls[0])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_arguments_cut_off_by_max_tokens_are_an_error(running):
    # 1000 x's cannot fit in max_argument_tokens (256) tokens of this vocabulary.
    long_tool = {"type": "function", "function": {"name": "echo", "parameters": {
        "type": "object", "properties": {"text": {"type": "string", "pattern": "^x{1000}$"}},
        "required": ["text"]}}}
    with pytest.raises(ReasonerError, match="cut off"):
        running.plan(make_job(9, "echo"), [long_tool])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_schema_the_backend_cannot_compile_is_an_error(running):
    conditional = {"type": "function", "function": {"name": "cond", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}},
        "if": {"properties": {"a": {"const": 1}}}, "then": {"required": ["a"]}}}}
    with pytest.raises(ReasonerError, match="rejected"):
        running.plan(make_job(10, "cond"), [conditional])
    (call,) = running.plan(make_job(11, "web_search"))  # the engine still serves
    check_valid(call)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_close_ends_the_engine_processes(running):
    assert running.engine_pids, "the engine core runs in processes of its own"
    running.runner.run(running.reasoner.close())
    alive = _still_running(running.engine_pids)
    assert not alive, [p.cmdline() for p in alive]
    running.runner.run(running.reasoner.close())  # twice is fine
