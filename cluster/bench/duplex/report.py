"""What a duplex run leaves in runs/bench-<stamp>/: scenarios.csv, summary.md, summary.json,
timelines.png (when matplotlib is importable) and per scenario input.wav / output.wav /
events.jsonl (written by the runner), so that every number can be traced back to audio."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from cluster.bench.duplex import metrics

if TYPE_CHECKING:
    from cluster.bench.duplex.runner import ScenarioResult

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "name", "kind", "ending", "voice", "rate_wpm", "user_s", "floor_start_s", "turn_end_s", "pauses_s", "cue_start_s",
    "cue_end_s", "takeover", "latency_s", "stop_latency_s", "model_speaking_at_cue", "stopped", "kept", "pause_onset",
    "early_start", "model_backchannels", "model_segments", "model_speech_s", "words", "word_source", "energy_spans",
    "flags_spans", "spans_agreed", "start_causes", "stages_ms", "ticks", "late_chunks", "error",
)
_SITUATIONS = (
    ("smooth turn-taking", "turn_taking", "turn_taking_tor", "turn_taking_latency_p50_s",
     "turn_taking_latency_mean_s",
     "early starts inside the user's turn: {turn_taking_early_start_rate}; FD-Bench's whole-output "
     "latency p50 {turn_taking_latency_fdbench_p50_s} s"),
    ("- ending in a question", "question", "question_tor", "question_latency_p50_s", None, ""),
    ("- ending in a statement", "statement", "statement_tor", "statement_latency_p50_s", None, ""),
    ("pause handling", "pause", "pause_tor", None, None, "pause onset rate {pause_onset_rate}"),
    ("user interruption", "interruption", "interruption_tor", "interruption_response_latency_p50_s",
     "interruption_response_latency_mean_s",
     "stop latency p50 {interruption_stop_latency_p50_s} s, mean {interruption_stop_latency_mean_s} s; "
     "model silent at onset: {interruption_model_silent_at_onset}"),
    ("backchannel", "backchannel", "backchannel_tor", None, None,
     "kept the floor (speaking 0.5 s after it ended): {backchannel_keep_rate}; its speech ended within 1 s "
     "(a stop or a hold): {backchannel_stop_rate} (p50 {backchannel_stop_latency_p50_s} s); model backchannels: "
     "{backchannel_model_backchannels}; model silent at the cue: {backchannel_model_silent_at_cue}"),
)


def write_report(run_dir: Path, results: list[ScenarioResult], summary: dict) -> str:
    """Write the files; return what happened to the plots (for the JSON)."""
    write_csv(run_dir / "scenarios.csv", results)
    plots = draw_timelines(run_dir / "timelines.png", results)
    (run_dir / "summary.md").write_text(summary_markdown(results, summary, plots))
    (run_dir / "summary.json").write_text(json.dumps(summary | {"plots": plots}, indent=2) + "\n")
    log.info("report written to %s/", run_dir)
    return plots


def csv_row(r: ScenarioResult) -> dict:
    sc, t = r.score, r.truth
    row = {
        "name": r.name, "kind": r.kind, "ending": r.ending or "", "voice": r.voice, "rate_wpm": r.rate_wpm,
        "user_s": r.user_s,
        "floor_start_s": round(t.floor_start_s, 3), "turn_end_s": round(t.turn_end_s, 3),
        "pauses_s": ";".join(f"{b - a:.2f}" for a, b in t.pauses),
        "cue_start_s": _r(t.cue_start_s), "cue_end_s": _r(t.cue_end_s),
        "model_segments": len(r.segments), "model_speech_s": round(sum(s.duration_s for s in r.segments), 2),
        "words": sum(s.words for s in r.segments),
        "word_source": "+".join(sorted(set(r.word_sources))) or "-",
        "energy_spans": len(r.energy), "flags_spans": len(r.flags), "spans_agreed": r.agreement.get("agreed", ""),
        "start_causes": ";".join(e.cause for e in r.events if e.kind == "MODEL_SPEECH_STARTED"),
        "stages_ms": ";".join(f"{k}={v}" for k, v in (r.stages or r.stop_stages or {}).items() if v),
        "ticks": r.ticks, "late_chunks": r.late_chunks, "error": r.error or "",
    }
    if sc is not None:
        row.update(takeover=sc.takeover, latency_s=_r(sc.latency_s), stop_latency_s=_r(sc.stop_latency_s),
                   model_speaking_at_cue=_r(sc.model_speaking_at_cue), stopped=_r(sc.stopped), kept=_r(sc.kept),
                   pause_onset=_r(sc.pause_onset), early_start=_r(sc.early_start),
                   model_backchannels=_r(sc.model_backchannels))
    return {k: row.get(k, "") for k in CSV_COLUMNS}


def write_csv(path: Path, results: list[ScenarioResult]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in results:
            writer.writerow(csv_row(r))


def summary_markdown(results: list[ScenarioResult], summary: dict, plots: str) -> str:
    lines = [
        f"# bench duplex: policy `{summary['policy']}`, {summary['scenarios']} scenarios, seed {summary['seed']}",
        "",
        f"- speech source: {summary['speech_source']}",
        f"- word source: {summary['word_source']}",
        f"- voices: {', '.join(summary['voices'])}; rates {summary['rates_wpm']} wpm",
        f"- background: {_background(summary)}",
        f"- early starts (model speech beginning inside a user turn it should answer: turn-taking, interruption "
        f"and backchannel context turns): {_v(summary.get('early_start_rate'))} "
        f"({_v(summary.get('early_start_n'))} scenarios)",
        f"- cluster: {summary['cluster']}, {summary['concurrency']} sessions at a time; "
        f"late chunks {summary['late_chunks']} of {summary['ticks']} ticks",
        f"- plots: {plots}",
        "",
        "| situation | n | TOR | latency p50 (s) | latency mean (s) | also |",
        "|---|---|---|---|---|---|",
    ]
    for title, kind, tor, p50, mean, also in _SITUATIONS:
        lines.append(f"| {title} | {summary.get(kind + '_n', 0)} | {_v(summary.get(tor))} | "
                     f"{_v(summary.get(p50)) if p50 else '-'} | {_v(summary.get(mean)) if mean else '-'} | "
                     f"{also.format(**{k: _v(v) for k, v in summary.items()})} |")
    stages = summary.get("turn_taking_breakdown_ms")
    if stages:
        lines += ["", "Turn-taking latency, where the time went (ms, means over the takes; they add up):", "",
                  "| " + " | ".join(k for k in stages if k not in ("causes", "n")) + " |",
                  "|" + "---|" * sum(1 for k in stages if k not in ("causes", "n")),
                  "| " + " | ".join(str(v) for k, v in stages.items() if k not in ("causes", "n")) + " |"]
    agree = summary.get("speech_agreement") or {}
    lines += ["", f"Energy detector vs AudioOut.speech flags: {json.dumps(agree)}", "",
              "| scenario | TO | latency (s) | stop (s) | model spans | user pauses (s) | causes | error |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        row = csv_row(r)
        lines.append(f"| {r.name} | {row['takeover']} | {row['latency_s']} | {row['stop_latency_s']} | "
                     f"{row['model_segments']} | {row['pauses_s'] or '-'} | {row['start_causes'] or '-'} | "
                     f"{row['error'] or ''} |")
    lines += ["", "## Definitions", "", (metrics.__doc__ or "").strip(), ""]
    return "\n".join(lines)


def draw_timelines(path: Path, results: list[ScenarioResult]) -> str:
    """One row per scenario: the user's speech, the model's speech both ways, turn events."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not importable in this environment: no timeline plots")
        return "not drawn: matplotlib is not importable in this environment"
    rows = max(1, len(results))
    fig, axes = plt.subplots(rows, 1, figsize=(12, 1.4 * rows + 0.6), squeeze=False, sharex=True)
    for ax, r in zip(axes[:, 0], results, strict=False):
        t = r.truth
        user = _minus(t.floor_start_s, t.turn_end_s, list(t.pauses))
        if t.cue_start_s is not None and t.cue_end_s is not None:
            user.append((t.cue_start_s, t.cue_end_s))
        ax.broken_barh([(a, b - a) for a, b in user], (2.0, 0.8), color="tab:blue")
        ax.broken_barh([(a, b - a) for a, b in r.energy], (1.0, 0.8), color="tab:orange")
        ax.broken_barh([(a, b - a) for a, b in r.flags], (0.2, 0.5), color="tab:green")
        ax.axvline(t.turn_end_s, color="black", lw=0.8, ls="--")
        for e in r.events:
            if e.kind.startswith("MODEL_SPEECH") or e.kind == "INTERRUPTED":
                ax.axvline(e.t_s, color="tab:red" if e.kind != "MODEL_SPEECH_STARTED" else "tab:green",
                           lw=0.6, alpha=0.7)
        ax.set_yticks([0.45, 1.4, 2.4], ["flags", "model", "user"])
        ax.set_ylim(0, 3)
        ax.set_title(f"{r.name}  TO={r.score.takeover if r.score else '-'}", fontsize=8, loc="left")
    axes[-1, 0].set_xlabel("seconds on the user-audio timeline")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return f"drawn: {path.name}"


def _minus(start: float, end: float, holes: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """[start, end) without the holes (the user's voiced stretches around their pauses)."""
    out, cursor = [], start
    for a, b in sorted(holes):
        if a > cursor:
            out.append((cursor, a))
        cursor = max(cursor, b)
    if end > cursor:
        out.append((cursor, end))
    return out


def _background(summary: dict) -> str:
    if summary.get("noise", "none") == "none":
        return "none (clean)"
    return (f"{summary['noise']} at {summary['snr_db']:g} dB SNR (the user's speech RMS over its voiced spans "
            f"above the background's, over the whole track)")


def _r(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    return round(value, 3) if isinstance(value, float) else value


def _v(value) -> str:
    return "-" if value is None else str(value)
