"""The checkpoint's text tokenizer: byte-level, ids 0..255 are the bytes, the specials follow.

Why a tokenizer at all when the model reads raw bytes: vLLM (and `transformers` pipelines)
load a model folder together with its tokenizer. Saving one that maps ids exactly as our
model does (config.py: byte `b` is id `b`; PAD, BOS, EOS, EMPTY at 256..259, reserved
specials up to TEXT_VOCAB) makes every checkpoint folder servable by vLLM as it is, which
`microturn bench compare` relies on.

Built with `tokenizers`: a BPE model with no merges over the GPT-2 byte-to-unicode alphabet,
so every byte sequence encodes to one id per byte and decodes back unchanged; the specials
are added tokens with consecutive ids after the 256 bytes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from foreground.model.config import BOS_ID, EMPTY_ID, EOS_ID, PAD_ID, TEXT_VOCAB

log = logging.getLogger(__name__)

PAD, BOS, EOS, EMPTY = "<pad>", "<s>", "</s>", "<empty>"
NAMED_SPECIALS = {PAD_ID: PAD, BOS_ID: BOS, EOS_ID: EOS, EMPTY_ID: EMPTY}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def special_tokens(vocab_size: int = TEXT_VOCAB) -> list[str]:
    """The added tokens, in id order from 256: the named ones, then reserved placeholders."""
    return [NAMED_SPECIALS.get(i, f"<reserved_{i}>") for i in range(256, vocab_size)]


def build_byte_tokenizer(vocab_size: int = TEXT_VOCAB) -> PreTrainedTokenizerFast:
    """A tokenizer whose ids are our model's ids (raises if the specials do not land there)."""
    byte_chars = pre_tokenizers.ByteLevel.alphabet()  # 256 printable stand-ins, one per byte
    to_char = _bytes_to_unicode()
    assert set(to_char.values()) == set(byte_chars)
    vocab = {to_char[b]: b for b in range(256)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # No regex split: with no merges every byte is its own token anyway, and splitting would
    # only cost time.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(special_tokens(vocab_size))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, bos_token=BOS, eos_token=EOS,
        additional_special_tokens=[t for t in special_tokens(vocab_size) if t not in (PAD, BOS, EOS)],
        model_max_length=32768, clean_up_tokenization_spaces=False)
    for token_id, token in NAMED_SPECIALS.items():
        got = fast.convert_tokens_to_ids(token)
        if got != token_id:
            raise RuntimeError(f"byte tokenizer: special {token} got id {got}, the model uses {token_id}")
    if len(fast) != vocab_size:
        raise RuntimeError(f"byte tokenizer: {len(fast)} ids, the model's vocab_size is {vocab_size}")
    return fast


def save_byte_tokenizer(out_dir: Path, vocab_size: int = TEXT_VOCAB) -> None:
    """Write the tokenizer files into a checkpoint folder (what `save_checkpoint` calls)."""
    build_byte_tokenizer(vocab_size).save_pretrained(str(out_dir))
    log.debug("wrote byte-level tokenizer (%d ids) to %s", vocab_size, out_dir)


def has_tokenizer(folder: Path) -> bool:
    return all((Path(folder) / name).exists() for name in TOKENIZER_FILES)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what ByteLevel pre-tokenizers use)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table
