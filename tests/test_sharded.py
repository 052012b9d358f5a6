"""FSDP2-sharded training state: medtune's checkpoints and model files hold full tensors, gathered
from the shards, and a resumed sharded run ends where the uninterrupted one does.

accelerate enables FSDP on GPUs only, so ``medtune train`` cannot be launched sharded on CPU; these
tests shard the tiny model with torch's own ``fully_shard`` on 2 CPU processes (gloo) and drive the
checkpoint and model-writing code that ``medtune train`` calls (tests/fsdp2_worker.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).parent / "fsdp2_worker.py"


def torchrun(*args: str) -> None:
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([exe, "--standalone", "--nproc_per_node", "2", str(WORKER), *args],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_sharded_run_checkpoints_full_tensors_and_resumes_to_the_same_weights(tiny_llama, tmp_path, method):
    out = tmp_path / method
    out.mkdir()
    torchrun(str(tiny_llama), str(out), method, "run")
    final = load_file(str(out / "final.safetensors"))
    ckpt = out / "checkpoints" / "step-000002"
    saved = load_file(str(ckpt / "trainable.safetensors"))
    assert set(saved) == set(final) and len(saved) > 0
    for name, t in saved.items():
        assert t.shape == final[name].shape  # full tensors, not one process's shard
        assert not torch.equal(t, final[name]) or "norm" in name  # step 2 is not step 4
    if method == "lora":
        assert all("lora_" in n for n in saved)
    else:
        assert saved["model.embed_tokens.weight"].shape == (400, 32)
    opt = load_file(str(ckpt / "optimizer.safetensors"))
    assert {k.split(".", 1)[1] for k in opt} == {"step", "exp_avg", "exp_avg_sq"}
    assert len({k.split(".", 1)[0] for k in opt}) == len(saved)  # one state per trainable parameter, by index

    torchrun(str(tiny_llama), str(out), method, "resume")
    resumed = load_file(str(out / "final-resumed.safetensors"))
    assert set(resumed) == set(final)
    assert all(torch.equal(resumed[n], final[n]) for n in final)  # exact: same shards, same reductions

    model_files = {p.name for p in (out / "model").iterdir()}
    if method == "lora":
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        assert "adapter_model.safetensors" in model_files
        adapter = load_file(str(out / "model" / "adapter_model.safetensors"))
        assert len(adapter) == len(final)
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_llama)), str(out / "model"))
        params = dict(loaded.named_parameters())
        assert all(torch.equal(params[n], t) for n, t in final.items())
    else:
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(str(out / "model"))
        params = dict(loaded.named_parameters())
        assert all(torch.equal(params[n], final[n]) for n in params)
