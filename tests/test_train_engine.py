"""``medtune train`` on transformers' Trainer: the plug-ins compute what the engine computes, the
engine's accumulation boundaries (what DeepSpeed steps on), mixed precision on CPU, packing's
position ids, the weights' dtypes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medtune.train.config import TrainConfig
from test_train import config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from plain_trainer import plain_trainer_losses  # noqa: E402  (the reference lives beside the bench that uses it)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_plugins_give_the_losses_of_plain_trainer_and_peft(tiny_llama, tmp_path, method):
    """Dropout 0, same seed and batch order: medtune train (CPU plug-ins on) and plain Trainer + peft
    agree per step to 1e-3 relative over 20 steps."""
    from medtune.train.run import train

    out = tmp_path / method
    lr = 5e-3 if method == "lora" else 1e-3
    cfg = TrainConfig.model_validate(config(tiny_llama, out, method=method, max_steps=20, epochs=3, save_every=0,
                                            learning_rate=lr, **{"lora.dropout": 0.0}))
    train(cfg)
    curves = json.loads((out / "curves.json").read_text())
    assert curves["run"]["plugins"] is True
    ours = [h["loss"] for h in curves["history"]]
    plain = plain_trainer_losses(cfg, tiny_llama, out, 20)
    assert len(ours) == len(plain) == 20
    worst = max(abs(a - b) / abs(b) for a, b in zip(ours, plain))
    assert worst <= 1e-3, (worst, ours, plain)
    assert ours[-1] < ours[0]  # and training moved


class _RecordingDeepSpeedEngine:
    """Stands in for a DeepSpeed engine behind accelerate's ``DeepSpeedEngineWrapper``: records the
    accumulation boundary of each backward and each ``step`` (where DeepSpeed clips and steps)."""

    def __init__(self, optimizer_steps: list[int]) -> None:
        self.boundaries: list[bool] = []
        self.steps = 0
        self.optimizer_steps = optimizer_steps

    def set_gradient_accumulation_boundary(self, is_boundary: bool) -> None:
        self.boundaries.append(is_boundary)

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        loss.backward()

    def step(self) -> None:
        self.steps += 1


def test_deepspeed_steps_once_per_accumulated_batch(tiny_llama, tmp_path, monkeypatch):
    """With grad_accum 3, the engine marks every third micro-batch as the accumulation boundary, which
    is where accelerate lets DeepSpeed clip and step: one DeepSpeed step per optimizer step, not per micro-batch."""
    from accelerate.utils.deepspeed import DeepSpeedEngineWrapper

    from medtune.train import run

    engines: list[_RecordingDeepSpeedEngine] = []
    real_trainer = run._trainer

    def recording(*args, **kwargs):
        trainer = real_trainer(*args, **kwargs)
        acc = trainer.accelerator
        engine = _RecordingDeepSpeedEngine([])
        engines.append(engine)
        wrapped = DeepSpeedEngineWrapper(engine)
        # accelerate's DeepSpeed branch of Accelerator.backward, as it runs under DeepSpeed
        monkeypatch.setattr(acc, "backward", lambda loss, **kw: wrapped.backward(loss, sync_gradients=acc.sync_gradients, **kw))
        return trainer

    monkeypatch.setattr(run, "_trainer", recording)
    out = run.train(TrainConfig.model_validate(config(tiny_llama, tmp_path / "ds", grad_accum=3, micro_batch_size=1,
                                                      max_steps=4, save_every=0)))
    (engine,) = engines
    assert engine.boundaries == [False, False, True] * 4
    assert engine.steps == 4
    assert [h["step"] for h in json.loads((out / "curves.json").read_text())["history"]] == [1, 2, 3, 4]


def test_bf16_mixed_precision_steps_on_cpu(tiny_llama, tmp_path):
    """The engine's bf16 autocast on CPU (Accelerator(cpu=True, mixed_precision="bf16")): a LoRA run
    steps with finite losses, peft's layers taking over from the fused update under autocast."""
    from medtune.train.run import train

    out = train(TrainConfig.model_validate(config(tiny_llama, tmp_path / "bf16", max_steps=3, save_every=0,
                                                  engine={"bf16": True})))
    curves = json.loads((out / "curves.json").read_text())
    assert curves["run"]["mixed_precision"] == "bf16"
    assert all(np.isfinite(h["loss"]) for h in curves["history"]) and len(curves["history"]) == 3
    adapter = load_file(str(out / "model" / "adapter_model.safetensors"))
    assert all(t.dtype == torch.float32 for t in adapter.values())


