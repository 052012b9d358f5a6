"""Training: artifacts, exact kill-and-resume, 2 processes = 1 process, non-finite loss, loss modes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medtune.data.build import open_blocks
from medtune.errors import MedtuneError
from medtune.train.config import TrainConfig
from medtune.train import checkpoint
from medtune.train.run import TrainError, train

FIXTURES = Path(__file__).parent / "fixtures"


def config(tiny_llama: Path, out: Path, **kw) -> dict:
    cfg = {
        "model": {"spec": str(tiny_llama)},
        # 3 blocks a shard: every run reads across shard files, and checkpoints fall mid-shard.
        "data": {"data_root": str(FIXTURES), "tokenizer": str(tiny_llama), "block_size": 32, "general_share": 0.2,
                 "shard_tokens": 96,
                 "train": [{"adapter": "medmcqa", "path": "medmcqa/dev.json"},
                           {"adapter": "pubmedqa", "path": "pubmedqa/ori_pqal.json", "split": "trainval"}],
                 "replay": [{"adapter": "text", "path": "text/replay.txt"}]},
        "micro_batch_size": 2, "grad_accum": 2, "max_steps": 12, "save_every": 3, "learning_rate": 5e-3,
        "out": str(out), "progress": False,
    }
    for key, value in kw.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


def write_yaml(cfg: dict, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def test_lora_run_writes_its_artifacts(tiny_llama, tmp_path):
    out = train(TrainConfig.model_validate(config(tiny_llama, tmp_path / "run", max_steps=4, save_every=0)))
    for name in ("model/adapter_model.safetensors", "model/adapter_config.json", "model/tokenizer.json", "config.yaml",
                 "curves.json", "curves.png", "README.md", "data/manifest.json", "data/shards/index.json"):
        assert (out / name).is_file(), name
    curves = json.loads((out / "curves.json").read_text())
    assert [h["step"] for h in curves["history"]] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in curves["history"])
    adapter = load_file(str(out / "model/adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items()), "training moved the adapter"
    assert "lora" in (out / "README.md").read_text()


def test_full_finetuning_writes_full_weights(tiny_llama, tmp_path):
    out = train(TrainConfig.model_validate(config(tiny_llama, tmp_path / "full", method="full", max_steps=2, save_every=0)))
    before = load_file(str(tiny_llama / "model.safetensors"))
    after = load_file(str(out / "model" / "model.safetensors"))
    assert before.keys() == after.keys()
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"])


def run_cli(cfg_path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "medtune", "train", str(cfg_path), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


# Runs `medtune train CONFIG` and SIGKILLs itself at a chosen point, so the test does not race a
# fast tiny run: "after" = right after checkpoint KILL_STEP is published, "during" = while the engine
# writes its files (the staging directory is half full and the checkpoint name does not exist yet).
KILLER = """
import os, signal, sys
import torch
from medtune.train import checkpoint
when, step = sys.argv[1], int(sys.argv[2])
real_save, real_torch_save = checkpoint.save, torch.save
def save(root, s, *a, **k):
    path = real_save(root, s, *a, **k)
    if when == "after" and s == step:
        os.kill(os.getpid(), signal.SIGKILL)
    return path
