"""``medtune merge``: an averaged model from a base model and one or more tuned models.

Inputs are LoRA adapters (a training run's ``model/`` directory, or any PEFT adapter directory) or
full checkpoints (safetensors, possibly sharded). The output directory holds the merged model —
for LoRA inputs a rescaled adapter (apply it on the base; no second full copy is made), for full
checkpoints streamed safetensors shards — plus ``merge_provenance.json`` and ``mergekit.yaml``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from medtune import atomic
from medtune.config import ModelConfig, StrictModel
from medtune.errors import ConfigError, MedtuneError, ModelError
from medtune.merge import methods


class MergeConfig(StrictModel):
    """Which models to average, how, and where to write the result."""

    base: ModelConfig = Field(default_factory=ModelConfig)
    """The base model (alpha = 0)."""
    tuned: list[str] = Field(default_factory=list)
    """Tuned models: LoRA adapter dirs, training output dirs (their model/), or full checkpoints."""
    method: Literal["linear", "hma", "soup_uniform", "soup_greedy"] = "linear"
    """linear: WiSE-FT interpolation; hma: per-block ratios averaging to alpha; soup_uniform: mean of the
    tuned models; soup_greedy: add tuned models by held-out score while it strictly improves."""
    alpha: float = Field(0.5, ge=0, le=1)
    """Weight on the tuned model: 0 = base, 1 = tuned (the HMA paper's code uses the opposite convention)."""
    ratios: list[float] | None = None
    """hma: one ratio per layer block (input .. output), averaging to alpha."""
    heldout_tasks: str = "pubmedqa,arc_easy"
    """soup_greedy: tasks whose mean accuracy decides (use validation splits via heldout_sources)."""
    heldout_limit: int | None = Field(100, ge=1)
    """soup_greedy: items per held-out task."""
    data_root: str = "../shared/data"
    """soup_greedy: data root of the held-out tasks."""
    out: str = "runs/merge"
    """Output directory."""

    @model_validator(mode="after")
    def _check(self) -> "MergeConfig":
        if not self.tuned:
            raise ValueError("tuned: give at least one tuned model")
        if self.method in ("linear", "hma") and len(self.tuned) != 1:
            raise ValueError(f"method {self.method} averages the base with exactly one tuned model (got {len(self.tuned)})")
        if self.method == "hma":
            if not self.ratios:
                raise ValueError("method hma needs ratios (or use `medtune sweep` to search them)")
            try:
                methods.hma_ratios(self.alpha, len(self.ratios), self.ratios)
            except MedtuneError as err:
                raise ValueError(str(err)) from None
        return self


def adapter_dir(path: str | Path) -> Path | None:
    """The PEFT adapter directory at ``path`` (or its ``model/``), else None."""
    p = Path(path)
    for cand in (p, p / "model"):
        if (cand / "adapter_config.json").is_file():
            return cand
    return None


def full_dir(path: str | Path) -> Path:
    p = Path(path)
    for cand in (p, p / "model"):
        if (cand / "config.json").is_file():
            return cand
    raise ModelError(f"{path}: neither a LoRA adapter nor a model directory (config.json)")


def scale_adapter(src: Path, out: Path, alpha: float, ratios: list[float] | None, n_layers: int,
                  allow_pickle: bool = False) -> None:
    """Copy an adapter with every lora_B multiplied by its tensor's ratio (exact WiSE-FT / HMA for LoRA)."""
    import shutil

    from safetensors.torch import save_file

    from medtune.finite import check_finite
    from medtune.lora_adapter import PICKLED_FILE, WEIGHTS_FILE, read_adapter

    weights = read_adapter(src, allow_pickle=allow_pickle).tensors
    scaled = {k: (v * methods.tensor_ratio(k, n_layers, ratios, alpha) if ratios else v * alpha) if ".lora_B." in k else v
              for k, v in weights.items()}
    check_finite(scaled, f"merged adapter from {src}")
    out.mkdir(parents=True, exist_ok=True)
    save_file(scaled, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    for f in src.iterdir():
        if f.name not in (WEIGHTS_FILE, PICKLED_FILE) and f.is_file():
            shutil.copy(f, out / f.name)


def merge(cfg: MergeConfig) -> Path:
    from medtune import models
    from medtune.merge.mergekit import interpolation_yaml, soup_yaml

    base = models.resolve(cfg.base.spec, allow_pickle=cfg.base.allow_pickle)
    base_cfg = json.loads((Path(base.path) / "config.json").read_text()) if base.kind != "hub" else {}
    n_layers = int(base_cfg.get("num_hidden_layers", 0))
    adapters = [adapter_dir(t) for t in cfg.tuned]
    lora = all(a is not None for a in adapters)
    if any(a is not None for a in adapters) and not lora:
        raise ConfigError("tuned: mix of LoRA adapters and full checkpoints; merge adapters into their base first")
    if lora:  # validate every adapter against the base's architecture before any output is written
        skeleton = models.meta_model(base)
        for a in adapters:
            models.check_adapter(skeleton, a, allow_pickle=cfg.base.allow_pickle)  # type: ignore[arg-type]
    out = Path(cfg.out)
    info: dict[str, Any] = {"method": cfg.method, "alpha": cfg.alpha, "ratios": cfg.ratios, "base": cfg.base.spec,
                            "tuned": cfg.tuned, "inputs": "lora" if lora else "full",
                            "convention": "alpha is the weight on the tuned model: (1-alpha)*base + alpha*tuned"}
    with atomic.staging_dir(out) as tmp:
        if cfg.method in ("linear", "hma"):
            ratios = cfg.ratios if cfg.method == "hma" else None
            if lora:
                scale_adapter(adapters[0], tmp, cfg.alpha, ratios, n_layers, cfg.base.allow_pickle)
                kit_tuned = f"{cfg.tuned[0]} (merged into the base with peft merge_and_unload)"
            else:
                from medtune.merge.stream import merge_streaming

                tuned = full_dir(cfg.tuned[0])
                info["stream"] = merge_streaming(
                    [Path(base.path), tuned], tmp,
                    lambda name, ts: methods.interpolate_(ts[0], ts[1], methods.tensor_ratio(name, n_layers, ratios, cfg.alpha)
                                                          if ratios else cfg.alpha))
                kit_tuned = str(tuned)
            atomic.write_text(tmp / "mergekit.yaml", interpolation_yaml(base.path, kit_tuned, cfg.alpha, n_layers, ratios))
        else:
            from medtune.merge.soup import greedy_soup, write_soup

            chosen = list(cfg.tuned)
            if cfg.method == "soup_greedy":
                chosen, log = greedy_soup(cfg, base, adapters if lora else None)
                info["greedy_log"] = log
            info["ingredients"] = chosen
            write_soup(base, chosen, tmp, lora)
            atomic.write_text(tmp / "mergekit.yaml", soup_yaml([str(full_dir(c)) if not lora else c for c in chosen]))
        import medtune

        atomic.write_json(tmp / "merge_provenance.json", {**info, "medtune": medtune.__version__,
                                                          "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return out
