"""`microturn bench parity`: a Moshi-family checkpoint through `moshi`'s own classes and through
microturn, on the same user audio; the largest differences at each stage.

Reference: for each session its own `LMGen` (batch 1, greedy) and Mimi in streaming mode, the
way Kyutai's server runs one conversation. microturn: all sessions in one batch of
`MoshiFamily` (one engine tick per frame). Both read the folder with their own loaders. Each
session hears different speech (espeak-ng sentences at 24 kHz). Compared, per frame:

- `mimi_encode_max_abs_diff`: Mimi's latent before quantisation (codes must then be equal);
- `lm_logits_max_abs_diff`: the temporal transformer's text logits and every codebook's
  depformer logits, for the same input tokens;
- `tokens_equal`: every text token and audio code LMGen returns, and the user's codes;
- `mimi_decode_max_abs_diff`: the PCM Mimi decodes from the model's codes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

SENTENCES = (
    "Could you tell me how long the soup needs to simmer?",
    "The train to the coast leaves at a quarter past nine.",
    "I think the kettle is broken, it never switches off.",
    "What phase of the moon will it be next Tuesday?",
    "My headphones will not pair with the new laptop.",
    "Please remind me to water the tomatoes on the balcony.",
    "How much interest would I earn in five years?",
    "The tower was finished in the spring of eighteen eighty nine.",
)


def user_audio(sessions: int, frames: int, samples_per_frame: int) -> torch.Tensor:
    """[sessions, frames * samples] float32 at 24 kHz: speech, then silence, different per session."""
    from cluster.speech import synthesize

    total = frames * samples_per_frame
    out = torch.zeros(sessions, total)
    for i in range(sessions):
        speech = synthesize(SENTENCES[i % len(SENTENCES)], voice="en-us", sample_rate=24_000)
        speech = np.asarray(speech, dtype=np.float32)[: total - 2400 * (i % 3)]
        start = 2400 * (i % 3)  # sessions start speaking at different moments
        out[i, start:start + len(speech)] = torch.from_numpy(speech)
    return out


def run_parity(checkpoint: Path, sessions: int = 4, frames: int = 50) -> dict:
    from foreground.moshi.checkpoint import read_moshi_folder
    from foreground.moshi.presets import SAMPLES_PER_FRAME

    torch.set_flush_denormal(True)
    info = read_moshi_folder(checkpoint)
    audio = user_audio(sessions, frames, SAMPLES_PER_FRAME)
    started = time.perf_counter()
    ref = [_reference_session(info, audio[i], frames) for i in range(sessions)]
    log.info("reference: %d sessions x %d frames in %.1f s", sessions, frames, time.perf_counter() - started)
    ours = _microturn_sessions(info, audio, frames)
    diffs = {"encode": 0.0, "logits": 0.0, "decode": 0.0}
    tokens_equal = True
    for i in range(sessions):
        r, o = ref[i], ours[i]
        diffs["encode"] = max(diffs["encode"], _max_diff(r["latent"], o["latent"]))
        diffs["logits"] = max(diffs["logits"], _max_diff(r["text_logits"], o["text_logits"]),
                              _max_diff(r["audio_logits"], o["audio_logits"]))
        diffs["decode"] = max(diffs["decode"], _max_diff(r["pcm"], o["pcm"]))
        same = (torch.equal(r["codes"], o["codes"]) and torch.equal(r["text"], o["text"])
                and torch.equal(r["audio"], o["audio"]))
        if not same:
            log.warning("session %d: tokens differ from the reference", i)
        tokens_equal &= same
    return {
        "family": "moshi",
        "checkpoint": str(checkpoint),
        "sessions": sessions,
        "frames": frames,
        "mimi_encode_max_abs_diff": diffs["encode"],
        "mimi_decode_max_abs_diff": diffs["decode"],
        "lm_logits_max_abs_diff": diffs["logits"],
        "tokens_equal": tokens_equal,
        "generated_frames": int(ref[0]["text"].numel()),
        "distinct_text_tokens": len(set(torch.cat([r["text"] for r in ref]).tolist())),
    }


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise RuntimeError(f"shapes differ: reference {tuple(a.shape)}, microturn {tuple(b.shape)}")
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


@torch.no_grad()
def _reference_session(info, pcm: torch.Tensor, frames: int) -> dict:
    """One conversation through `moshi`'s own classes, as its server runs it."""
    from moshi.models.lm import LMGen
    from moshi.models.loaders import CheckpointInfo

    ck = CheckpointInfo(moshi_weights=info.lm_weights, mimi_weights=info.mimi_weights, tokenizer=info.tokenizer,
                        lm_config=info.lm_config, mimi_config=info.mimi_config)
    mimi, lm = ck.get_mimi(), ck.get_moshi(dtype=torch.float32)
    record: dict[str, list] = {k: [] for k in ("latent", "codes", "text_logits", "audio_logits", "text", "audio",
                                               "pcm")}
    quantize = mimi.quantizer.encode

    def capture_latent(emb):
        record["latent"].append(emb[0, :, 0].clone())
        return quantize(emb)

    mimi.quantizer.encode = capture_latent
    depformer = lm.forward_depformer
    step_audio_logits: list[torch.Tensor] = []

    def capture_depformer(cb_index, sequence, transformer_out):
        logits = depformer(cb_index, sequence, transformer_out)
        step_audio_logits.append(logits[0, 0, 0].clone())
        return logits

    lm.forward_depformer = capture_depformer
    gen = LMGen(lm, use_sampling=False,
                on_text_logits_hook=lambda logits: record["text_logits"].append(logits[0, 0, 0].clone()))
    n = pcm.shape[0] // frames
    with mimi.streaming(1), gen.streaming(1):
        for f in range(frames):
            codes = mimi.encode(pcm[None, None, f * n:(f + 1) * n])
            record["codes"].append(codes[0, :, 0].clone())
            step_audio_logits.clear()
            tokens = gen.step(codes)
            record["audio_logits"].append(torch.stack(step_audio_logits))
            if tokens is None:
                continue
            record["text"].append(tokens[0, 0, 0].clone())
            record["audio"].append(tokens[0, 1:, 0].clone())
            record["pcm"].append(mimi.decode(tokens[:, 1:])[0, 0].clone())
    return {k: torch.stack(v) for k, v in record.items()}


