"""`microturn bench duplex`: stream the scenarios through a live cluster and score them.

Every scenario is its own session, streamed at a microphone's pace (`stream_script`), several
at a time (they are independent; on 2 cores 4 at a time keeps the replica's ticks well under
200 ms while cutting the wall time by about 4x). The cluster is an embedded `LocalCluster`
started here and stopped at the end, or a running one's gateway (`--address`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cluster.bench.duplex.metrics import Score, Segment, Truth, score, summarize
from cluster.bench.duplex.scenarios import NOISES, RATES_WPM, RenderedScenario, make_scenarios, render
from cluster.bench.duplex.speech_out import (
    ENERGY_RULE,
    WORDS_PER_S,
    Span,
    TurnEventAt,
    agreement,
    analyse,
    describe_word_source,
    events_match,
    merge_agreement,
    with_words,
)
from cluster.bench.duplex.stages import (
    SILENCE_THRESHOLD_MS,
    STOP_STAGES,
    TURN_TAKING_STAGES,
    mean_stages,
    stop_stages,
    turn_taking_stages,
)
from cluster.client import InteractionClient
from cluster.config import MicroturnConfig
from cluster.conversation import ConversationRecording, measure, stream_script
from cluster.local_api_key import find_api_key
from cluster.runtime import LocalCluster
from foreground.engine.turn_policy import resolve_policy
from foreground.model.checkpoint import ensure_seeded_checkpoint, head_calibrated

log = logging.getLogger(__name__)

TAIL_S = 0.6  # the scripts end in silence already; this lets the last ticks come back
SPEECH_SOURCES = {
    "energy": f"energy: {ENERGY_RULE}",
    "flags": "flags: AudioOut.speech (span = first speech=True AudioOut .. next speech=False one)",
}


@dataclass
class ScenarioResult:
    name: str
    kind: str
    voice: str
    rate_wpm: int
    truth: Truth
    pause_breaks_s: tuple[float, ...] = ()
    ending: str | None = None  # turn_taking: "question" or "statement"
    score: Score | None = None
    segments: list[Segment] = field(default_factory=list)  # the chosen speech source, with words
    word_sources: list[str] = field(default_factory=list)
    energy: list[Span] = field(default_factory=list)
    flags: list[Span] = field(default_factory=list)
    events: list[TurnEventAt] = field(default_factory=list)
    agreement: dict = field(default_factory=dict)
    stages: dict | None = None  # turn-taking latency stages
    stop_stages: dict | None = None  # interruption stop stages
    ticks: int = 0
    late_chunks: int = 0
    user_s: float = 0.0
    error: str | None = None


async def run_duplex(config: MicroturnConfig, scenarios: int = 40, seed: int = 0, policy: str = "auto",
                     address: str | None = None, runs_root: Path = Path("runs"), concurrency: int = 4,
                     speech_source: str = "energy", noise: str = "none", snr_db: float = 20.0,
                     end_silence_ms: int | None = None) -> dict:
    """Run the benchmark; write runs/bench-<stamp>/; return the JSON summary. `noise` (one of
    `scenarios.NOISES`) is mixed into every user track at `snr_db` (see `scenarios`);
    `end_silence_ms` is every session's `SessionOpen.end_silence_ms` (None: the replica's)."""
    from cluster.bench.duplex.report import write_report  # matplotlib (if any) only when reporting

    if speech_source not in SPEECH_SOURCES:
        raise ValueError(f"speech_source must be one of {sorted(SPEECH_SOURCES)} (got {speech_source!r})")
    started = time.monotonic()
    policy = _resolved(policy, config, address)
    run_dir = new_bench_dir(runs_root)
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {', '.join(NOISES)} (got {noise!r})")
    log.info("synthesising %d scenarios (seed %d; espeak-ng and festival voices; background %s%s)", scenarios,
             seed, noise, "" if noise == "none" else f" at {snr_db:g} dB SNR")
    rendered = [render(s, noise, snr_db, seed) for s in make_scenarios(scenarios, seed)]
    for item in rendered:
        item.track.write_wav(run_dir / item.scenario.name / "input.wav")
    quiet = logging.getLogger("cluster.conversation.recording")
    level = quiet.level
    if not log.isEnabledFor(logging.DEBUG):  # its per-session lines interleave unreadably at 4 at a time
        quiet.setLevel(logging.WARNING)
    try:
        async with _gateway(config, address) as gateway:
            log.info("streaming %d scenarios through %s, %d at a time, policy %s", len(rendered), gateway,
                     concurrency, policy)
            opening = {"turn_policy": None if policy == "auto" else policy, "end_silence_ms": end_silence_ms}
            recordings = await _stream_all(gateway, rendered, opening, concurrency,
                                           find_api_key(config.auth.key_file))
    finally:
        quiet.setLevel(level)
    results = [_result(item, rec, err, speech_source, run_dir) for item, (rec, err) in zip(rendered, recordings)]
    summary = _summary(results, rendered, policy, seed, concurrency, speech_source, address, run_dir,
                       {"noise": noise, "snr_db": None if noise == "none" else snr_db,
                        "end_silence_ms": end_silence_ms})
    summary["plots"] = write_report(run_dir, results, summary)
    summary["wall_s"] = round(time.monotonic() - started, 1)
    return summary


def new_bench_dir(root: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path, n = root / f"bench-{stamp}", 1
    while path.exists():
        n += 1
        path = root / f"bench-{stamp}-{n}"
    path.mkdir(parents=True)
    return path


@contextlib.asynccontextmanager
async def _gateway(config: MicroturnConfig, address: str | None) -> AsyncIterator[str]:
    """A running cluster's gateway, or an embedded cluster started (and stopped) here."""
    if address:
        yield address
        return
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)  # this process also hosts Ray's driver threads (see bench load)
    log.info("starting an embedded cluster (Redis, Ray, Serve, gateway): ~20-40 s on 2 cores")
    try:
        async with LocalCluster(config) as cluster:
            yield cluster.endpoints.gateway
            log.info("scenarios done; stopping the embedded cluster")
    finally:
        sys.setswitchinterval(switch)


