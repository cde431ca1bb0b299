"""Each example in examples/ runs as it stands, for a few steps (the step count is its one argument)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def test_every_example_is_one_screen():
    assert {p.name for p in EXAMPLES} >= {"own_model.py", "gpt_kjv.py", "resnet_mnist.py"}
    for path in EXAMPLES:
        assert len(path.read_text().splitlines()) <= 50, path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path, tmp_path):
    if not (SHARED_DATA / "mnist").is_dir() or not (SHARED_DATA / "text").is_dir():
        pytest.skip(f"data mirror not found at {SHARED_DATA}")
    env = {**os.environ, "DNI_PIPELINE_DATA": str(SHARED_DATA)}
    done = subprocess.run([sys.executable, str(path), "3"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test" in done.stdout or "bits" in done.stdout, done.stdout