@torch.no_grad()
def _microturn_sessions(info, audio: torch.Tensor, frames: int) -> list[dict]:
    """Every session in one batch, one `MoshiFamily` tick per frame."""
    from foreground.moshi.family import MoshiFamily
    from foreground.moshi.sampling import SamplingConfig

    family = MoshiFamily.from_folder(info.folder)
    family.sampling = SamplingConfig(use_sampling=False)
    b = audio.shape[0]
    family.allocate(b)
    for slot in range(b):
        family.open_slot(slot, seed=slot)
    n = audio.shape[1] // frames
    no_text = torch.full((b, 1), -1, dtype=torch.int64)
    speaking = torch.ones(b, 1, 1, dtype=torch.bool)
    pcm = torch.zeros(b, n)
    record = [{k: [] for k in ("latent", "codes", "text_logits", "audio_logits", "text", "audio", "pcm")}
              for _ in range(b)]
    started = time.perf_counter()
    for f in range(frames):
        family.forward(b, audio[:, f * n:(f + 1) * n].contiguous(), no_text)
        family.voice(b, speaking, pcm)
        for i, r in enumerate(record):
            r["latent"].append(family.mimi.encoder_latent(i).clone())
            r["codes"].append(family.user_codes[i].clone())
            r["text_logits"].append(family.streams.text_logits[i].clone())
            r["audio_logits"].append(family.streams.audio_logits[i].clone())
            if bool(family.valid[i]):
                r["text"].append(family.text[i].clone())
                r["audio"].append(family.audio[i].clone())
                r["pcm"].append(pcm[i].clone())
    log.info("microturn: %d sessions x %d frames in %.1f s", b, frames, time.perf_counter() - started)
    return [{k: torch.stack(v) for k, v in r.items()} for r in record]
