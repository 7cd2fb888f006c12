"""Per-stream delays: LMGen's token cache, one row per session slot.

Moshi's streams are shifted in time: with delays (text 0, audio 0, 1, 1, ...), the frame the
model predicts at step t holds the text of frame t but the acoustic codebooks of frame t-1.
LMGen keeps a small ring of `max_delay + 2` token columns per stream:

- the user's codes of step t are written at column t + delay (they are fed later),
- the model's input at step t is column t, except that a stream gets its initial token
  (text_card for text, card for audio) while t <= its delay,
- the tokens generated at step t are written at column t + 1 (fed back next step),
- the frame returned after step t (t >= max_delay) reads each generated stream at column
  t + 1 - max_delay + delay: all streams then describe the same instant, undelayed.

Every slot has its own frame counter, so sessions that joined at different times coexist.
"""

from __future__ import annotations

import torch

from foreground.moshi.lm_config import LMConfig

UNGENERATED = -2  # LMGen's `ungenerated_token_id`: the cache's "nothing here yet"


class DelayedStreams:
    def __init__(self, cfg: LMConfig, max_slots: int) -> None:
        k, gen = cfg.num_streams, cfg.dep_q + 1
        self.cfg, self.columns = cfg, cfg.max_delay + 2
        self.tokens = torch.full((max_slots, k, self.columns), UNGENERATED, dtype=torch.int64)
        self.frame = torch.zeros(max_slots, dtype=torch.int64)  # steps taken by each slot
        delays = torch.tensor(cfg.delays, dtype=torch.int64)
        self.delays = delays.view(1, k)
        self.user_delays = delays[gen:].view(1, -1)
        self.output_shift = (delays[:gen] - cfg.max_delay).view(1, gen)
        self.initial = torch.tensor([cfg.text_card] + [cfg.card] * cfg.n_q, dtype=torch.int64).view(1, k)
        # Per-step scratch.
        self._user_column = torch.zeros(max_slots, cfg.user_streams, 1, dtype=torch.int64)
        self._column = torch.zeros(max_slots, 1, 1, dtype=torch.int64)
        self._is_initial = torch.zeros(max_slots, k, dtype=torch.bool)
        self._cached = torch.zeros(max_slots, k, 1, dtype=torch.int64)
        self.inputs = torch.zeros(max_slots, k, dtype=torch.int64)
        self._out_column = torch.zeros(max_slots, gen, 1, dtype=torch.int64)
        self._out = torch.zeros(max_slots, gen, 1, dtype=torch.int64)
        self._not_yet = torch.zeros(max_slots, dtype=torch.bool)

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.tokens, self.frame]

    def reset(self, slot: int) -> None:
        self.tokens[slot].fill_(UNGENERATED)
        self.frame[slot].zero_()

    def model_inputs(self, user_codes: torch.Tensor) -> torch.Tensor:
        """Store this step's user codes; return the model's input tokens [b, streams]."""
        b = user_codes.shape[0]
        frame, gen = self.frame[:b], self.cfg.dep_q + 1
        user_column = self._user_column[:b]
        torch.add(frame.view(b, 1, 1), self.user_delays.unsqueeze(2), out=user_column)
        user_column.remainder_(self.columns)
        self.tokens[:b, gen:].scatter_(2, user_column, user_codes.unsqueeze(2))

        column, cached = self._column[:b], self._cached[:b]
        torch.remainder(frame.view(b, 1, 1), self.columns, out=column)
        torch.gather(self.tokens[:b], 2, column.expand(b, self.cfg.num_streams, 1), out=cached)
        is_initial = self._is_initial[:b]
        torch.le(frame.view(b, 1), self.delays, out=is_initial)
        return torch.where(is_initial, self.initial, cached.squeeze(2), out=self.inputs[:b])

    def push_generated(self, text: torch.Tensor, audio: torch.Tensor) -> None:
        """Record this step's generated tokens (text [b], audio [b, dep_q]); advance the frame."""
        b = text.shape[0]
        frame, column = self.frame[:b], self._column[:b]
        frame.add_(1)
        torch.remainder(frame.view(b, 1, 1), self.columns, out=column)
        self.tokens[:b, :1].scatter_(2, column, text.view(b, 1, 1))
        self.tokens[:b, 1 : self.cfg.dep_q + 1].scatter_(2, column.expand(b, self.cfg.dep_q, 1), audio.unsqueeze(2))

    def outputs(self, out_text: torch.Tensor, out_audio: torch.Tensor, out_valid: torch.Tensor) -> None:
        """The undelayed frame each slot completed (after `push_generated`): what LMGen.step
        returns, or UNGENERATED tokens and valid=False while it would return None."""
        b, gen = out_text.shape[0], self.cfg.dep_q + 1
        frame, column, out = self.frame[:b], self._out_column[:b], self._out[:b]
        torch.add(frame.view(b, 1, 1), self.output_shift.unsqueeze(2), out=column)
        column.remainder_(self.columns)
        torch.gather(self.tokens[:b, :gen], 2, column, out=out)
        not_yet = self._not_yet[:b]  # LMGen.step still returns None for these slots
        torch.le(frame, self.cfg.max_delay, out=not_yet)
        out.masked_fill_(not_yet.view(b, 1, 1), UNGENERATED)
        torch.logical_not(not_yet, out=out_valid)
        out_text.copy_(out[:, 0, 0])
        out_audio.copy_(out[:, 1:, 0])
