"""``medtune merge``: an averaged model from a base model and one or more tuned models.

Inputs are LoRA adapters (a training run's ``model/`` directory, or any PEFT adapter directory) or
full checkpoints (safetensors, possibly sharded). The method comes from
:data:`medtune.merge.methods.MERGE_METHODS`. The output directory holds the merged model -- for LoRA
inputs and a method exact in LoRA space a rescaled (or combined) adapter, to apply on the base (no
full copy is made); for LoRA inputs and TIES / DARE / SLERP a full model (they act on the merged
delta's values); for full checkpoints streamed safetensors shards; for a mix of adapters and full
checkpoints (several parents of one base) a full model merged in memory -- plus ``merge_provenance.json``
and the ``mergekit.yaml`` that reproduces it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator

from medtune import atomic, outdir
from medtune.config import ConfigFile, ModelConfig
from medtune.errors import ConfigError, MedtuneError, ModelError
from medtune.evaluate.settings import TaskData, TaskList
from medtune.finite import check_finite
from medtune.merge import methods as M
from medtune.merge.sources import LoraSource, adapter_dir, full_dir, merged_tensors, peft_base_params
from medtune.placement import Placed, Placement


class MergeConfig(TaskData, ConfigFile, Placed):
    """Which models to average, how, and where to write the result."""

    base: ModelConfig = Field(default_factory=ModelConfig)
    """The base model (alpha = 0)."""
    tuned: list[str] = Field(default_factory=list)
    """Tuned models: LoRA adapter dirs, training output dirs (their model/), or full checkpoints."""
    method: str = "linear"
    """Averaging method (linear: WiSE-FT, hma, task_arithmetic, ties, dare_ties, dare_linear, slerp,
    soup_uniform, soup_greedy, soup_weighted); see docs/averaging.md."""
    params: dict[str, Any] = Field(default_factory=dict)
    """The method's parameters, e.g. {density: 0.5, weight: 1.0} for ties (defaults from the method table)."""
    alpha: float | None = Field(None, ge=0, le=1)
    """linear / hma / slerp: weight on the tuned model, 0 = base, 1 = tuned (sets params.alpha)."""
    ratios: list[float] | None = None
    """hma: one ratio per layer block (input .. output), averaging to alpha (sets params.ratios)."""
    heldout_tasks: TaskList = Field(default_factory=lambda: ["pubmedqa", "arc_easy"])
    """soup_greedy: tasks whose mean accuracy decides (their data under data_root)."""
    heldout_limit: int | None = Field(100, ge=1)
    """soup_greedy: items per held-out task."""
    out: str = "runs/merge"
    """Output directory."""

    def root(self) -> Path:
        """``data_root`` (soup_greedy's held-out tasks) by the one relative-path rule."""
        return self.resolve(self.data_root)

    @field_validator("method")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in M.MERGE_METHODS:
            raise ValueError(f"unknown method {name!r} (valid: {', '.join(M.MERGE_METHODS)})")
        return name

    @model_validator(mode="after")
    def _check(self) -> "MergeConfig":
        if not self.tuned:
            raise ValueError("tuned: give at least one tuned model")
        try:
            self.resolved_params()
        except MedtuneError as err:
            raise ValueError(str(err)) from None
        return self

    def resolved_params(self) -> M.Params:
        """``params`` with ``alpha`` / ``ratios`` folded in, checked and completed from the method table."""
        given = dict(self.params)
        takes = M.method(self.method).params
        for key in ("alpha", "ratios"):
            value = getattr(self, key)
            if value is not None:
                if key not in takes:
                    raise MedtuneError(f"method {self.method} has no parameter {key!r} (its parameters: "
                                       f"{', '.join(takes) or 'none'})")
                given[key] = value
        if self.method == "hma" and given.get("ratios") is None:
            raise MedtuneError("method hma needs ratios (or use `medtune sweep` to search them)")
        return M.resolve_params(self.method, given, len(self.tuned))


def _adapter_tensor(key: str) -> str:
    """The base tensor an adapter key belongs to (``...q_proj.lora_B.weight`` -> ``model...q_proj.weight``)."""
    return key.split(".lora_")[0].removeprefix("base_model.model.") + ".weight"


