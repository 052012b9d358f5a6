"""What the prepared GPU check's parts (bench/gpu_check_parts.py) are built from: random LLaMA models, a
tokenizer and packed data made on the spot, and the measures they report (step times, peak memory, FLOPs).

Models are LLaMA configs with random weights, never downloaded. A training model's directory holds its
config, a tokenizer and one small safetensors file; transformers initialises every weight the file lacks
when medtune loads it, on the device the load runs under (:func:`built_on`), so an 8B model is made on the
GPU in bf16 and never in host memory. Under QLoRA the weights made that way are 16-bit and are quantized to
4-bit NF4 right after the load, as a checkpoint's weights are while they load (:func:`quantize_made_weights`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "src" / "medtune" / "demo_data"
"""The demo sample shipped in the package: training text, and the tasks the sweep scores."""
GIB = 1 << 30

LLAMA_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
                rms_norm_eps=1e-5, tie_word_embeddings=False)
"""Llama-3.1-8B's shapes (8.03 B parameters)."""
LLAMA_1B = dict(LLAMA_8B, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, tie_word_embeddings=True)
"""Llama-3.2-1B's shapes (1.24 B parameters, tied embeddings)."""
SMALL = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
             num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True)
"""SmolLM2-135M's shapes: the scoring part's model."""
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)
"""Every model of the dry run (CPU)."""
PLACEMENT = dict(TINY, hidden_size=256, intermediate_size=512, num_hidden_layers=4, max_position_embeddings=2048)
"""The sweep's and merge's model: only where it is placed is checked."""

PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("GH200", 989.0),
                    ("H200", 989.0), ("H100", 989.0), ("H800", 989.0), ("A100", 312.0), ("A800", 312.0),
                    ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0)]
"""Dense bf16 tensor-core peak (TFLOP/s, NVIDIA's data sheets) by a substring of the device name, first match."""


class Skip(Exception):
    """The part cannot run here; the message says why."""


class Failed(Exception):
    """The part ran and what it checks does not hold; the message says what was found."""


@dataclass
class Context:
    """What every part is given (the parent writes it to a file for each part's own process)."""

    dry_run: bool
    workdir: str
    peak_tflops: float | None = None
    tokenizer: str | None = None
    text: list[str] = field(default_factory=list)
    data_tokens: int = 100_000_000
    stop_training_at: float | None = None
    """Wall-clock time (time.time()) at which a training part stops stepping and reports what it has."""

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    @property
    def work(self) -> Path:
        return Path(self.workdir)

    def need_device(self) -> None:
        if not self.dry_run and not torch.cuda.is_available():
            raise Skip("no CUDA device")


def shape(ctx: Context, name: str) -> dict[str, Any]:
    """A model's shapes: the named one on the GPU, a tiny one in the dry run."""
    if ctx.dry_run:
        return dict(TINY, tie_word_embeddings=name == "1b")
    return {"8b": LLAMA_8B, "1b": LLAMA_1B, "small": SMALL}[name]


# ---------------------------------------------------------------- models, tokenizer, data


def tokenizer_dir(ctx: Context) -> Path:
    """A byte-level BPE tokenizer (2,000 tokens) trained on the demo text: ids fit every model's vocabulary."""
    out = ctx.work / "tokenizer"
    if (out / "tokenizer.json").is_file():
        return out
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    size = 500 if ctx.dry_run else 2000
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([(DEMO / "general_demo.txt").read_text(encoding="utf-8")], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                            pad_token="</s>").save_pretrained(str(out))
    return out


def model_dir(ctx: Context, name: str, *, weights: bool = False) -> Path:
    """A model directory of shape ``name`` with the tokenizer: the config and one small tensor (the final
    norm), whose other weights the load makes (``weights=True``: all of them saved, fp32)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = ctx.work / f"model-{name}"
    if (out / "config.json").is_file():
        return out
    tok_dir = tokenizer_dir(ctx)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    dims = PLACEMENT if name == "placement" else shape(ctx, name)
    dims = {**dims, "vocab_size": max(dims["vocab_size"], len(tok))}  # every token id has an embedding
    config = LlamaConfig(**dims, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, dtype="bfloat16")
    out.mkdir(parents=True)
    tok.save_pretrained(str(out))
    if weights:
        torch.manual_seed(0)
        config.dtype = "float32"
        LlamaForCausalLM(config).save_pretrained(str(out), safe_serialization=True)
        return out
    config.save_pretrained(str(out))
    save_file({"model.norm.weight": torch.ones(config.hidden_size, dtype=torch.bfloat16)}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    return out


def linear_params(path: Path) -> tuple[int, int, int, int]:
    """(parameters in matrix products: every linear layer, the LM head included; all parameters; layers;
    hidden size), from the config on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path))
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    matmul = sum(m.weight.numel() for m in meta.modules() if isinstance(m, torch.nn.Linear))
    total = sum(p.numel() for p in {id(p): p for p in meta.parameters()}.values())
    return matmul, total, config.num_hidden_layers, config.hidden_size


def training_data(ctx: Context, block: int) -> Path:
    """The demo sample packed into ``block``-token blocks (built once, shared by every training part)."""
    from medtune.data.build import build_command

    out = ctx.work / f"data-{block}"
    if not (out / "manifest.json").is_file():
        build_command(data_config(ctx, block).model_copy(update={"out": str(out)}))
    return out


