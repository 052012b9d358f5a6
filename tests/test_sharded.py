"""``medtune train`` under FSDP2 (the engine's ``fully_shard`` path) on 2 CPU processes: clipping sees
the live sharded parameters, full fine-tuning steps, the engine's sharded checkpoints resume to the
uninterrupted run's weights, and the model files hold full tensors.

accelerate enables FSDP on GPUs only, so tests/fsdp2_worker.py switches the engine's accelerate state
to FSDP2 right after ``medtune train`` builds it (see there); tests/test_gpu.py runs the same on a GPU
through ``accelerate launch``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_train import config, write_yaml

WORKER = Path(__file__).parent / "fsdp2_worker.py"


def torchrun(*args: str) -> None:
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([exe, "--standalone", "--nproc_per_node", "2", str(WORKER), *args],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_sharded_run_clips_live_parameters_and_resumes_to_the_same_weights(tiny_llama, tmp_path, method):
    """FSDP2: every step's clipped norm is of the live sharded gradients (> 0), full fine-tuning
    steps, and a run resumed from its step-2 checkpoint ends with the uninterrupted run's weights."""
    settings = dict(method=method, max_steps=4, save_every=2, keep_checkpoints=5, grad_accum=1, **{"lora.dropout": 0.0})
    out = tmp_path / "run"
    torchrun(str(write_yaml(config(tiny_llama, out, **settings), tmp_path / "run.yaml")))
    curves = json.loads((out / "curves.json").read_text())
    assert (curves["run"]["parallelism"], curves["run"]["processes"]) == ("FSDP", 2)
    norms = [h["grad_norm"] for h in curves["history"]]
    assert len(norms) == 4 and all(n > 0 for n in norms), norms

    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    final = load_file(str(out / "model" / weights))
    if method == "full":
        assert final["model.embed_tokens.weight"].shape == (400, 32)  # full tensors, not one process's shard
        from transformers import AutoModelForCausalLM

        loaded = dict(AutoModelForCausalLM.from_pretrained(str(out / "model")).named_parameters())
        assert all(torch.equal(loaded[n], final[n]) for n in final if n in loaded)
    else:
        assert final and all("lora_" in k for k in final)

    again = tmp_path / "again"  # the run as if killed right after its step-2 checkpoint
    shutil.copytree(out, again)
    shutil.rmtree(again / "model")
    for d in (again / "checkpoints").glob("checkpoint-*"):
        if d.name != "checkpoint-2":
            shutil.rmtree(d)
    torchrun(str(write_yaml(config(tiny_llama, again, **settings), tmp_path / "again.yaml")), "--resume")
    got = load_file(str(again / "model" / weights))
    assert got.keys() == final.keys()
    assert all(torch.equal(got[k], final[k]) for k in final)  # exact: same shards, same reductions
    loss = lambda d: [h["loss"] for h in json.loads((d / "curves.json").read_text())["history"]]
    assert loss(again) == loss(out)
