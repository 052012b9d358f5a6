"""The same merge as a mergekit YAML, so it can be reproduced with mergekit.

Interpolation becomes ``merge_method: linear`` with weights ``1 - alpha`` (base) and ``alpha``
(tuned); heterogeneous averaging adds one ``filter`` per transformer layer (mergekit's conditional
parameters), with alpha for every other tensor; a uniform soup is ``linear`` with equal weights.
mergekit works on full models: for a LoRA adapter, merge it into its base first
(``peft``'s ``merge_and_unload``) and point the YAML at that directory.
"""

from __future__ import annotations

from collections.abc import Sequence

import yaml

from medtune.merge.methods import block_of_layer


def _weight(alpha: float, n_layers: int, ratios: Sequence[float] | None, of_tuned: bool) -> object:
    side = (lambda r: r) if of_tuned else (lambda r: 1 - r)
    if not ratios:
        return round(side(alpha), 6)
    conds: list[dict[str, object]] = [
        {"filter": f"model.layers.{i}.", "value": round(side(ratios[block_of_layer(i, n_layers, len(ratios))]), 6)}
        for i in range(n_layers)
    ]
    conds.append({"value": round(side(alpha), 6)})
    return conds


def interpolation_yaml(base: str, tuned: str, alpha: float, n_layers: int, ratios: Sequence[float] | None = None,
                       dtype: str = "float32") -> str:
    doc = {
        "merge_method": "linear",
        "models": [
            {"model": base, "parameters": {"weight": _weight(alpha, n_layers, ratios, of_tuned=False)}},
            {"model": tuned, "parameters": {"weight": _weight(alpha, n_layers, ratios, of_tuned=True)}},
        ],
        "parameters": {"normalize": False},
        "dtype": dtype,
    }
    head = (f"# medtune merge, alpha = {alpha} (weight on the tuned model)"
            + (f", HMA ratios {list(ratios)} over {len(ratios)} layer blocks" if ratios else "") + "\n")
    return head + yaml.safe_dump(doc, sort_keys=False)


def soup_yaml(models: Sequence[str], dtype: str = "float32") -> str:
    doc = {"merge_method": "linear", "models": [{"model": m, "parameters": {"weight": 1.0}} for m in models],
           "parameters": {"normalize": True}, "dtype": dtype}
    return "# medtune uniform soup\n" + yaml.safe_dump(doc, sort_keys=False)
