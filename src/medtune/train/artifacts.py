"""What a training run leaves behind: the model, its provenance, curves and a model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from medtune import atomic, outdir
from medtune.config import dump_config
from medtune.lora_adapter import BaseIdentity
from medtune.train.config import TrainConfig


def plot_curves(history: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = [h["tokens"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(tokens, [h["loss"] for h in history], color="#1f77b4", lw=1.5)
    ax1.set_xlabel("training tokens")
    ax1.set_ylabel("loss (nats / token)")
    ax1.set_title("training loss")
    ax1.grid(alpha=0.3)
    ax2.plot(tokens, [h["lr"] for h in history], color="#ff7f0e", lw=1.5)
    ax2.set_xlabel("training tokens")
    ax2.set_ylabel("learning rate")
    ax2.set_title("schedule")
    ax2.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    atomic.replace(tmp, path)


def model_card(cfg: TrainConfig, state: dict[str, Any], run: dict[str, Any], manifest: dict[str, Any]) -> str:
    hist = state["history"]
    mix = manifest.get("mix") or {}
    sources = "\n".join(f"| {s['role']} | {s['name']} | {s['items']:,} | {s['tokens']:,} |" for s in manifest.get("sources", []))
    what = "a LoRA adapter (peft, safetensors)" if cfg.adapters else "full weights (safetensors)"
    if cfg.method == "qlora":
        what += (", trained over a 4-bit NF4 quantization of the base; merging it applies it to the base's "
                 "unquantized (dequantized) weights")
    return f"""# medtune training run

`model/` holds {what} for **{cfg.model.spec}**, continued-pretrained on medical QA text
{f"with {100 * cfg.data.general_share:.0f} % general replay tokens" if cfg.data.general_share else "without replay"}.

| | |
|---|---|
| method | {cfg.method}{f" (r={cfg.lora.r}, alpha={cfg.lora.alpha}, dropout={cfg.lora.dropout}, targets={cfg.lora.target_modules})" if cfg.adapters else ""} |
| loss | {cfg.loss} |
| steps | {run['steps']} x global batch {run['global_batch']} blocks of {run['block_size']} tokens |
| tokens | {state['tokens']:,} |
| loss first / last step | {hist[0]['loss']:.4f} / {hist[-1]['loss']:.4f} |
| time | {state['seconds']:.0f} s on {run['processes']} process(es), {run['device']}, parallelism {run['parallelism']} |
| realised general share | {100 * (manifest.get('packing') or {}).get('general_share', 0):.1f} % (target {100 * mix.get('general_share_target', 0):.1f} %) |

| role | source | items | tokens |
|---|---|---|---|
{sources}

Files: `config.yaml` (the resolved config), `data/manifest.json` (sources with sha256, leakage
guard, realised mix), `curves.json` / `curves.png` (loss and learning rate per step),
`model/medtune_weights.json` (the sha256 of each model file), `model/medtune_base.json` (the base: its
spec, location and a fingerprint of its weights).
Intended use: research on domain adaptation; not for clinical decisions.
"""


def save_model(out: Path, model: Any, tokenizer: Any, state_dict: dict[str, Any] | None = None,
               base: BaseIdentity | None = None) -> None:
    """``out`` (written atomically): the adapter (LoRA) or the full model, the tokenizer, the model files'
    sha256 (:mod:`medtune.weights_hash`: what a sweep keys its cached scores on) and ``base``, the model
    trained from (``medtune_base.json``: eval, merge and chat check an adapter's base against it).
    ``state_dict``: the weights to write, when the model's own are shards (FSDP2)."""
    from medtune import weights_hash

    with outdir.staging_dir(out, "model") as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(str(tmp))
        if base is not None:
            base.save(tmp)
        weights_hash.record(tmp)


def write_outputs(cfg: TrainConfig, out: Path, model: Any, tokenizer: Any, state: dict[str, Any], run: dict[str, Any],
                  state_dict: dict[str, Any] | None = None) -> None:
    from medtune import models

    base = BaseIdentity.of(models.resolve(cfg.model.spec, allow_pickle=cfg.model.allow_pickle))
    save_model(out / "model", model, tokenizer, state_dict, base)
    atomic.write_text(out / "config.yaml", dump_config(cfg))
    from medtune.train.records import TrainCurves

    TrainCurves.model_validate({"run": run, "history": state["history"], "seconds": state["seconds"],
                                "validation": state.get("validation", []),
                                **({"selected": state["best"]} if state.get("best") else {})}).save(out / "curves.json")
    plot_curves(state["history"], out / "curves.png", f"{cfg.model.spec} · {cfg.method} · {cfg.loss}")
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    atomic.write_text(out / "README.md", model_card(cfg, state, run, manifest))
    shutil.rmtree(out / "checkpoints" / ".staging", ignore_errors=True)
