"""The command line lists the commands of DESIGN.md §5 and fails clearly on bad config."""

import subprocess
import sys

import pytest

MICROTURN = [sys.executable, "-m", "cluster.cli"]


def test_help_lists_every_command():
    out = subprocess.run([*MICROTURN, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("up", "demo", "talk", "bench", "checkpoint"):
        assert f"    {command}" in out


@pytest.mark.timeout(60)
def test_invalid_config_exits_2_naming_the_key(tmp_path):
    env = {"MICROTURN_FOREGROUND_TICK_MS": "0", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([*MICROTURN, "up"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert "foreground.tick_ms" in proc.stderr
