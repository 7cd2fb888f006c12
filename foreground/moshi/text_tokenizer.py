"""The Moshi family's text stream: SentencePiece pieces, and a seeded tokenizer for tests.

Moshi's text stream is the model's own words, one token per 80 ms frame, mostly padding
(id 3) between words; id 0 ends a run of padding. Released checkpoints ship a 32k-piece
SentencePiece model; `train_tokenizer` makes a small one from the project's own document
corpus for seeded checkpoints (offline, deterministic).
"""

from __future__ import annotations

import io
from pathlib import Path

import sentencepiece

PAD_ID, END_OF_PADDING_ID = 3, 0
CONTROL_IDS = (0, 1, 2, 3)


class PieceTextDecoder:
    """Text tokens to text, as Moshi's server shows them (a word starts with a space)."""

    def __init__(self, tokenizer: sentencepiece.SentencePieceProcessor) -> None:
        self.tokenizer = tokenizer

    def decode(self, token_ids: list[int]) -> str:
        pieces = [self.tokenizer.id_to_piece(t) for t in token_ids
                  if t not in CONTROL_IDS and 0 <= t < self.tokenizer.get_piece_size()]
        return "".join(pieces).replace("\u2581", " ")


def load_tokenizer(path: Path) -> sentencepiece.SentencePieceProcessor:
    return sentencepiece.SentencePieceProcessor(model_file=str(path))


def train_tokenizer(vocab_size: int) -> bytes:
    """A SentencePiece model of `vocab_size` pieces (ids 0-3: unk, bos, eos, pad, as Moshi's),
    trained on the background pool's bundled documents."""
    corpus = Path(__file__).resolve().parents[2] / "background" / "tools" / "corpus"
    lines = [line.strip() for path in sorted(corpus.glob("*.md")) for line in path.read_text().splitlines()
             if line.strip()]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, num_threads=1, seed_sentencepiece_size=100_000,
        shuffle_input_sentence=False, hard_vocab_limit=True, minloglevel=2)
    return model.getvalue()