def test_position_ids_restart_at_each_document():
    """Packed blocks: positions count from 0 at the block start and after every EOS separator (a real
    token of no source); the padding after the last EOS counts as one more (label-less) document."""
    from medtune.train.engine import position_ids

    # sources: doc 0 (3 tokens), EOS, doc 1 (2 tokens), EOS, padding x2 / a block cut mid-document
    src = np.array([[0, 0, 0, -1, 1, 1, -1, -1, -1], [1, 1, -1, 0, 0, 0, 0, 0, 0]])
    attn = np.array([[1, 1, 1, 1, 1, 1, 1, 0, 0], [1] * 9])
    assert position_ids(attn, src).tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1], [0, 1, 2, 0, 1, 2, 3, 4, 5]]


def test_packed_documents_do_not_attend_to_each_other(tiny_llama, tmp_path):
    """A document packed after another gets the logits it gets alone: the blocks' position ids (and no
    attention mask) make the model's attention block-diagonal (SDPA / eager on CPU, varlen flash-attention on GPU)."""
    from transformers import AutoModelForCausalLM

    from medtune.train.engine import position_ids

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).eval()
    a, b, eos = [5, 17, 33, 60, 7], [81, 9, 44, 12], 2
    ids = torch.tensor([a + [eos] + b])
    src = np.array([[0] * len(a) + [-1] + [1] * len(b)])
    pos = torch.from_numpy(position_ids(np.ones_like(src), src))
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0, len(a) + 1 :]
        alone = model(input_ids=torch.tensor([b]), use_cache=False).logits[0]
        leaky = model(input_ids=ids, use_cache=False).logits[0, len(a) + 1 :]  # what packing did before
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(leaky, alone, atol=1e-3)


def test_gpus_without_native_bf16_get_fp16(monkeypatch):
    """V100 / T4 (compute capability 7.x) report bf16 "supported" by emulation: they get fp16 weights
    and fp16 mixed precision; Ampere and newer get bf16."""
    from medtune import models
    from medtune.train.run import mixed_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 0))
    assert models.default_dtype() == torch.float16
    assert mixed_precision({}, cuda=True) == {"bf16": False, "fp16": True}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (8, 0))
    assert models.default_dtype() == torch.bfloat16
    assert mixed_precision({}, cuda=True) == {"bf16": True, "fp16": False}
    assert mixed_precision({"fp16": True}, cuda=True) == {}  # the config's engine settings decide
    assert mixed_precision({}, cuda=False) == {}


def _bf16_copy(tiny_llama: Path, out: Path) -> Path:
    import shutil

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.bfloat16).save_pretrained(str(out))
    for f in tiny_llama.iterdir():
        if "token" in f.name:
            shutil.copy(f, out / f.name)
    return out


