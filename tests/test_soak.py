"""`microturn bench soak`: a short run through the command line, on the suite's Ray and Redis."""

from __future__ import annotations

import json

import pytest

from cluster.cli import build_parser, main

EXPECTED_KEYS = {
    "bench", "sessions", "minutes", "via", "warmup_s", "session_lifetime_s", "sessions_opened", "sessions_closed",
    "messages_received", "messages_by_kind", "chunks_sent", "late_chunks", "replica_silent_ticks", "texts_sent",
    "video_frames_sent", "tool_requests_sent", "tool_results", "errors", "errors_by_kind", "error_samples", "rss",
    "rss_growth_pct_max", "tick_ms_p50", "tick_ms_p99", "overruns",
}


def test_the_soak_subcommand_parses():
    args = build_parser().parse_args(["bench", "soak", "--sessions", "3", "--minutes", "0.2", "--via", "gateway",
                                      "--json"])
    assert (args.kind, args.sessions, args.minutes, args.via, args.json) == ("soak", 3, 0.2, "gateway", True)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_short_soak_reports_every_key_no_error_and_each_process_rss(ray_cluster, redis_server, monkeypatch,
                                                                        capsys):
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)
    monkeypatch.setenv("MICROTURN_REDIS_URL", redis_server.url)
    monkeypatch.setenv("MICROTURN_SERVE_GRPC_PORT", "0")  # a free port: `microturn up` may hold 50151
    monkeypatch.setenv("MICROTURN_FOREGROUND_NUM_CPUS", "0.25")
    monkeypatch.setenv("MICROTURN_FOREGROUND_THREADS", "1")
    assert main(["bench", "soak", "--sessions", "4", "--minutes", "0.5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert EXPECTED_KEYS <= set(report), EXPECTED_KEYS - set(report)
    assert report["errors"] == 0, report["error_samples"]
    assert report["sessions_opened"] > 4 and report["sessions_closed"] == report["sessions_opened"]  # churn
    # A session stuck a tick late (what the catch-up rule fixed) is late on every chunk after
    # its slip; a noisy box's passing stalls are not (55 of 551 in one CI run here). The rule
    # itself is tested tick by tick in test_tick_engine.py.
    assert report["late_chunks"] <= 0.25 * report["chunks_sent"], report
    kinds = report["messages_by_kind"]
    assert kinds["audio"] > 0 and kinds["closed"] == report["sessions_closed"]
    assert report["texts_sent"] and report["video_frames_sent"] and report["tool_requests_sent"]
    rss = report["rss"]
    for label in ("replica", "background_pool", "redis-server", "client+gateway"):
        assert rss[label]["warmup_mb"] and rss[label]["end_mb"] and rss[label]["growth_pct"] is not None, rss
