"""The Triton kernels under `TRITON_INTERPRET=1`, in a fresh Python process.

The interpreter patches `triton.language` while a kernel runs; once another library (vLLM,
xgrammar) has imported and used Triton in the same process, that patching fails ("Cannot call
@triton.jit'd outside of the scope of a kernel"). So the checks in
`triton_interpreter_checks.py` run in their own interpreter, and this test reports their result.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

CHECKS = Path(__file__).with_name("triton_interpreter_checks.py")


@pytest.mark.timeout(600)
def test_triton_kernels_match_the_torch_path_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CHECKS)],
                          capture_output=True, text=True, env=env, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