@pytest.mark.parametrize(("dtype", "saved"), [("auto", torch.bfloat16), ("float32", torch.float32)])
def test_a_full_model_is_saved_in_its_base_dtype(tiny_llama, tmp_path, dtype, saved):
    """Full fine-tuning of a bf16 model (trained in fp32 on CPU) writes bf16 weights, so it merges with
    its base as it came; a dtype named in the config wins."""
    from medtune.train.run import train

    base = _bf16_copy(tiny_llama, tmp_path / "bf16-base")
    cfg = config(tiny_llama, tmp_path / "full", method="full", max_steps=2, save_every=0)
    cfg["model"] = {"spec": str(base), "dtype": dtype}
    out = train(TrainConfig.model_validate(cfg))
    weights = load_file(str(out / "model" / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {saved}
    assert json.loads((out / "model" / "config.json").read_text()).get("use_cache") is not False


def test_documents_lead_with_bos_where_the_tokenizer_adds_one(tiny_llama, tmp_path):
    """A tokenizer that starts every encoding with BOS (as evaluation contexts then do) gets BOS at the
    start of every training document: position 0, no source, no loss on it; one that adds none, none."""
    import shutil

    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from medtune.data.build import DataConfig, bos_id, build_command, open_blocks
    from medtune.train.engine import BlockDataset

    with_bos = tmp_path / "bos-tokenizer"
    shutil.copytree(tiny_llama, with_bos)
    tok = Tokenizer.from_file(str(with_bos / "tokenizer.json"))
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(with_bos / "tokenizer.json"))
    assert bos_id(AutoTokenizer.from_pretrained(str(tiny_llama))) is None
    assert bos_id(AutoTokenizer.from_pretrained(str(with_bos))) == 1

    data = config(tiny_llama, tmp_path / "unused")["data"]
    build_command(DataConfig.model_validate({**data, "tokenizer": str(with_bos), "out": str(tmp_path / "d")}))
    blocks = open_blocks(tmp_path / "d")
    rows = blocks.all()
    ids, src = rows["input_ids"].reshape(-1), rows["token_source"].reshape(-1)
    after_eos = np.flatnonzero((ids[:-1] == 2) & (src[:-1] == -1)) + 1
    after_eos = after_eos[rows["attention_mask"].reshape(-1)[after_eos] == 1]
    assert len(after_eos) > 5 and (ids[after_eos] == 1).all() and (src[after_eos] == -1).all()
    examples = BlockDataset(blocks, "all_tokens").__getitems__(list(range(len(blocks))))
    pos = torch.stack([e["position_ids"] for e in examples]).reshape(-1).numpy()
    labels = torch.stack([e["labels"] for e in examples]).reshape(-1).numpy()
    assert (pos[after_eos] == 0).all() and (pos[after_eos + 1] == 1).all()  # the BOS is no document boundary
    assert (labels[after_eos] == -100).all()


def test_memory_estimate_by_hand():
    """The estimate's parts for a hidden-32, MLP-64, 2-layer, vocab-400 model, micro-batch 2 x 32 tokens."""
    from types import SimpleNamespace

    from medtune.train.memory import RUNTIME, estimate

    cfg = SimpleNamespace(hidden_size=32, intermediate_size=64, num_hidden_layers=2, vocab_size=400)
    est = estimate(cfg, 1000, 100, 2, micro_batch=2, block=32, checkpointing=False, chunked_loss=1024,
                   activation_bytes=4, cpu=True)
    per_layer = (12 * 32 + 5 * 64) * 64 * 4
    assert (est.weights, est.gradients, est.optimizer) == (900 * 2 + 100 * 4, 400, 800)
    assert est.activations == 2 * per_layer + 64 * 400 * 4 + 64 * 32 * 4
    assert est.runtime == RUNTIME and est.total == 2200 + 400 + 800 + est.activations + RUNTIME
    ckpt = estimate(cfg, 1000, 100, 2, micro_batch=2, block=32, checkpointing=True, chunked_loss=None,
                    activation_bytes=2, cpu=False)
    assert ckpt.activations == 2 * 64 * 32 * 2 + (12 * 32 + 5 * 64) * 64 * 2 + 3 * 64 * 400 * 4
    assert ckpt.runtime == 0
    lora = estimate(cfg, 1000, 100, 2, micro_batch=2, block=32, checkpointing=False, chunked_loss=1024,
                    activation_bytes=4, cpu=True, dropout=3 * 32 + 64)
    assert lora.activations - est.activations == 2 * (3 * 32 + 64) * (4 + 1) * 64  # fp32 copies and 1-byte masks


@pytest.mark.parametrize("method", ["lora", "full"])
def test_memory_estimate_counts_the_model_on_the_meta_device(tiny_llama, method):
    """Parameters and trainable parameters counted from the config alone equal the loaded model's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from medtune.train.config import LoraSettings
    from medtune.train.memory import count

    lora = LoraSettings()
    config, n, trainable = count(str(tiny_llama), method, lora)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, target_modules=lora.target_modules,
                                                 task_type="CAUSAL_LM"))
    assert config.hidden_size == 32
    assert n == sum(p.numel() for p in model.parameters())
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad) and (trainable < n) == (method == "lora")


def test_the_estimate_is_printed_and_out_of_memory_names_what_lowers_it(tiny_llama, tmp_path, monkeypatch, capsys):
    """Before step 1 the run prints its estimated peak memory beside the free memory; a CUDA out-of-memory
    stops it with an error naming the settings that lower memory."""
    from medtune.train import engine
    from medtune.train.run import TrainError, train

    def oom(self, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine.MedtuneTrainer, "train", oom)
    with pytest.raises(TrainError, match=r"out of GPU memory \(CUDA out of memory.*estimated peak memory .* GiB.*"
                                         r"micro_batch_size.*gradient_checkpointing: true"):
        train(TrainConfig.model_validate(config(tiny_llama, tmp_path / "oom", max_steps=2, save_every=0)))
    assert "estimated peak memory" in capsys.readouterr().err


BNB = __import__("importlib").util.find_spec("bitsandbytes") is not None


@pytest.mark.skipif(BNB, reason="bitsandbytes is installed: the QLoRA run below covers it")
def test_qlora_without_bitsandbytes_is_refused_up_front(tiny_llama, tmp_path):
    """method: qlora needs bitsandbytes; without it the run stops before any work, saying so."""
    from medtune.errors import ConfigError
    from medtune.train.run import train

    with pytest.raises(ConfigError, match=r"method: qlora quantizes the base with bitsandbytes, which is not installed"):
        train(TrainConfig.model_validate(config(tiny_llama, tmp_path / "q", method="qlora", max_steps=2, save_every=0)))
    assert not (tmp_path / "q" / "data").exists()


@pytest.mark.skipif(not BNB, reason="needs bitsandbytes (not installed here; the GPU device check covers QLoRA)")
def test_qlora_trains_an_adapter_over_a_4bit_base(tiny_llama, tmp_path, monkeypatch):
    """A QLoRA run (4-bit NF4 base, double quantization) trains over bitsandbytes' 4-bit layers (its CPU
    backend here), writes a LoRA adapter, and its model card says merging applies it to the dequantized base."""
    from medtune.train import run as R
    from medtune.train.run import train

    layers: set[str] = set()
    real = R._model

    def model(*a, **k):
        built = real(*a, **k)
        layers.update(type(m).__name__ for m in built[0].modules())
        return built

    monkeypatch.setattr(R, "_model", model)
    out = train(TrainConfig.model_validate(config(tiny_llama, tmp_path / "q", method="qlora", max_steps=2, save_every=0)))
    adapter = load_file(str(out / "model" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert "4-bit NF4" in (out / "README.md").read_text() and "dequantized" in (out / "README.md").read_text()
    assert "Linear4bit" in layers  # the frozen base really is quantized


def test_engine_settings_pass_through_and_medtune_owned_keys_are_refused(tiny_llama, tmp_path):
    """`engine:` reaches TrainingArguments as given; a key medtune sets from its own field is refused naming
    that field, and a key TrainingArguments does not have is refused naming it."""
    from medtune.config import validate
    from medtune.errors import ConfigError
    from medtune.train.run import training_arguments

    with pytest.raises(ConfigError, match=r"engine: .*learning_rate \(use learning_rate\).*save_steps \(use save_every\)"):
        validate(TrainConfig, {"engine": {"learning_rate": 1e-3, "save_steps": 5}}, "t.yaml")
    cfg = validate(TrainConfig, {"out": str(tmp_path), "engine": {"torch_compile": False, "adam_beta2": 0.95,
                                                                   "report_to": "tensorboard"}}, "t.yaml")
    args = training_arguments(cfg, tmp_path, 10, cuda=False, plugins=True, checkpointing=False)
    assert (args.adam_beta2, args.report_to, args.max_steps, args.optim) == (0.95, ["tensorboard"], 10, "adamw_torch_fused")
    with pytest.raises(ConfigError, match=r"engine: no_such_setting: not a setting of transformers' TrainingArguments"):
        training_arguments(cfg.model_copy(update={"engine": {"no_such_setting": 1}}), tmp_path, 10, cuda=False,
                           plugins=True, checkpointing=False)


@pytest.mark.parametrize("cuda, plugins, installed, engine, liger", [
    (True, False, True, {}, True),            # the GPU path with liger-kernel installed: Liger's kernels
    (True, False, False, {}, False),          # not installed: off
    (False, True, True, {}, None),            # CPU: the plug-ins, never Liger (Triton needs CUDA)
    (True, True, True, {}, None),             # plug-ins forced on a GPU: they replace the loss, no Liger
    (True, False, True, {"use_liger_kernel": False}, False),  # the user's engine setting wins
])
def test_liger_kernels_are_used_on_cuda_when_installed(tmp_path, monkeypatch, cuda, plugins, installed, engine, liger):
    """use_liger_kernel reaches the engine on CUDA without the plug-ins when liger-kernel is installed, and
    only then (or as the user sets it under engine:)."""
    import importlib.util

    import transformers

    from medtune.config import validate
    from medtune.train import run

    seen: dict = {}

    class Recording(transformers.TrainingArguments):  # the engine's fields, without building the arguments
        def __init__(self, **kwargs):
            seen.update(kwargs)

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (object() if installed else None) if name == "liger_kernel" else real_find_spec(name, *a))
    monkeypatch.setattr(transformers, "TrainingArguments", Recording)
    monkeypatch.setattr(run.models, "native_bf16", lambda: True)
    cfg = validate(TrainConfig, {"out": str(tmp_path), "engine": engine}, "t.yaml")
    run.training_arguments(cfg, tmp_path, 10, cuda=cuda, plugins=plugins, checkpointing=False)
    assert seen.get("use_liger_kernel") is liger
    assert seen["use_cpu"] is (not cuda)


def test_the_chunked_loss_follows_autocast_and_keeps_no_buffer_under_it():
    """Under autocast the loss plug-in's logits GEMM runs in the autocast dtype (not an fp32 GEMM into a
    buffer kept for the process's life); without autocast it matches the fp32 loss."""
    from medtune.train import loss as L

    torch.manual_seed(0)
    h, w = torch.randn(64, 32, requires_grad=True), torch.randn(100, 32)
    y = torch.randint(0, 100, (64,))
    L._BUFFERS.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = L.chunked_ce_sum(h, w, y, chunk=16)
    assert L._BUFFERS == {}
    plain = L.chunked_ce_sum(h, w, y, chunk=16)
    ref = torch.nn.functional.cross_entropy(h @ w.T, y, reduction="sum")
    torch.testing.assert_close(plain, ref, rtol=1e-5, atol=1e-4)
    gap = float((mixed - ref).detach().abs() / ref.detach())
    assert 0 < gap < 2e-2  # bf16 logits: close, not the fp32 GEMM