def scale_adapter(src: Path, out: Path, method: str, params: M.Params, n_layers: int, allow_pickle: bool = False) -> None:
    """Copy an adapter with every lora_B multiplied by its tensor's coefficient (exact for LoRA-exact methods)."""
    import shutil

    from safetensors.torch import save_file

    from medtune.lora_adapter import PICKLED_FILE, WEIGHTS_FILE, read_adapter

    entry = M.method(method)
    weights = read_adapter(src, allow_pickle=allow_pickle).tensors
    coeff = lambda k: entry.lora(M.tensor_params(method, params, _adapter_tensor(k), n_layers), 1)[0]  # type: ignore[misc]  # noqa: E731
    scaled = {k: v * coeff(k) if ".lora_B." in k else v for k, v in weights.items()}
    check_finite(scaled, f"merged adapter from {src}")
    out.mkdir(parents=True, exist_ok=True)
    save_file(scaled, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    for f in src.iterdir():
        if f.name not in (WEIGHTS_FILE, PICKLED_FILE) and f.is_file():
            shutil.copy(f, out / f.name)


def _lora_exact(cfg: MergeConfig, params: M.Params, base: Any, adapters: list[Path], out: Path,
                n_layers: int) -> Placement | None:
    """One adapter rescaled (no model loaded: None), or several combined on the placed base (its placement)."""
    entry = M.method(cfg.method)
    if len(adapters) == 1:
        scale_adapter(adapters[0], out, cfg.method, params, n_layers, cfg.base.allow_pickle)
        return None
    from medtune.merge.soup import lora_model, write_combination

    peft, names, placed = lora_model(base, adapters, cfg)
    write_combination(peft, names, entry.lora(params, len(adapters)), out)  # type: ignore[misc]
    return placed


def _lora_full(cfg: MergeConfig, params: M.Params, base: Any, adapters: list[Path], out: Path,
               n_layers: int) -> Placement:
    """TIES / DARE / SLERP on LoRA inputs: the merged tensors written into the base model, saved whole
    (in the placed dtype; the arithmetic on the placed device).

    Each adapted tensor is read (base + s * B @ A per adapter) before it is overwritten, and no
    other tensor depends on it, so the merge is done in place: one copy of the model in memory."""
    from medtune import models
    from medtune.merge.soup import lora_model

    peft, names, placed = lora_model(base, adapters, cfg)
    src = LoraSource(peft, names, n_layers)
    live = peft_base_params(peft)
    with torch.no_grad():
        for name, t in merged_tensors(src, cfg.method, params, src.adapted(), f"merged output {out}"):
            live[name].copy_(t)
    plain = peft.unload()  # the base model with its original modules (and the merged weights) back
    plain.save_pretrained(str(out), safe_serialization=True)
    models.load_tokenizer(base).save_pretrained(str(out))
    return placed


def _stream(cfg: MergeConfig, params: M.Params, base_dir: Path, tuned: list[str], out: Path, n_layers: int) -> dict[str, Any]:
    from medtune.merge.stream import merge_streaming

    entry = M.method(cfg.method)
    combine = lambda name, ts: M.merge_tensor(cfg.method, params, name, n_layers, ts[0], list(ts[1:]))  # noqa: E731
    return merge_streaming([base_dir, *[full_dir(t) for t in tuned]], out, combine, whole_tensor=entry.whole_tensor)


def _n_layers(base: Any, cfg: ModelConfig) -> int:
    """The base's layer count (hma's blocks, per-layer parameters), from its config read where loading
    reads it: a model directory, the GGUF cache, or a Hub id's config (from the local Hub cache offline)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(base.path, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"{base.spec}: cannot read the model's config: {err}") from None
    return int(config.get_text_config().num_hidden_layers)


def _stream_base_dir(base: Any) -> Path:
    """The directory a streamed merge reads the base's safetensors from, tensor by tensor: the model
    directory, or for a Hub id its snapshot in the local Hub cache (complete: every weights file there)."""
    if base.kind != "hub":
        return Path(base.path)
    from huggingface_hub import snapshot_download

    from medtune.merge.stream import tensor_files

    need = (f"a streamed merge of full checkpoints reads the base's safetensors files from a local directory; "
            f"download the model (`hf download {base.spec}`) or give its local directory as the base")
    try:
        snap = Path(snapshot_download(base.path, local_files_only=True))
        missing = sorted({f.name for f in tensor_files(snap).values() if not f.is_file()})
    except (OSError, ValueError, MedtuneError) as err:
        raise ModelError(f"{base.spec}: its weights are not in the local Hugging Face cache ({err}); {need}") from None
    if missing:
        raise ModelError(f"{base.spec}: the local Hugging Face cache ({snap}) lacks {', '.join(missing)}; {need}")
    return snap


def merge(cfg: MergeConfig) -> Path:
    from medtune import models
    from medtune.merge.mergekit import kit_models, mergekit_yaml

    entry, params = M.method(cfg.method), cfg.resolved_params()
    base = models.resolve(cfg.base.spec, allow_pickle=cfg.base.allow_pickle)
    n_layers = _n_layers(base, cfg.base)
    adapters = [adapter_dir(t) for t in cfg.tuned]
    lora = all(a is not None for a in adapters)
    mixed = any(a is not None for a in adapters) and not lora
    if mixed and entry.search is not None:
        raise ConfigError(f"tuned: method {cfg.method} takes LoRA adapters only or full checkpoints only, not a mix")
    base_dir = None if lora or mixed else _stream_base_dir(base)
    if lora:  # validate every adapter against the base's architecture before any output is written
        skeleton = models.meta_model(base)
        for a in adapters:
            models.check_adapter(skeleton, a, allow_pickle=cfg.base.allow_pickle, base=base,  # type: ignore[arg-type]
                                 allow_other_base=cfg.base.allow_other_base)
    out = Path(cfg.out)
    info: dict[str, Any] = {"method": cfg.method, "params": params, "label": M.label(cfg.method, params),
                            "base": cfg.base.spec, "tuned": cfg.tuned, "inputs": "lora" if lora else "full",
                            "lora_exact": entry.lora is not None,
                            "convention": "alpha is the weight on the tuned model: (1-alpha)*base + alpha*tuned"}
    with outdir.staging_dir(out, "merge") as tmp:
        chosen = list(cfg.tuned)
        if entry.search == "greedy":
            from medtune.merge.soup import greedy_soup

            chosen, info["greedy_log"], placed = greedy_soup(cfg, base, adapters if lora else None)  # type: ignore[arg-type]
            info["ingredients"] = chosen
            info["soup"] = placed.record()  # where the ingredients were scored
        picked = [adapter_dir(t) for t in chosen] if lora else []
        if lora and entry.lora is not None:
            merged_on = _lora_exact(cfg, params, base, picked, tmp, n_layers)  # type: ignore[arg-type]
            info["output"] = "adapter"
        elif lora:
            merged_on = _lora_full(cfg, params, base, picked, tmp, n_layers)  # type: ignore[arg-type]
            info["output"] = "full"
        elif mixed:  # adapters and full checkpoints: in memory, as a multi-parent search scores them
            from medtune.merge.parents import merge_parents

            merged_on = merge_parents(cfg.base, chosen, cfg.method, params, tmp, cfg.device)
            info["output"], info["inputs"] = "full", "mixed"
        else:
            info["stream"] = _stream(cfg, params, base_dir, chosen, tmp, n_layers)  # type: ignore[arg-type]
            info["output"], merged_on = "full", None
        info.update(_merged_on(merged_on, lora))
        kit_tuned = kit_models(base.path, chosen)
        atomic.write_text(tmp / "mergekit.yaml", mergekit_yaml(cfg.method, params, base.path, kit_tuned, n_layers))
        import medtune

        atomic.write_json(tmp / "merge_provenance.json", {**info, "medtune": medtune.__version__,
                                                          "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return out


def _merged_on(placed: Placement | None, lora: bool) -> dict[str, str]:
    """Where the averaging arithmetic ran, for the provenance, said on stderr: the placed model's device and
    dtype; or the CPU where no model is loaded (one adapter rescaled, full checkpoints streamed tensor by
    tensor from disk: their memory is a few tensors, and a GPU would add a copy to and from it per tensor)."""
    from rich.console import Console

    if placed is not None:
        return placed.record()
    how = "one adapter's lora_B rescaled" if lora else "full checkpoints streamed from disk tensor by tensor"
    reason = f"no model loaded: {how}, in the inputs' dtype; --device does not apply"
    Console(stderr=True, highlight=False).print(f"merge on cpu ({reason})")
    return {"device": "cpu", "dtype": "as stored", "placement": reason}


def output_is_adapter(out: str | Path) -> bool:
    """Whether a merge directory holds an adapter (apply it on the base) rather than a full model."""
    return adapter_dir(out) is not None
