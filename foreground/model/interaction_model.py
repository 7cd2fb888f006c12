"""The reference interaction model: early fusion of audio, video and text into one MoE backbone.

No encoders: the user's audio enters as dMel (each log-mel channel quantised into a few bins,
embedded by one linear layer over their one-hot codes, together with the model's own previous
output frames), video as 40x40 patches through an hMLP stem, text as byte tokens. Heads read
the backbone's last hidden states: text (the LM head), audio (flow matching), turn and delegate;
the end-of-turn detector reads the user's log-mel frames directly (`turn_detector`).

Module names follow a Mixtral checkpoint (`model.*`, `lm_head`); everything else lives under
`interaction.*`, which `transformers` ignores when it loads the backbone.
"""

from __future__ import annotations

import torch
from torch import nn

from foreground.model.audio_head import FlowAudioHead
from foreground.model.backbone import MixtralModel
from foreground.model.config import ModelConfig
from foreground.model.turn_detector import TurnDetector
from foreground.model.vision import HMLPStem


class InteractionParts(nn.Module):
    """What a full-duplex model adds to a text backbone: the input layers and the heads."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, a = cfg.hidden_size, cfg.audio
        # One-hot dMel codes of the user's frame and of the model's own previous frame.
        self.audio_in = nn.Linear(2 * a.n_mels * a.dmel_bins, d, bias=False)
        self.vision = HMLPStem(d, cfg.vision)
        self.no_video = nn.Parameter(torch.zeros(cfg.vision.patches_per_frame, d))
        self.act = nn.Parameter(torch.zeros(d))
        self.audio_head = FlowAudioHead(cfg)
        self.turn_head = nn.Linear(d, cfg.turn_classes)
        self.delegate_head = nn.Linear(d, 1)
        self.turn_detector = TurnDetector(cfg)  # end of turn, from the user's log-mel


class InteractionModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = MixtralModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.interaction = InteractionParts(cfg)
