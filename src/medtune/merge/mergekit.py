"""The same merge as a mergekit YAML, so it can be reproduced with ``mergekit-yaml``.

Written from the method's table entry (``MergeMethod.mergekit`` and ``MergeMethod.kit``): no method
is named here. Interpolation is ``linear`` with weights ``1 - alpha`` (base) and ``alpha`` (tuned);
HMA adds one ``filter`` per transformer layer (mergekit's conditional parameters); task arithmetic,
TIES and DARE use ``base_model`` with per-model ``weight`` / ``density`` (several parents with their own
weights: one ``weight`` each); SLERP is ``slerp`` with ``t = alpha``; a soup is ``linear``, normalized,
with equal weights (a weighted soup: each its own). A LoRA adapter is named ``BASE+ADAPTER``, mergekit's
way of applying an adapter to its base before merging (:func:`kit_models`). DARE's drop mask is random in both tools, so mergekit reproduces a DARE merge in
distribution, not bit for bit (and mergekit rescales to keep the delta's L1 norm, not by 1/density).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from medtune.merge import methods as M


def mergekit_doc(method: str, params: M.Params, base: str, tuned: Sequence[str], n_layers: int,
                 dtype: str = "float32") -> dict[str, Any]:
    """The mergekit configuration (as a dict) that reproduces ``method`` with ``params``."""
    entry = M.method(method)
    kit = entry.kit(params, n_layers)
    models: list[dict[str, Any]] = []
    if kit["base"] is not None:
        models.append({"model": base, **({"parameters": kit["base"]} if kit["base"] else {})})
    per = kit.get("models") or [{}] * len(tuned)
    for t, own in zip(tuned, per, strict=True):
        params = {**kit["model"], **own}
        models.append({"model": t, **({"parameters": params} if params else {})})
    doc: dict[str, Any] = {"merge_method": entry.mergekit}
    if entry.uses_base and entry.mergekit != "linear":
        doc["base_model"] = base
    doc["models"] = models
    if kit["parameters"]:
        doc["parameters"] = kit["parameters"]
    doc["dtype"] = dtype
    return doc


def mergekit_yaml(method: str, params: M.Params, base: str, tuned: Sequence[str], n_layers: int,
                  dtype: str = "float32") -> str:
    """:func:`mergekit_doc` as YAML, headed by a comment naming the medtune point."""
    head = f"# medtune merge: {M.label(method, params)} (alpha, where given, is the weight on the tuned model)\n"
    note = M.method(method).kit_note
    head += f"# not bit for bit: {note}\n" if note else ""
    return head + yaml.safe_dump(mergekit_doc(method, params, base, tuned, n_layers, dtype), sort_keys=False)


def kit_models(base_path: str, tuned: Sequence[str]) -> list[str]:
    """How ``mergekit.yaml`` names each tuned model: a LoRA adapter as ``BASE+ADAPTER`` (mergekit applies it to
    the base first), a full checkpoint by its directory."""
    from medtune.merge.sources import adapter_dir, full_dir

    return [f"{base_path}+{a}" if (a := adapter_dir(t)) is not None else str(full_dir(t)) for t in tuned]
