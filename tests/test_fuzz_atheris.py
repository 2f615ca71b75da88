"""Runs the atheris (libFuzzer) harness for a bounded number of inputs, where atheris installs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).parent / "fuzz" / "atheris_balancer.py"


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed here")
def test_atheris_finds_no_crash_in_message_handling(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(HARNESS), "-runs=4000", "-seed=7", f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=240, cwd=HARNESS.parents[2],
        env={**os.environ, "PYTHONPATH": str(HARNESS.parents[2])},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 4000 runs" in result.stderr
