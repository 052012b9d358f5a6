"""Several tuned parents of one base on one loaded model: what a multi-parent search scores and merges.

The study's variants (LoRA, full fine-tuning, LoRA with replay) are each a tuned model of the same
base; a multi-parent point averages them all (task arithmetic, TIES or a weighted soup, one weight per
parent). The base is loaded once; LoRA parents are its adapters (``p0``, ``p1``, ... all active, so a
point exact in LoRA space only rescales them: no copy of the weights); a full parent is its state dict
in memory (one copy each, as a single full model's sweep). :class:`~medtune.merge.sources.Averager`
sets the model to a point; :func:`merge_parents` writes that same model out, so a merged multi-parent
model is the one its search scored.

Every parent must be tuned from the base given: an adapter's recorded base (``medtune_base.json``)
is checked as ``medtune eval`` checks it, a full checkpoint's recorded base by the same fingerprint,
and its tensors must have the base's names and shapes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtune.config import ModelConfig
from medtune.errors import ModelError
from medtune.merge.sources import Averager, adapter_dir, full_dir, load_state


def check_full_parent(parent: str, state: dict[str, Any], base_params: dict[str, Any], base: Any,
                      allow_other_base: bool) -> None:
    """Refuse a full checkpoint that is not a fine-tune of ``base``: another recorded base (unless allowed), or
    tensors the base does not have or has in another shape."""
    from medtune.lora_adapter import BaseIdentity, OtherBaseWarning, weights_fingerprint

    record = BaseIdentity.load(full_dir(parent))
    if record is not None and record.weights is not None:
        weights = weights_fingerprint(base)
        if weights is not None and weights != record.weights:
            said = (f"parent {parent}: tuned from base {record.spec}, but the base given, {base.spec}, has other "
                    "weights; every parent of a multi-parent average must be tuned from the same base")
            if not allow_other_base:
                raise ModelError(said)
            warnings.warn(OtherBaseWarning(f"{said}; averaged anyway (allow_other_base)"), stacklevel=2)
    for name, t in state.items():
        have = base_params.get(name)
        if have is None or tuple(have.shape) != tuple(t.shape):
            had = "has no such tensor" if have is None else f"has shape {tuple(have.shape)}"
            raise ModelError(f"parent {parent}: tensor {name} {tuple(t.shape)}, but the base {base.spec} {had}: "
                             "not a fine-tune of this base")


def load(base: ModelConfig, parents: Sequence[str], device: str = "auto") -> tuple[Averager, Any]:
    """(Averager over the base with every parent, tokenizer); each parent checked against the base first.
    The base is placed as every stage places its model (:func:`medtune.placement.load_placed`: ``device``,
    ``base.dtype``), the adapters on it; a full parent's state dict stays on the CPU, each tensor moved to
    the model's device as it is merged."""
    from peft import PeftModel

    from medtune import models
    from medtune.merge.sources import peft_base_params
    from medtune.placement import load_placed

    resolved = models.resolve(base.spec, allow_pickle=base.allow_pickle)
    model, placed = load_placed(resolved, base, device)
    tokenizer = models.load_tokenizer(resolved, trust_remote_code=base.trust_remote_code)
    n_layers = model.config.num_hidden_layers
    plain = {k: p for k, p in model.named_parameters()}
    order: list[str | dict[str, Any]] = []
    adapters: list[tuple[str, Path]] = []
    for i, parent in enumerate(parents):
        adapter = adapter_dir(parent)
        if adapter is not None:
            models.check_adapter(model, adapter, allow_pickle=base.allow_pickle, base=resolved,
                                 allow_other_base=base.allow_other_base)
            adapters.append((f"p{i}", adapter))
            order.append(f"p{i}")
        else:
            state = load_state(full_dir(parent))
            check_full_parent(parent, state, plain, resolved, base.allow_other_base)
            order.append(state)
    if adapters:
        model = PeftModel.from_pretrained(model, str(adapters[0][1]), adapter_name=adapters[0][0], is_trainable=False)
        for name, path in adapters[1:]:
            model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        model.base_model.set_adapter([name for name, _ in adapters])  # all active: their deltas add up
        model.eval()
        assert set(peft_base_params(model)) == set(plain), "peft renamed a base tensor"
    return Averager(model, n_layers, parents=order, placed=placed), tokenizer


def merge_parents(base: ModelConfig, parents: Sequence[str], method: str, params: dict[str, Any], out: Path,
                  device: str = "auto") -> Any:
    """The model at ``(method, params)`` over ``parents`` saved whole at ``out`` (weights and tokenizer): the
    merge of parents that are not all LoRA adapters, from the very model a search scores, placed as it
    (:func:`load`). Returns the placement (:class:`medtune.placement.Placement`) for the provenance."""
    import torch

    avg, tokenizer = load(base, parents, device)
    assert avg.scaler is None or not avg.lora_only, "merge LoRA adapters with medtune merge's adapter paths"
    with torch.no_grad():
        avg.set(method, params)
    model = avg.model
    if hasattr(model, "unload"):  # the adapters are silenced: the base layers hold the merged weights
        model = model.unload()
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return avg.placed
