"""Reasoners: turn a job into the tool calls to make.

`build_reasoner(kind, **settings)` makes one: "direct" (run the named tool), "openai" (an
OpenAI-compatible endpoint: `base_url`, `model`, `api_key`, `timeout_s`) or "vllm" (an engine
in the replica; imported only when asked for, since it pulls in vLLM).
"""

from __future__ import annotations

from typing import Any

from background.reasoners.base import PlannedCall, Reasoner, ReasonerError, last_user_text
from background.reasoners.direct import DirectReasoner
from background.reasoners.openai import OpenAIReasoner

KINDS = ("direct", "openai", "vllm")

__all__ = ["KINDS", "DirectReasoner", "OpenAIReasoner", "PlannedCall", "Reasoner", "ReasonerError",
           "build_reasoner", "last_user_text"]


def build_reasoner(kind: str, **settings: Any) -> Reasoner:
    if kind == "direct":
        return DirectReasoner(**settings)
    if kind == "openai":
        return OpenAIReasoner(**settings)
    if kind == "vllm":
        from background.reasoners.vllm_reasoner import VLLMReasoner

        return VLLMReasoner(**settings)
    raise ValueError(f"reasoner kind: expected one of {', '.join(KINDS)}, got {kind!r}")
