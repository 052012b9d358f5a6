"""GPU paths, skipped where there is no CUDA device (CI has none; neither do the developers' machines).

`medtune train` under FSDP2 through `accelerate launch` (accelerate enables FSDP on GPUs only): the run
says it ran FSDP, and a run resumed from its step-2 checkpoint ends with the weights of the
uninterrupted one. With one GPU, FSDP2 runs on a mesh of one process (every code path but the
collectives). On a lent GPU machine, with medtune's missing dependencies carried as wheels:

    PYTHONPATH=src python3 -m pytest -q tests/test_gpu.py
"""

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

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
FSDP2 = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
         "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer", "--fsdp_reshard_after_forward", "true"]


def launch(cfg: Path, *extra: str) -> subprocess.CompletedProcess:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    n = max(torch.cuda.device_count(), 1)
    return subprocess.run([accelerate, "launch", *FSDP2, "--num_processes", str(n), "--num_machines", "1",
                           "--mixed_precision", "bf16", "--dynamo_backend", "no", "-m", "medtune", "train", str(cfg), *extra],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("method", ["lora", "full"])
def test_fsdp2_training_runs_sharded_and_resumes_to_the_same_weights(tiny_llama, tmp_path, method):
    out = tmp_path / "run"
    cfg = write_yaml(config(tiny_llama, out, method=method, max_steps=6, save_every=2, keep_checkpoints=5, grad_accum=1,
                            **{"lora.dropout": 0.0}), tmp_path / "run.yaml")
    done = launch(cfg)
    assert done.returncode == 0, done.stderr[-4000:]
    curves = json.loads((out / "curves.json").read_text())
    assert curves["run"]["parallelism"] == "FSDP", curves["run"]
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    final = load_file(str(out / "model" / weights))
    assert (out / "checkpoints" / "checkpoint-2" / "medtune_state.json").is_file()  # the engine's FSDP files beside it

    again = tmp_path / "again"  # the run as if killed after its step-2 checkpoint
    shutil.copytree(out, again)
    shutil.rmtree(again / "model")
    for d in (again / "checkpoints").glob("checkpoint-*"):
        if d.name != "checkpoint-2":
            shutil.rmtree(d)
    cfg2 = write_yaml(config(tiny_llama, again, method=method, max_steps=6, save_every=2, keep_checkpoints=5,
                             grad_accum=1, **{"lora.dropout": 0.0}), tmp_path / "again.yaml")
    resumed = launch(cfg2, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    got = load_file(str(again / "model" / weights))
    assert got.keys() == final.keys()
    worst = max(float((got[k].float() - final[k].float()).abs().max()) for k in final)
    assert worst == 0.0, f"resumed weights differ from the uninterrupted run's by up to {worst}"
