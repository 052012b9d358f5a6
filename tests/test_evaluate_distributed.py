"""Data-parallel evaluation through accelerate: 2 CPU processes (gloo) give the same answers as 1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def run_eval(tiny_llama: Path, out: Path, processes: int) -> dict:
    cfg = out.parent / f"eval-{processes}.yaml"
    cfg.write_text(
        f"model: {{spec: {tiny_llama}}}\ntasks: pubmedqa,medmcqa,arc_challenge\ndata_root: {FIXTURES}\nout: {out}\n"
        "progress: false\ntask_sources:\n  arc_challenge: {adapter: arc, path: arc/ARC-Challenge-Test.jsonl}\n"
    )
    medtune = [sys.executable, "-m", "medtune"]
    if processes > 1:
        accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
        assert accelerate, "accelerate's launcher is installed with medtune"
        medtune = [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "medtune"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*medtune, "eval", str(cfg)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_two_processes_match_one(tiny_llama, tmp_path):
    one = run_eval(tiny_llama, tmp_path / "one", 1)
    two = run_eval(tiny_llama, tmp_path / "two", 2)
    assert two["processes"] == 2 and one["processes"] == 1
    preds = lambda d: [(p["task"], p["id"], p["pred"]) for p in map(json.loads, (d / "predictions.jsonl").read_text().splitlines())]
    assert preds(tmp_path / "one") == preds(tmp_path / "two")
    for task in one["tasks"]:
        assert one["tasks"][task]["acc"]["value"] == two["tasks"][task]["acc"]["value"]
        assert one["tasks"][task]["n"] == two["tasks"][task]["n"]
