"""The demo runs end to end on a tiny model and the bundled demo sample."""

from __future__ import annotations

import json

from medtune.config import ModelConfig
from medtune.demo import DemoConfig, run_demo


def test_demo_runs_and_writes_the_training_set(tiny_llama, tmp_path):
    out = run_demo(DemoConfig(out=str(tmp_path / "demo"), model=ModelConfig(spec=str(tiny_llama)), max_new_tokens=2))
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["leakage"]["per_eval_set"]["pubmedqa_demo_test"] == 20
    train = {s["name"]: s["items"] for s in manifest["sources"] if s["role"] == "train"}
    assert train == {"pubmedqa_demo": 40, "medmcqa_demo": 60}
    assert abs(manifest["packing"]["general_share"] - 0.2) <= 0.01
