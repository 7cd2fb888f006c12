"""`microturn bench duplex`: Full-Duplex-Bench v1's four situations on synthesised dialogues.

- `scenarios`: seeded dialogues in held-out espeak-ng and festival voices (pause handling, smooth
  turn-taking ending in questions and statements, user interruption, backchannel), their ground
  truth, and an optional background (`--noise`, `--snr-db`);
- `speech_out`: where the model spoke, from the received audio's energy and from the server's
  speech flags / turn events, cross-checked, with word counts;
- `metrics`: FD-Bench v1's rules (takeover, TOR, latencies) on one timeline - pure, tested on
  hand-made timelines;
- `stages`: where a turn-taking latency went (threshold, chunking, VAD, tick, transport);
- `runner`: streams the scenarios through a live cluster, several sessions at a time;
- `report`: runs/bench-<stamp>/ (scenarios.csv, summary.md, summary.json, timelines.png).
"""

from cluster.bench.duplex.runner import run_duplex

__all__ = ["run_duplex"]
