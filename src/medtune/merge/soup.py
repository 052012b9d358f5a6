"""Several LoRA adapters on one base: a weighted combination of them as one adapter, and the greedy soup.

A combination ``sum_i c_i * delta_i`` of adapters is peft's ``add_weighted_adapter`` with
``combination_type="cat"`` (the adapters concatenated along the rank), which is exact: the combined
update is the weighted sum of the adapters' updates. The coefficients come from the method's table
entry (``MergeMethod.lora``): 1/n each for a uniform soup, ``weight`` each for task arithmetic.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from medtune.merge import methods as M
from medtune.merge.sources import StateSource, full_dir, load_state, merged_tensors
from medtune.placement import Placement, load_placed


def lora_model(base: Any, adapters: list[Path], cfg: Any) -> tuple[Any, list[str], Placement]:
    """The base (placed by ``cfg.device`` and ``cfg.base.dtype``) with every adapter loaded under its own
    name (m0, m1, ...), and its placement."""
    from peft import PeftModel

    from medtune import models

    model, placed = load_placed(base, cfg.base, cfg.device)
    for a in adapters:
        models.check_adapter(model, a)
    names = [f"m{i}" for i in range(len(adapters))]
    peft = PeftModel.from_pretrained(model, str(adapters[0]), adapter_name=names[0])
    for n, a in zip(names[1:], adapters[1:]):
        peft.load_adapter(str(a), adapter_name=n)
    return peft, names, placed


def set_combination(peft: Any, names: list[str], coeffs: list[float]) -> None:
    """Activate ``sum_i coeffs[i] * delta(names[i])`` as the adapter "combined"."""
    if "combined" in peft.peft_config:
        peft.delete_adapter("combined")
    peft.add_weighted_adapter(names, coeffs, "combined", combination_type="cat")
    peft.set_adapter("combined")


def write_combination(peft: Any, names: list[str], coeffs: list[float], out: Path) -> None:
    """Save the combination as a plain adapter directory at ``out``."""
    from peft.utils import get_peft_model_state_dict

    from medtune.finite import check_finite

    set_combination(peft, names, coeffs)
    check_finite(get_peft_model_state_dict(peft, adapter_name="combined"), f"combination of adapters {', '.join(names)}")
    peft.save_pretrained(str(out), selected_adapters=["combined"], safe_serialization=True)
    nested = out / "combined"
    if nested.is_dir():  # peft saves a non-default adapter in a subdirectory
        for f in nested.iterdir():
            shutil.move(str(f), out / f.name)
        nested.rmdir()


def greedy_soup(cfg: Any, base: Any, adapters: list[Path] | None) -> tuple[list[str], list[dict[str, object]], Placement]:
    """Greedy soup on the held-out tasks' mean accuracy (``cfg.heldout_tasks``), scored with the model where
    the placement rule puts it (the averaging arithmetic there too); returns that placement last."""
    import torch

    from medtune import models
    from medtune.evaluate.run import EvalConfig, score_model

    ecfg = EvalConfig(tasks=cfg.heldout_tasks, limit=cfg.heldout_limit, data_root=str(cfg.root()), progress=False)
    tok = models.load_tokenizer(base)
    by_name = dict(zip(cfg.tuned, range(len(cfg.tuned))))
    soup = M.method("soup_uniform")
    if adapters is not None:
        peft, names, placed = lora_model(base, adapters, cfg)

        def score(ingredients: list[str]) -> float:
            set_combination(peft, [names[by_name[i]] for i in ingredients], soup.lora({}, len(ingredients)))  # type: ignore[misc]
            res, _ = score_model(peft, tok, ecfg)
            return sum(r["acc"]["value"] for r in res.values()) / len(res)
    else:
        model, placed = load_placed(base, cfg.base, cfg.device)
        params = dict(model.named_parameters())
        base_state = {k: v.detach().clone() for k, v in params.items()}
        states = {t: load_state(full_dir(t)) for t in cfg.tuned}
        n_layers = model.config.num_hidden_layers

        def score(ingredients: list[str]) -> float:
            src = StateSource(base_state, [states[i] for i in ingredients], n_layers)
            with torch.no_grad():
                for name, merged in merged_tensors(src, "soup_uniform", {}):
                    params[name].copy_(merged)
            res, _ = score_model(model, tok, ecfg)
            return sum(r["acc"]["value"] for r in res.values()) / len(res)

    return (*M.greedy_soup(list(cfg.tuned), score), placed)
