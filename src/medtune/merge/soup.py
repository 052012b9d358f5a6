"""Model soups: the uniform mean of several tuned models, and the greedy soup."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from medtune.finite import check_finite
from medtune.merge import methods


def _lora_model(base: Any, adapters: list[Path]) -> tuple[Any, list[str]]:
    """The base with every adapter loaded under its own name (m0, m1, ...)."""
    from peft import PeftModel

    from medtune import models

    model = models.load_model(base)
    for a in adapters:
        models.check_adapter(model, a)
    names = [f"m{i}" for i in range(len(adapters))]
    peft = PeftModel.from_pretrained(model, str(adapters[0]), adapter_name=names[0])
    for n, a in zip(names[1:], adapters[1:]):
        peft.load_adapter(str(a), adapter_name=n)
    return peft, names


def _set_soup(peft: Any, names: list[str]) -> None:
    """Activate the uniform soup of ``names``: adapters concatenated along the rank, each delta
    weighted 1/n, so the combined update is exactly the mean of the adapters' updates."""
    if "soup" in peft.peft_config:
        peft.delete_adapter("soup")
    peft.add_weighted_adapter(names, [1.0 / len(names)] * len(names), "soup", combination_type="cat")
    peft.set_adapter("soup")


def write_soup(base: Any, tuned: list[str], out: Path, lora: bool) -> None:
    from medtune.merge.run import adapter_dir, full_dir

    if lora:
        peft, names = _lora_model(base, [adapter_dir(t) for t in tuned])  # type: ignore[misc]
        _set_soup(peft, names)
        from peft.utils import get_peft_model_state_dict

        check_finite(get_peft_model_state_dict(peft, adapter_name="soup"), f"soup of {', '.join(tuned)}")
        peft.save_pretrained(str(out), selected_adapters=["soup"], safe_serialization=True)
        nested = out / "soup"
        if nested.is_dir():  # peft saves a non-default adapter in a subdirectory
            for f in nested.iterdir():
                shutil.move(str(f), out / f.name)
            nested.rmdir()
        return
    from medtune.merge.stream import merge_streaming

    merge_streaming([full_dir(t) for t in tuned], out, lambda name, ts: methods.uniform_soup(ts))


def greedy_soup(cfg: Any, base: Any, adapters: list[Path] | None) -> tuple[list[str], list[dict[str, object]]]:
    """Greedy soup on the held-out tasks' mean accuracy (``cfg.heldout_tasks``)."""
    import torch

    from medtune import models
    from medtune.evaluate.run import EvalConfig, score_model

    ecfg = EvalConfig(tasks=cfg.heldout_tasks, limit=cfg.heldout_limit, data_root=cfg.data_root, progress=False)
    tok = models.load_tokenizer(base)
    by_name = dict(zip(cfg.tuned, range(len(cfg.tuned))))
    if adapters is not None:
        peft, names = _lora_model(base, adapters)

        def score(ingredients: list[str]) -> float:
            _set_soup(peft, [names[by_name[i]] for i in ingredients])
            res, _ = score_model(peft, tok, ecfg)
            return sum(r["acc"]["value"] for r in res.values()) / len(res)
    else:
        from safetensors.torch import load_file

        from medtune.merge.run import full_dir

        model = models.load_model(base)
        states = {t: {k: v for f in sorted(full_dir(t).glob("*.safetensors")) for k, v in load_file(str(f)).items()}
                  for t in cfg.tuned}
        for t, state in states.items():
            check_finite(state, str(full_dir(t)))

        def score(ingredients: list[str]) -> float:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(methods.uniform_soup([states[i][name] for i in ingredients]))
            res, _ = score_model(model, tok, ecfg)
            return sum(r["acc"]["value"] for r in res.values()) / len(res)

    return methods.greedy_soup(list(cfg.tuned), score)
