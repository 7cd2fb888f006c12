"""A seeded tiny chat LLM that microturn writes itself, so the `vllm` reasoner runs with no download.

No small tool-calling model with an open licence ships inside a wheel, and tests and `make run`
must not fetch weights. So the `vllm` reasoner's default model is written here: a two-layer
Mixtral (the same architecture family as the foreground backbone) with random, seeded weights,
plus a byte-level BPE tokenizer trained on a few built-in sentences and a small chat template.

The weights are random: the *content* of what this model generates is meaningless. The reasoner
is still useful with it, because structured output constrains every token, so its tool calls
are valid against their JSON schemas even though their arguments say nothing. Real reasoners
point the same code at a real checkpoint directory.

The directory is a plain `save_pretrained` folder, so both vLLM and `transformers` load it.
The same seed writes the same weights and the same tokenizer.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, MixtralConfig, MixtralForCausalLM, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
TOOL_CALL = "<tool_call>"
SPECIAL_TOKENS = [EOS_TOKEN, IM_START, IM_END, TOOL_CALL]
VOCAB_SIZE = 512  # BPE vocabulary incl. the 256 byte symbols and the special tokens
MARKER = "microturn_reasoner.json"  # written last: its presence means the checkpoint is complete
FORMAT = 1  # raise when what `_write` produces changes, so cached checkpoints are rewritten

# Roles and tools are rendered as plain text. Tools appear by name and description only: their
# parameter schemas constrain the generated arguments anyway, and in full (ui.render's alone is
# ~3 kB) they would crowd the conversation out of a small context.
CHAT_TEMPLATE = (
    "{% if tools %}" + IM_START + "system\nTools:\n"
    "{% for tool in tools %}{% set f = tool['function'] if tool['function'] is defined else tool %}"
    "- {{ f['name'] }}: {{ f['description'] }}\n{% endfor %}" + IM_END + "\n{% endif %}"
    "{% for message in messages %}"
    + IM_START + "{{ message['role'] }}\n{{ message['content'] }}" + IM_END + "\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + IM_START + "assistant\n{% endif %}"
)

# What the BPE merges are learnt from: chat, JSON and tool names, so that common pieces such as
# `":"` or `query` become single tokens and the grammar has to handle multi-character tokens.
_TRAINING_TEXT = """\
user: what is the weather in Paris tomorrow? assistant: let me search the web for that.
{"query": "weather Paris tomorrow", "max_results": 3}
{"tool": "web_search", "arguments": {"query": "latest news", "max_results": 5}}
{"tool": "fetch_url", "arguments": {"url": "https://example.org/index.html"}}
{"tool": "calculator", "arguments": {"expression": "(12 + 30) * 2.5"}}
{"tool": "clock", "arguments": {"timezone": "Europe/Berlin"}}
{"tool": "ui.render", "arguments": {"component": "card", "props": {"title": "Hello"}}}
The quick brown fox jumps over the lazy dog. 0123456789, true, false, null.
Can you find the opening hours of the museum and show them as a table, please?
How far is it from Berlin to Munich by train, and what does a ticket cost?
"""


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (every byte sequence encodes) with the chat special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = _TRAINING_TEXT.splitlines()
    tokenizer.train_from_iterator(lines * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=[IM_START, IM_END, TOOL_CALL],
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def tiny_mixtral_config(vocab_size: int, eos_token_id: int) -> MixtralConfig:
    """Two layers, head_dim 32 (vLLM's CPU attention takes 32, 64, 80, ... only), four experts."""
    return MixtralConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        dtype="float32",
    )


def write_tiny_reasoner_checkpoint(directory: str | Path, seed: int = 0) -> Path:
    """Write the seeded tiny chat model (weights, config, tokenizer, template) to `directory`.

    A directory that already holds the checkpoint for this seed is kept as it is. A new one is
    built next to its final place and renamed into it, so that pool replicas sharing a cache
    directory never load half a checkpoint, whichever of them writes it.
    """
    directory = Path(directory)
    if _is_complete(directory, seed):
        logger.debug("tiny reasoner checkpoint already at %s", directory)
        return directory
    if directory.exists():  # a folder someone chose: write into it
        _write(directory, seed)
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        _write(staging, seed)
        try:
            staging.rename(directory)
        except OSError:  # another process renamed its copy first
            if not _is_complete(directory, seed):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _is_complete(directory: Path, seed: int) -> bool:
    marker = directory / MARKER
    if not marker.exists():
        return False
    written = json.loads(marker.read_text())
    return written.get("seed") == seed and written.get("format") == FORMAT


def _write(directory: Path, seed: int) -> None:
    tokenizer = build_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    config = tiny_mixtral_config(len(tokenizer), eos_id)
    rng_state = torch.random.get_rng_state()
    try:  # seeded without disturbing the caller's global generator
        torch.manual_seed(seed)
        model = MixtralForCausalLM(config).to(torch.float32).eval()
    finally:
        torch.random.set_rng_state(rng_state)
    model.generation_config = GenerationConfig(
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id, do_sample=False)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    marker = {"seed": seed, "format": FORMAT, "kind": "tiny-mixtral-reasoner"}
    (directory / MARKER).write_text(json.dumps(marker) + "\n")
    logger.info("wrote tiny reasoner checkpoint (seed %d, %d params) to %s",
                seed, sum(p.numel() for p in model.parameters()), directory)