def _resolved(policy: str, config: MicroturnConfig, address: str | None) -> str:
    """The policy the sessions will run, named for the report. `auto` against a running cluster
    stays `auto` (its replicas resolve it); for the embedded one it is resolved here the way
    the replica will (`foreground.engine.turn_policy.resolve_policy`)."""
    if policy != "auto" or address:
        return policy
    fg = config.foreground
    folder = fg.checkpoint or ensure_seeded_checkpoint(fg.preset)
    return resolve_policy(fg.turn_policy, head_calibrated(folder))


async def _stream_all(gateway: str, rendered: list[RenderedScenario], opening: dict, concurrency: int,
                      api_key: str | None) -> list[tuple[ConversationRecording | None, str | None]]:
    gate = asyncio.Semaphore(max(1, concurrency))
    done = 0

    async def one(client: InteractionClient, item: RenderedScenario) -> tuple[ConversationRecording | None, str | None]:
        nonlocal done
        async with gate:
            log.info("%s: streaming %.1f s of user audio", item.scenario.name, item.track.seconds)
            try:
                async with client.session(**opening) as session:
                    recording = await stream_script(session, item.track, tail_s=TAIL_S)
                outcome: tuple[ConversationRecording | None, str | None] = (recording, None)
            except Exception as e:  # one failing session must not hide the others
                log.warning("%s failed: %s: %s", item.scenario.name, type(e).__name__, e)
                outcome = (None, f"{type(e).__name__}: {e}")
            done += 1
            log.info("[%d/%d] %s streamed", done, len(rendered), item.scenario.name)
            return outcome

    async with InteractionClient(gateway, api_key) as client:
        return await asyncio.gather(*(one(client, item) for item in rendered))


