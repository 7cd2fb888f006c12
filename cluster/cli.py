"""The `microturn` command line (DESIGN.md §5): the contract operators and benchmarks rely on."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from cluster.config import ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microturn",
        description="Serve full-duplex interaction models in 200 ms micro-turns.",
    )
    parser.add_argument("--config", type=Path, help="YAML config file (MICROTURN_* env overrides it)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("up", help="start everything locally (or join RAY_ADDRESS), print endpoints, run until stopped")
    demo = commands.add_parser("demo", help="start, hold a scripted conversation, write runs/<stamp>/, stop")
    demo.add_argument("--runs", type=Path, default=Path("runs"), help="where run folders go")

    talk = commands.add_parser("talk", help="stream a WAV to a running cluster and save what comes back")
    talk.add_argument("--wav", type=Path)
    talk.add_argument("--out", type=Path)
    talk.add_argument("--address", default=None, help="gateway address (default: serve.host:serve.grpc_port)")

    bench = commands.add_parser("bench", help="benchmarks: tick | load | duplex | compare")
    bench.add_argument("kind", choices=["tick", "load", "duplex", "compare"])
    bench.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    checkpoint = commands.add_parser("checkpoint", help="checkpoints: init")
    checkpoint.add_argument("action", choices=["init"])
    checkpoint.add_argument("dir", type=Path, nargs="?")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.command == "up":
        from cluster.up import run_up

        return asyncio.run(run_up(config))
    if args.command == "demo":
        from cluster.demo import new_run_dir, run_demo

        run_dir = new_run_dir(args.runs)
        summary = asyncio.run(run_demo(config, run_dir))
        print(f"demo written to {run_dir}/")
        print(json.dumps(summary, indent=2))
        return 0
    print(f"microturn {args.command}: not available in this build yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
