"""The `microturn` command line (DESIGN.md §5): the contract operators and benchmarks rely on."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from cluster.backgrounds import BENCH_KINDS
from cluster import event_loop
from cluster.config import ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microturn",
        description="Serve full-duplex interaction models in 200 ms micro-turns.",
    )
    parser.add_argument("--config", type=Path, help="YAML config file (MICROTURN_* env overrides it)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start everything locally (or join RAY_ADDRESS), print endpoints, run until stopped")
    up.add_argument("--checkpoint", type=Path,
                    help="serve this checkpoint folder (either family: a reference-model checkpoint or a "
                         "Moshi-family folder in Kyutai's layout); default: foreground.checkpoint")
    gateway = commands.add_parser("gateway", help="serve only the gateway, against RAY_ADDRESS and MICROTURN_REDIS_URL "
                                                  "(a Kubernetes Deployment runs this)")
    gateway.add_argument("--host", help="address to bind (default: serve.host)")
    gateway.add_argument("--port", type=int, help="gRPC port (default: serve.grpc_port)")
    gateway.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (default: serve.metrics_port; "
                                                          "0 or unset: none)")
    gateway.add_argument("--wait-s", type=float, default=1800.0,
                         help="how long to wait for the foreground app to appear before giving up")
    demo = commands.add_parser("demo", help="start, hold a scripted conversation, write runs/<stamp>/, stop")
    demo.add_argument("--runs", type=Path, default=Path("runs"), help="where run folders go")

    talk = commands.add_parser("talk", help="stream a WAV to a running cluster and save what comes back")
    talk.add_argument("--wav", type=Path, help="mono PCM16 WAV, 16 or 24 kHz (default: a synthetic voice)")
    talk.add_argument("--out", type=Path, help="the model's audio, 24 kHz WAV; events go to OUT.events.jsonl "
                                               "(default: runs/talk-<stamp>.wav)")
    talk.add_argument("--address", default=None, help="gateway address (default: serve.host:serve.grpc_port)")
    talk.add_argument("--direct", action="store_true",
                      help="open through the gateway, then stream straight to the replica")
    talk.add_argument("--tail-s", type=float, default=3.0, help="seconds of silence after the WAV")
    talk.add_argument("--policy", choices=["model", "vad", "hybrid"], help="turn policy (default: the server's)")
    talk.add_argument("--end-silence-ms", type=int,
                      help="silence to wait before the model answers (default: the server's)")

    bench = commands.add_parser("bench", help="benchmarks: tick | load | soak | duplex | compare | parity | moshi-ref")
    kinds = bench.add_subparsers(dest="kind", required=True, metavar="KIND")
    tick = kinds.add_parser("tick", help="sessions per foreground replica in real time")
    tick.add_argument("--sessions", type=int, default=64)
    tick.add_argument("--ticks", type=int, default=50)
    tick.add_argument("--preset", default="tiny")
    tick.add_argument("--checkpoint", type=Path, help="a checkpoint folder (default: the seeded one)")
    tick.add_argument("--policy", default="hybrid", choices=["model", "vad", "hybrid"])
    tick.add_argument("--find-max", action="store_true",
                      help="instead: the most sessions whose tick p99 stays under one tick")
    load = kinds.add_parser("load", help="many concurrent clients (gRPC or Realtime WebSocket): serving overhead "
                                         "per chunk")
    load.add_argument("--sessions", type=int, default=32)
    load.add_argument("--seconds", type=float, default=20.0)
    load.add_argument("--via", choices=["direct", "gateway", "realtime"], default="direct",
                      help="stream straight to the replica (default), through the gateway, or through the "
                           "gateway's OpenAI Realtime WebSocket")
    load.add_argument("--address", help="a running cluster's gateway (default: start one)")
    load.add_argument("--realtime-url", help="with --address and --via realtime: the gateway's HTTP URL "
                                             "(default: the address's host, port serve.realtime_port_for)")
    load.add_argument("--client-processes", type=int, default=None, metavar="N",
                      help="spread the clients over N processes (default: one per 16 sessions; 0: this process)")
    soak = kinds.add_parser("soak", help="N sessions for M minutes with churn, text, video and tools: errors, "
                                         "late chunks and every process's RSS growth")
    soak.add_argument("--sessions", type=int, default=32, help="sessions live at once")
    soak.add_argument("--minutes", type=float, default=10.0)
    soak.add_argument("--via", choices=["mixed", "direct", "gateway"], default="mixed",
                      help="stream straight to the replica, through the gateway, or half each (default)")
    soak.add_argument("--warmup-s", type=float, help="RSS baseline after this long (default: the longest "
                      "session plus limits.events_kept_after_close_s, when Redis holds a steady state; at most 40%% of the run)")
    soak.add_argument("--address", help="a running cluster's gateway (default: start one)")
    duplex = kinds.add_parser("duplex", help="Full-Duplex-Bench-style turn-taking on synthesised dialogues")
    duplex.add_argument("--scenarios", type=int, default=40,
                        help="dialogues: pause, question, interruption, statement, backchannel in turn (40: 8 each)")
    duplex.add_argument("--seed", type=int, default=0, help="voices, rates, sentences and pauses")
    duplex.add_argument("--policy", default="auto", choices=["auto", "model", "vad", "hybrid"],
                        help="auto (default): what the cluster's config resolves to (model with a trained turn head)")
    duplex.add_argument("--address", help="a running cluster's gateway (default: start one)")
    duplex.add_argument("--concurrency", type=int, default=4, help="sessions streamed at a time")
    duplex.add_argument("--speech-source", default="energy", choices=["energy", "flags"],
                        help="model speech for the metrics: output-audio energy (default) or AudioOut.speech")
    duplex.add_argument("--noise", default="none", choices=BENCH_KINDS,
                        help="background mixed into the whole user track (babble: other test voices talking)")
    duplex.add_argument("--snr-db", type=float, default=20.0,
                        help="the user's speech RMS over its voiced spans above the background (with --noise)")
    duplex.add_argument("--end-silence-ms", type=int,
                        help="every session waits this much silence before answering (SessionOpen.end_silence_ms; "
                             "default: the server's)")
    duplex.add_argument("--runs", type=Path, default=Path("runs"), help="where runs/bench-<stamp>/ goes")
    compare = kinds.add_parser("compare", help="the same backbone: the tick engine side by side with vLLM")
    compare.add_argument("--sessions", default="8,32,64", help="comma-separated session counts")
    compare.add_argument("--ticks", type=int, default=30, help="timed ticks per side and session count")
    compare.add_argument("--warmup", type=int, default=5, help="untimed ticks first")
    compare.add_argument("--preset", default="tiny")
    compare.add_argument("--checkpoint", type=Path, help="a checkpoint folder (default: the seeded one)")
    compare.add_argument("--vllm-compile", action="store_true", help="vLLM with torch.compile (default: eager)")
    compare.add_argument("--microturn-threads", type=int, default=1,
                         help="torch threads for the tick engine (default 1: vLLM computes on one core)")
    parity = kinds.add_parser("parity", help="a Moshi-family checkpoint: microturn against the `moshi` package")
    parity.add_argument("--checkpoint", type=Path, required=True, help="a folder in Kyutai's layout")
    parity.add_argument("--sessions", type=int, default=4)
    parity.add_argument("--frames", type=int, default=50)
    moshi_ref = kinds.add_parser("moshi-ref", help="the `moshi` package served its way (batch 1 per process), timed")
    moshi_ref.add_argument("--checkpoint", type=Path, required=True, help="a folder in Kyutai's layout")
    moshi_ref.add_argument("--sessions", type=int, default=1)
    moshi_ref.add_argument("--frames", type=int, default=50)
    for sub in kinds.choices.values():
        sub.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    checkpoint = commands.add_parser("checkpoint", help="checkpoints: init")
    actions = checkpoint.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = actions.add_parser("init", help="write a seeded checkpoint (reference model or Moshi family)")
    init.add_argument("dir", type=Path)
    init.add_argument("--family", choices=["reference", "moshi"], default="reference",
                      help="reference: microturn's own model; moshi: Kyutai's layout (default: reference)")
    init.add_argument("--preset", default="tiny")
    init.add_argument("--made-by", choices=["microturn", "moshi"], default="microturn",
                      help="moshi family: weights drawn by microturn, or built by the `moshi` package's own classes")
    init.add_argument("--seed", type=int, default=0)

    train = commands.add_parser("train", help="train what trains on CPU: turns")
    parts = train.add_subparsers(dest="part", required=True, metavar="PART")
    turns = parts.add_parser("turns", help="the end-of-turn detector, on synthesised dialogues")
    turns.add_argument("--minutes", type=float, default=2.0,
                       help="work budget: data and steps sized for about this long on 2 cores (default 2)")
    turns.add_argument("--out", type=Path, default=Path("runs/turns"), help="checkpoint folder to write")
    turns.add_argument("--seed", type=int, default=0)
    turns.add_argument("--context-s", type=float, nargs="*", default=None, metavar="SECONDS",
                       help="time constants of the detector's session context (default: the preset's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cluster.client_tls import use_client_tls

    use_client_tls(config.tls)  # talk, demo and the benches reach the gateway as the config says

    if args.command == "up":
        from cluster.up import run_up

        if args.checkpoint:
            foreground = config.foreground.model_copy(update={"checkpoint": args.checkpoint})
            config = config.model_copy(update={"foreground": foreground})
        return event_loop.run(run_up(config))
    if args.command == "gateway":
        return _gateway(args, config)
    if args.command == "demo":
        from cluster.demo import new_run_dir, run_demo

        run_dir = new_run_dir(args.runs)
        summary = event_loop.run(run_demo(config, run_dir))
        print(f"demo written to {run_dir}/")
        print(json.dumps(summary, indent=2))
        return 0
    if args.command == "talk":
        return _talk(args, config)
    if args.command == "train":
        from cluster.training.turn_trainer import TrainTurnsConfig, train_turns

        if args.minutes <= 0:
            print("--minutes: must be more than 0", file=sys.stderr)
            return 2
        result = train_turns(args.out, TrainTurnsConfig(minutes=args.minutes, seed=args.seed,
                                                                 context_s=args.context_s))
        print(json.dumps({"checkpoint": str(result.checkpoint), **result.report}, indent=2))
        return 0
    if args.command == "checkpoint":
        if args.family == "moshi":
            from foreground.moshi.seeded import write_seeded_moshi

            if args.made_by == "moshi":
                from cluster.moshi_reference import write_reference_checkpoint

                print(write_reference_checkpoint(args.dir, args.preset, args.seed))
            else:
                print(write_seeded_moshi(args.dir, args.preset, args.seed))
            return 0
        from foreground.model.checkpoint import write_seeded_checkpoint

        print(write_seeded_checkpoint(args.dir, args.preset, args.seed))
        return 0
    if args.command == "bench" and args.kind == "tick":
        from cluster.bench.tick import find_max_sessions, run_tick_bench

        if args.find_max:
            result = find_max_sessions(min(args.ticks, 20), args.preset, args.checkpoint, args.policy)
        else:
            result = run_tick_bench(args.sessions, args.ticks, args.preset, args.checkpoint, args.policy)
        return _report(result, args.json)
    if args.command == "bench" and args.kind == "parity":
        from cluster.bench.parity import run_parity

        return _report(run_parity(args.checkpoint, args.sessions, args.frames), args.json)
    if args.command == "bench" and args.kind == "moshi-ref":
        from cluster.bench.moshi_ref import run_moshi_ref

        return _report(run_moshi_ref(args.checkpoint, args.sessions, args.frames), args.json)
    if args.command == "bench" and args.kind == "load":
        from cluster.bench.load import run_load

        if not args.address and config.foreground.max_sessions < args.sessions:
            config = config.model_copy(update={"foreground": config.foreground.model_copy(
                update={"max_sessions": args.sessions})})
        result = event_loop.run(run_load(config, args.sessions, args.seconds, args.via, args.address,
                                      args.client_processes, args.realtime_url))
        return _report(result, args.json)
    if args.command == "bench" and args.kind == "soak":
        return _soak(args, config)
    if args.command == "bench" and args.kind == "duplex":
        return _duplex(args, config)
    if args.command == "bench" and args.kind == "compare":
        return _compare(args)
    print(f"microturn {args.command} {getattr(args, 'kind', '')}: not available in this build yet",
          file=sys.stderr)
    return 2


def _gateway(args: argparse.Namespace, config) -> int:
    from cluster.gateway_command import check_gateway_config, run_gateway

    try:
        check_gateway_config(config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    host = args.host or config.serve.host
    port = config.serve.grpc_port if args.port is None else args.port
    metrics_port = (config.serve.metrics_port or 0) if args.metrics_port is None else args.metrics_port
    return event_loop.run(run_gateway(config, host, port, metrics_port, args.wait_s))


def _talk(args: argparse.Namespace, config) -> int:
    from cluster.conversation import UnsupportedAudio
    from cluster.local_api_key import find_api_key
    from cluster.talk import TalkError, default_out, run_talk
    from protos.tls import TlsError

    if args.tail_s < 0:
        print("--tail-s: must be 0 or more seconds", file=sys.stderr)
        return 2
    address = args.address or f"{config.serve.host}:{config.serve.grpc_port}"
    try:
        summary = event_loop.run(run_talk(address, args.out or default_out(), args.wav, args.direct,
                                       args.tail_s, args.policy, find_api_key(config.auth.key_file),
                                       args.end_silence_ms))
    except UnsupportedAudio as e:
        print(f"--wav {e}", file=sys.stderr)
        return 2
    except (TalkError, TlsError) as e:
        print(e, file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


def _soak(args: argparse.Namespace, config) -> int:
    from cluster.bench.soak import run_soak

    if args.sessions < 1 or args.minutes <= 0 or (args.warmup_s is not None and args.warmup_s < 0):
        print("--sessions must be at least 1, --minutes more than 0, --warmup-s 0 or more", file=sys.stderr)
        return 2
    if not args.address and config.foreground.max_sessions < args.sessions:
        config = config.model_copy(update={"foreground": config.foreground.model_copy(
            update={"max_sessions": args.sessions})})
    result = event_loop.run(run_soak(config, args.sessions, args.minutes, args.via, args.address, args.warmup_s))
    return _report(result, args.json)


def _duplex(args: argparse.Namespace, config) -> int:
    from cluster.bench.duplex import run_duplex

    if args.scenarios < 1 or args.concurrency < 1:
        print("--scenarios and --concurrency must be at least 1", file=sys.stderr)
        return 2
    if not args.address and config.foreground.max_sessions < args.concurrency:
        config = config.model_copy(update={"foreground": config.foreground.model_copy(
            update={"max_sessions": args.concurrency})})
    result = event_loop.run(run_duplex(config, args.scenarios, args.seed, args.policy, args.address, args.runs,
                                    args.concurrency, args.speech_source, args.noise, args.snr_db,
                                    args.end_silence_ms))
    return _report(result, args.json)


def _compare(args: argparse.Namespace) -> int:
    from cluster.bench.compare import run_compare

    try:
        sessions = [int(s) for s in args.sessions.split(",") if s.strip()]
        if not sessions or min(sessions) < 1 or args.ticks < 1 or args.warmup < 0 or args.microturn_threads < 1:
            raise ValueError
    except ValueError:
        print("--sessions: comma-separated counts >= 1 (e.g. 1,8,32); --ticks, --microturn-threads >= 1; "
              "--warmup >= 0",
              file=sys.stderr)
        return 2
    result = run_compare(sessions, args.ticks, args.preset, args.checkpoint, args.warmup,
                         vllm_compile=args.vllm_compile, microturn_threads=args.microturn_threads)
    return _report(result, args.json)


def _report(result: dict, as_json: bool) -> int:
    """Benchmarks: a readable table, then (with --json) one JSON object as the last line."""
    for key, value in result.items():
        if not isinstance(value, dict):
            print(f"{key:>24}: {value}", file=sys.stderr if as_json else sys.stdout)
    if as_json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