def data_config(ctx: Context, block: int) -> Any:
    from medtune.data.build import DataConfig

    return DataConfig.model_validate({
        "data_root": str(DEMO), "tokenizer": str(tokenizer_dir(ctx)), "block_size": block, "general_share": 0.2,
        "train": [{"adapter": "pubmedqa", "path": "pubmedqa/demo_pqal.json", "split": "all"},
                  {"adapter": "medmcqa", "path": "medmcqa_demo.jsonl"}],
        "replay": [{"adapter": "text", "path": "general_demo.txt"}]})


def quantize_made_weights(model: Any, quantization: Any) -> int:
    """Quantize the 4-bit layers whose weights the load made rather than read (transformers leaves those
    16-bit), each in turn, so at most one extra 16-bit matrix is alive; returns how many layers of the model
    then hold 4-bit weights."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for module in layers:
        w = module.weight
        if getattr(w, "bnb_quantized", False):
            continue
        if w.device.type == "meta":
            raise Failed("the load left a 4-bit layer's weight unmade (on the meta device)")
        module.weight = bnb.nn.Params4bit(w.data, requires_grad=False, quant_type=quantization.bnb_4bit_quant_type,
                                          compress_statistics=quantization.bnb_4bit_use_double_quant,
                                          quant_storage=module.quant_storage, module=module).to(w.device)
    return sum(getattr(m.weight, "bnb_quantized", False) for m in layers)


@dataclass
class Memory:
    """Peak memory of one run: during the model's load, then during training (reset in between)."""

    cuda: bool
    load_peak: int | None = None
    four_bit_layers: int = 0
    """Layers holding 4-bit weights after the load (QLoRA)."""

    def loaded(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.load_peak = torch.cuda.max_memory_allocated()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> tuple[str, int]:
        """("cuda max allocated" | "process max RSS", bytes)."""
        if self.cuda:
            torch.cuda.synchronize()
            return "cuda max allocated", torch.cuda.max_memory_allocated()
        return "process max RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextlib.contextmanager
def built_on(device: str, memory: Memory) -> Iterator[None]:
    """medtune's model loads run under ``torch.device(device)``: transformers then loads onto it and makes
    the weights a directory lacks there, in the dtype medtune asks for; QLoRA's are quantized after."""
    from medtune import models

    real = models.load_model

    def load(spec: Any, **kw: Any) -> Any:
        with torch.device(device):
            model = real(spec, **kw)
        if kw.get("quantization_config") is not None:
            memory.four_bit_layers = quantize_made_weights(model, kw["quantization_config"])
        memory.loaded()
        return model

    models.load_model = load
    try:
        yield
    finally:
        models.load_model = real


def step_clock(stop_at: float | None) -> Any:
    """A Trainer callback that times each optimizer step (device synchronised) and stops stepping at
    ``stop_at`` (time.time()), so a slow part still reports the steps it made."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.cut = False

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())
            if stop_at is not None and time.time() > stop_at and state.global_step < state.max_steps:
                self.cut = control.should_training_stop = True

        def steady(self, tokens_per_step: int) -> tuple[int, float]:
            """(steps timed, tokens/s) over the steps after the first two (allocator and kernel warm-up),
            or as many of those as there were."""
            times = self.ends[min(2, max(len(self.ends) - 2, 0)):]
            if len(times) < 2:
                raise Skip(f"out of time: {len(self.ends)} step(s) made, too few to time")
            return len(times) - 1, tokens_per_step * (len(times) - 1) / (times[-1] - times[0])

    return StepClock()


def peak_flops(ctx: Context) -> tuple[float | None, str]:
    """(FLOP/s, what it is): the option, the GPU's bf16 dense peak by its name, or in the dry run these cores'
    measured fp32 matrix-product rate; None (and why) for a GPU not in the table."""
    if ctx.peak_tflops:
        return ctx.peak_tflops * 1e12, "given (--peak-tflops)"
    if ctx.dry_run:
        x, w = torch.randn(512, 512), torch.randn(512, 512)
        x @ w
        started = time.perf_counter()
        for _ in range(20):
            x @ w
        return 2 * 512**3 * 20 / (time.perf_counter() - started), "this CPU's fp32 matmul rate (dry run)"
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12, f"bf16 dense peak of {key}"
    return None, f"no bf16 peak known for {name!r}: pass --peak-tflops"


def train_flops_per_token(matmul: int, layers: int, hidden: int, block: int, full: bool) -> float:
    """Model FLOPs per trained token (no recomputation counted): 2 per matmul weight forward, 2 for the input
    gradient, 2 more for the weight gradient when every weight trains (LoRA's frozen base gets none); plus
    attention's score and value products, 4·L·h·T forward and twice that backward (PaLM's count, no causal halving)."""
    return (6 if full else 4) * matmul + 12 * layers * hidden * block


def finite(x: float) -> float:
    if not math.isfinite(x):
        raise ValueError(f"not finite: {x}")
    return x


def gib(n: int | float) -> float:
    return round(n / GIB, 3)


def reset_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