def _result(item: RenderedScenario, recording: ConversationRecording | None, error: str | None,
            speech_source: str, run_dir: Path) -> ScenarioResult:
    s = item.scenario
    result = ScenarioResult(s.name, s.kind, s.voice, s.rate_wpm, item.truth, s.pause_breaks_s, s.ending,
                            user_s=round(item.track.seconds, 2), error=error)
    if recording is None:
        return result
    folder = run_dir / s.name
    recording.write_wav(folder / "output.wav")
    recording.write_events(folder / "events.jsonl")
    counts = measure(recording, None)
    speech = analyse(recording)
    segments, sources = with_words(speech.spans(speech_source), speech.texts)
    truth = item.truth
    result.score = score(truth, segments)
    result.segments, result.word_sources = segments, sources
    result.energy, result.flags, result.events = speech.energy, speech.flags, speech.events
    result.agreement = (agreement(speech.energy, speech.flags) | events_match(speech)
                        | {"max_arrival_gap_s": speech.max_arrival_gap_s})
    result.ticks, result.late_chunks = counts["ticks"], counts["late_chunks"]
    if counts["errors"]:
        result.error = "; ".join(counts["errors"])
    sc = result.score
    if s.kind == "turn_taking" and sc.takeover == 1 and sc.latency_s is not None:
        first = min(seg.start_s for seg in sc.window if seg.words > 0)
        result.stages = turn_taking_stages(recording, speech, truth.turn_end_s, first, sc.latency_s)
    if s.kind == "interruption" and sc.stop_latency_s is not None and truth.cue_start_s is not None:
        result.stop_stages = stop_stages(recording, speech, truth.cue_start_s,
                                         truth.cue_start_s + sc.stop_latency_s, sc.stop_latency_s)
    log.info("%s: %s", s.name, _one_line(result))
    return result


def _one_line(r: ScenarioResult) -> str:
    sc = r.score
    if sc is None:
        return f"error: {r.error}"
    parts = [f"TO={sc.takeover}"]
    for name, value in (("latency", sc.latency_s), ("stop", sc.stop_latency_s)):
        if value is not None:
            parts.append(f"{name}={value:.3f}s")
    if sc.pause_onset is not None:
        parts.append(f"pause_onset={int(sc.pause_onset)}")
    if sc.stopped is not None:
        parts.append(f"stopped={int(sc.stopped)}")
    if sc.kept is not None:
        parts.append(f"kept={int(sc.kept)}")
    if sc.early_start:
        parts.append("early_start=1")
    parts.append(f"model spans={len(r.segments)}")
    return " ".join(parts)


def _summary(results: list[ScenarioResult], rendered: list[RenderedScenario], policy: str, seed: int,
             concurrency: int, speech_source: str, address: str | None, run_dir: Path, background: dict) -> dict:
    scored = [r for r in results if r.score is not None]
    sources = [src for r in scored for src in r.word_sources]
    starts = [e.cause for r in scored for e in r.events if e.kind == "MODEL_SPEECH_STARTED"]
    kinds = [r.kind for r in results]
    out: dict = {
        "bench": "duplex",
        "policy": policy,
        "scenarios": len(results),
        "scored": len(scored),
        "kinds": {k: kinds.count(k) for k in dict.fromkeys(kinds)},
        "seed": seed,
        **background,
        "voices": sorted({r.voice for r in results}),
        "rates_wpm": sorted({r.rate_wpm for r in results}),
        "rates_wpm_range": [RATES_WPM[0], RATES_WPM[-1]],
        "speech_source": SPEECH_SOURCES[speech_source],
        "word_source": describe_word_source(sources, WORDS_PER_S),
    }
    out.update(summarize([r.score for r in scored if r.score]))
    tt = [r.stages for r in scored if r.stages]
    out["turn_taking_breakdown_ms"] = mean_stages(tt, TURN_TAKING_STAGES)
    out["turn_taking_breakdown_note"] = (
        f"means over {len(tt)} takes (they add up to the mean latency; per take in scenarios.csv): "
        f"silence_threshold is the policy's {SILENCE_THRESHOLD_MS:.0f} ms wait, chunking the rounding of turn end "
        f"+ threshold up to a 200 ms chunk boundary, vad the rest of the audio heard (the VAD's view of the end "
        f"vs the true one: per take often a whole tick either way)")
    out["interruption_stop_breakdown_ms"] = mean_stages([r.stop_stages for r in scored if r.stop_stages],
                                                        STOP_STAGES)
    out["speech_agreement"] = merge_agreement([r.agreement for r in scored])
    out["model_speech_start_causes"] = {c: starts.count(c) for c in sorted(set(starts))}
    out["late_chunks"] = sum(r.late_chunks for r in scored)
    out["ticks"] = sum(r.ticks for r in scored)
    out["errors"] = [f"{r.name}: {r.error}" for r in results if r.error]
    out["concurrency"] = concurrency
    out["cluster"] = address or "embedded LocalCluster"
    out["user_audio_s"] = round(sum(i.track.seconds for i in rendered), 1)
    out["run_dir"] = str(run_dir)
    return out