def torch_save(obj, f, *a, **k):
    real_torch_save(obj, f, *a, **k)
    if when == "during" and f"checkpoint-{step}/" in str(f) and str(f).endswith("optimizer.pt"):
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.save, torch.save = save, torch_save
from medtune.cli import main
sys.argv = ["medtune", "train", sys.argv[3]]
main()
"""


@pytest.mark.parametrize(("when", "kill_step", "resumes_from"), [("after", 6, 6), ("during", 6, 3)])
def test_sigkill_and_resume_gives_the_same_weights(tiny_llama, tmp_path, when, kill_step, resumes_from):
    """Killed with SIGKILL mid-run, then resumed: the final adapter equals an uninterrupted run's, bit for bit."""
    ref_cfg = write_yaml(config(tiny_llama, tmp_path / "ref"), tmp_path / "ref.yaml")
    assert run_cli(ref_cfg).wait(timeout=300) == 0
    cfg = write_yaml(config(tiny_llama, tmp_path / "killed"), tmp_path / "killed.yaml")
    killed = subprocess.run([sys.executable, "-c", KILLER, when, str(kill_step), str(cfg)],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    out = tmp_path / "killed"
    assert not (out / "model").exists(), "killed before the end"
    assert [p.name for p in checkpoint.checkpoint_dirs(out)][-1] == f"checkpoint-{resumes_from}"
    resumed = run_cli(cfg, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    ref = load_file(str(tmp_path / "ref" / "model" / "adapter_model.safetensors"))
    got = load_file(str(out / "model" / "adapter_model.safetensors"))
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    loss = lambda d: [h["loss"] for h in json.loads((d / "curves.json").read_text())["history"]]
    assert loss(tmp_path / "ref") == loss(out)


def test_existing_checkpoints_need_resume(tiny_llama, tmp_path):
    cfg = config(tiny_llama, tmp_path / "run", max_steps=4, save_every=2)
    train(TrainConfig.model_validate(cfg))
    with pytest.raises(TrainError, match="--resume"):
        train(TrainConfig.model_validate(cfg))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_llama, tmp_path, monkeypatch):
    from medtune.train import loss as loss_mod

    real = loss_mod.chunked_ce_sum
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] > 10 else value  # from step 6 on (2 micro-batches a step)

    monkeypatch.setattr(loss_mod, "chunked_ce_sum", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(TrainError, match=r"non-finite loss \(nan\) at step 6.*checkpoint-3"):
        train(TrainConfig.model_validate(config(tiny_llama, out, save_every=3)))
    assert (out / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors").is_file()
    assert not (out / "checkpoints" / "checkpoint-6").exists(), "the step with the non-finite loss is not saved"
    assert not (out / "model").exists()


def test_answer_only_loss_trains_on_answers(tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    out = train(TrainConfig.model_validate(config(tiny_llama, tmp_path / "ans", loss="answer_only", max_steps=2,
                                                  save_every=0, **{"data.general_share": 0.0})))
    blocks = open_blocks(out / "data").all()
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    ids, mask = blocks["input_ids"].flatten(), blocks["answer_mask"].flatten().astype(bool)
    answers = tok.decode(ids[mask].tolist())
    questions = tok.decode(ids[~mask & blocks["attention_mask"].flatten().astype(bool)].tolist())
    assert "Vitamin A" in answers and "Question:" not in answers
    assert "Question:" in questions
    assert 0 < int(mask.sum()) < int(blocks["attention_mask"].sum())


@pytest.mark.slow
def test_two_processes_follow_the_same_loss_curve(tiny_llama, tmp_path):
    one = write_yaml(config(tiny_llama, tmp_path / "one", save_every=0, **{"lora.dropout": 0.0}), tmp_path / "one.yaml")
    two = write_yaml(config(tiny_llama, tmp_path / "two", save_every=0, grad_accum=1, **{"lora.dropout": 0.0}), tmp_path / "two.yaml")
    assert run_cli(one).wait(timeout=300) == 0
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    proc = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "medtune", "train", str(two)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    h1 = json.loads((tmp_path / "one" / "curves.json").read_text())
    h2 = json.loads((tmp_path / "two" / "curves.json").read_text())
    assert h2["run"]["processes"] == 2 and h1["run"]["global_batch"] == h2["run"]["global_batch"] == 4
    assert (h1["run"]["parallelism"], h2["run"]["parallelism"]) == ("NO", "MULTI_CPU")
    l1 = [h["loss"] for h in h1["history"]]
    l2 = [h["loss"] for h in h2["history"]]
    assert len(l1) == len(l2) == 8  # one epoch of 30 blocks at 4 blocks a step
    assert max(abs(a - b) for a, b in zip(l1, l2)) <= 1e-5, (l1, l2)


def test_a_sharded_mode_that_accelerate_does_not_run_is_named():
    from medtune.train.run import parallelism_fallback

    assert parallelism_fallback({}, "MULTI_CPU") is None
    assert parallelism_fallback({"ACCELERATE_USE_FSDP": "true"}, "FSDP") is None
    assert parallelism_fallback({"ACCELERATE_USE_FSDP": "false"}, "MULTI_CPU") is None
    msg = parallelism_fallback({"ACCELERATE_USE_FSDP": "true"}, "MULTI_CPU")
    assert msg is not None and "asked for FSDP" in msg and "runs MULTI_CPU" in msg
    msg = parallelism_fallback({"ACCELERATE_USE_DEEPSPEED": "True"}, "NO")
    assert msg is not None and "asked for DEEPSPEED" in msg


@pytest.mark.slow
def test_fsdp_asked_for_on_cpu_warns_and_records_what_ran(tiny_llama, tmp_path):
    """accelerate enables FSDP on GPUs only: launched with --use_fsdp on CPU it runs plain data
    parallelism; the run says so on stderr and in curves.json instead of looking sharded."""
    cfg = write_yaml(config(tiny_llama, tmp_path / "fsdp", save_every=0, max_steps=2, grad_accum=1), tmp_path / "f.yaml")
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    proc = subprocess.run([accelerate, "launch", "--use_fsdp", "--fsdp_version", "2", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "medtune", "train", str(cfg)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("the launch asked for FSDP, but accelerate runs MULTI_CPU") == 1  # once, not per rank
    run = json.loads((tmp_path / "fsdp" / "curves.json").read_text())["run"]
    assert (run["processes"], run["parallelism"]) == (2, "MULTI_CPU")
    assert "parallelism MULTI_CPU" in (tmp_path / "fsdp" / "README.md").read_text()


def test_modes_whose_model_files_medtune_cannot_write_are_refused_up_front():
    """FSDP1 is refused; DeepSpeed (ZeRO-2 and 3) now runs with the engine's checkpoints."""
    from medtune.train.run import unsupported_parallelism

    for running in ("NO", "MULTI_CPU", "MULTI_GPU", "DEEPSPEED"):
        assert unsupported_parallelism(running, None) is None
    assert unsupported_parallelism("FSDP", 2) is None
    assert "fsdp_version: 2" in unsupported_parallelism("FSDP", 1)
