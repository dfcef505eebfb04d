"""`benchmarks/run_all.py --quick` runs every benchmark on CPU, writes every JSON, and the summary matches it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_all_benchmarks_write_json_and_the_summary_quotes_it(tmp_path):
    env = dict(os.environ, USJEPA_BENCH_RESULTS=str(tmp_path), USJEPA_BENCH_SMOKE="1")  # smallest cases
    subprocess.run([sys.executable, "benchmarks/run_all.py", "--quick"], cwd=ROOT, env=env, check=True,
                   timeout=1200, capture_output=True)
    for name in ("attention", "train", "teacher", "data", "probe"):
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data.get("machine", data).get("torch"), name  # every result names the torch it ran on
    summary = (tmp_path / "README.md").read_text()
    train = json.loads((tmp_path / "train.json").read_text())
    for row in train["rows"]:  # every measured row appears with the JSON's own numbers
        line = next(ln for ln in summary.splitlines() if ln.startswith(f"| {row['name']} |"))
        assert f"{row['median_s']:.4g}" in line and f"{row['images_per_s']:.4g}" in line
    for key, value in train["ratios"].items():
        assert f"| {key} | {value:.3f} |" in summary
