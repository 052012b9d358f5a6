"""Where the weights being averaged come from, and a loaded model set to any averaging point.

One weight source serves ``medtune merge``, ``medtune sweep``, the soups and ``chat --alpha``:

* **LoRA, scaled** (:class:`LoraScaler`): for methods exact in LoRA space (``MergeMethod.lora``) the
  adapters' scaling is multiplied by each tensor's coefficient on the loaded ``PeftModel``: nothing
  is copied, a point is set in milliseconds;
* **LoRA, materialised per tensor** (:class:`LoraSource`): for TIES, DARE and SLERP the tuned tensor
  is ``base + delta`` with peft's own ``get_delta_weight`` (``s * B @ A``), one tensor at a time;
* **full weights in memory** (:class:`StateSource`): state dicts of full checkpoints;
* **full weights streamed by tensor**: :func:`medtune.merge.stream.merge_streaming` reads row chunks
  for element-wise methods and whole tensors for methods with ``whole_tensor``.

:class:`Averager` puts a loaded model at ``(method, params)`` through whichever source fits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from medtune.errors import ModelError
from medtune.merge import methods as M


def adapter_dir(path: str | Path) -> Path | None:
    """The PEFT adapter directory at ``path`` (or its ``model/``), else None."""
    p = Path(path)
    for cand in (p, p / "model"):
        if (cand / "adapter_config.json").is_file():
            return cand
    return None


def full_dir(path: str | Path) -> Path:
    """The full-checkpoint directory at ``path`` (or its ``model/``)."""
    p = Path(path)
    for cand in (p, p / "model"):
        if (cand / "config.json").is_file():
            return cand
    raise ModelError(f"{path}: neither a LoRA adapter nor a model directory (config.json)")


def load_state(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a (sharded) safetensors checkpoint, in memory."""
    from safetensors.torch import load_file

    from medtune.finite import check_finite

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ModelError(f"{model_dir}: no .safetensors files")
    state = {k: v for f in files for k, v in load_file(str(f)).items()}
    check_finite(state, str(model_dir))
    return state


class WeightSource(Protocol):
    """Whole tensors of the base model and of each tuned model, by name."""

    n_layers: int

    def names(self) -> list[str]: ...

    def tensors(self, name: str) -> tuple[torch.Tensor, list[torch.Tensor]]: ...


class StateSource:
    """Full checkpoints in memory (``base`` and each tuned model's state dict). The tuned state dicts may
    stay on the CPU while the base is on a GPU: each tuned tensor is moved to the base tensor's device as
    it is merged, so the arithmetic runs where the model is, with one GPU copy of the model."""

    def __init__(self, base: dict[str, torch.Tensor], tuned: Sequence[dict[str, torch.Tensor]], n_layers: int):
        self.base, self.tuned, self.n_layers = base, list(tuned), n_layers

    def names(self) -> list[str]:
        return list(self.base)

    def tensors(self, name: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        base = self.base[name]
        return base, [t.get(name, base).to(base.device) for t in self.tuned]


def lora_layers(model: Any) -> list[tuple[str, Any]]:
    """(module name, peft LoRA layer) for every adapted module."""
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def _weight_name(module: str) -> str:
    """``base_model.model.model.layers.0.mlp.up_proj`` -> ``model.layers.0.mlp.up_proj.weight`` (the
    name of the tensor in the base checkpoint)."""
    return module.removeprefix("base_model.model.") + ".weight"


def peft_base_params(peft: Any) -> dict[str, torch.Tensor]:
    """The base model's live parameters under their checkpoint names (``...q_proj.base_layer.weight``
    -> ``...q_proj.weight``), without the adapters' own tensors."""
    return {k.replace(".base_layer.", "."): p for k, p in peft.get_base_model().named_parameters()
            if ".lora_" not in k}


class LoraSource:
    """A ``PeftModel`` with one or more adapters: tuned_i = base + peft's ``get_delta_weight(adapter_i)``.

    Tensors no adapter touches are the base's in every tuned model. Deltas are computed at the
    adapters' own scaling whatever :class:`LoraScaler` has set. ``base`` overrides the live base
    weights (the :class:`Averager` keeps the originals while it writes merged weights into the model)."""

    def __init__(self, peft: Any, adapters: Sequence[str], n_layers: int, base: dict[str, torch.Tensor] | None = None):
        self.adapters, self.n_layers = list(adapters), n_layers
        self.layers = {_weight_name(name): m for name, m in lora_layers(peft)}
        self.base_state = {k: p.detach() for k, p in peft_base_params(peft).items()} | (base or {})
        self._scaling = {k: dict(m.scaling) for k, m in self.layers.items()}

    def names(self) -> list[str]:
        return list(self.base_state)

    def adapted(self) -> list[str]:
        return list(self.layers)

    def delta(self, name: str, adapter: str) -> torch.Tensor:
        """``s * B @ A`` of ``adapter`` on tensor ``name`` (out, in), fp32."""
        m = self.layers[name]
        now = dict(m.scaling)
        m.scaling.update(self._scaling[name])
        try:
            with torch.no_grad():
                return m.get_delta_weight(adapter).detach().float()
        finally:
            m.scaling.update(now)

    def tensors(self, name: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        base = self.base_state[name]
        if name not in self.layers:
            return base, [base] * len(self.adapters)
        return base, [(base.float() + self.delta(name, a)).to(base.dtype) for a in self.adapters]


class ParentSource:
    """Several tuned parents of one base: each a LoRA adapter of ``lora`` (by name: base + its delta) or a full
    checkpoint's state dict (a tensor it lacks is the base's)."""

    def __init__(self, base: dict[str, torch.Tensor], parents: Sequence[str | dict[str, torch.Tensor]],
                 lora: LoraSource | None, n_layers: int):
        self.base, self.parents, self.lora, self.n_layers = base, list(parents), lora, n_layers

    def names(self) -> list[str]:
        return list(self.base)

    def _tuned(self, name: str, parent: str | dict[str, torch.Tensor]) -> torch.Tensor:
        base = self.base[name]
        if isinstance(parent, dict):  # a full parent's state dict stays on the CPU: one tensor at a time to the model
            return parent.get(name, base).to(base.device)
        if self.lora is None or name not in self.lora.layers:
            return base
        return (base.float() + self.lora.delta(name, parent)).to(base.dtype)

    def tensors(self, name: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.base[name], [self._tuned(name, p) for p in self.parents]


class LoraScaler:
    """Scales a loaded PeftModel's adapters in place: each adapted tensor's delta gets the coefficient
    the (LoRA-exact) method gives it; ``set_mix_weight(w)`` is WiSE-FT interpolation. ``order``: the adapters
    as the method's tuned models, each with its own coefficient (several parents); None: every adapter
    gets the coefficient of the one tuned model."""

    def __init__(self, model: Any, adapter: str | None = None, order: Sequence[str] | None = None):
        self.model, self.order = model, list(order) if order else None
        self.layers = lora_layers(model)
        if not self.layers:
            raise ModelError("the model has no LoRA layers to interpolate")
        self.base_scaling = {name: dict(m.scaling) for name, m in self.layers}
        self.n_layers = model.get_base_model().config.num_hidden_layers

    def set(self, method: str, params: M.Params) -> None:
        entry = M.method(method)
        if entry.lora is None:
            raise ModelError(f"method {method} is not exact in LoRA space; merge it per tensor (LoraSource)")
        for name, m in self.layers:
            p = M.tensor_params(method, params, _weight_name(name), self.n_layers)
            coeffs = dict(zip(self.order, entry.lora(p, len(self.order)), strict=True)) if self.order else None
            for adapter, s in self.base_scaling[name].items():
                m.scaling[adapter] = s * (coeffs[adapter] if coeffs is not None else entry.lora(p, 1)[0])

    def silence(self) -> None:
        """Every adapter at scaling 0: the model is its base layers (into which merged weights are written)."""
        for name, m in self.layers:
            for adapter in self.base_scaling[name]:
                m.scaling[adapter] = 0.0

    def set_mix_weight(self, mix_weight: float, ratios: Sequence[float] | None = None) -> None:
        """WiSE-FT at ``mix_weight`` on the tuned model (the averaging's ``alpha`` param; LoRA's own
        ``lora_alpha`` stays in the adapters' base scaling), per layer block with HMA ``ratios``."""
        if ratios:
            self.set("hma", M.resolve_params("hma", {"alpha": mix_weight, "ratios": list(ratios)}))
        else:
            self.set("linear", {"alpha": mix_weight})

    def reset(self) -> None:
        self.set_mix_weight(1.0)


def merged_tensors(source: WeightSource, method: str, params: M.Params, only: Sequence[str] | None = None,
                   where: str = "merged weights") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, merged tensor) for every tensor of ``source`` (or the ``only`` ones), whole tensors, each
    checked for non-finite values (``where`` names the output in the error)."""
    from medtune.finite import check_finite

    for name in only if only is not None else source.names():
        base, tuned = source.tensors(name)
        merged = M.merge_tensor(method, params, name, source.n_layers, base, tuned)
        check_finite([(name, merged)], f"{where} ({M.label(method, params)})")
        yield name, merged


class Averager:
    """A loaded model that can be set to any averaging point without reloading.

    ``model`` is a PeftModel for LoRA inputs (exact methods scale the adapters; other methods write
    merged weights into the base layers, with the adapters' scaling at 0, from a copy of the adapted
    base weights) or a plain model for full checkpoints (``tuned_states``: one more copy per model).
    ``parents``: several tuned models in order, each an adapter of ``model`` (by name) or a full state
    dict; a point exact in LoRA space with adapters only scales each by its own coefficient, any other
    point (a full parent among them) is written into the base weights, every tensor of them.
    ``placed``: where the model was put (:class:`medtune.placement.Placement`), recorded with each point."""

    def __init__(self, model: Any, n_layers: int, tuned_states: Sequence[dict[str, torch.Tensor]] | None = None,
                 parents: Sequence[str | dict[str, torch.Tensor]] | None = None, placed: Any = None):
        self.model, self.n_layers, self.placed = model, n_layers, placed
        self._written: set[str] = set()
        if parents is None:
            parents = list(model.peft_config) if tuned_states is None else list(tuned_states)
        self.parents = list(parents)
        adapters = [p for p in parents if isinstance(p, str)]
        self.lora_only = len(adapters) == len(parents)
        lora = LoraSource(model, adapters, n_layers) if adapters else None
        self.scaler = LoraScaler(model, order=adapters if len(parents) > 1 else None) if lora else None
        self.targets = peft_base_params(model) if lora else dict(model.named_parameters())  # tied weights appear once
        self._only: list[str] | None = lora.adapted() if lora and self.lora_only else None
        self._originals = {n: self.targets[n].detach().clone() for n in (self._only or self.targets)}
        self.source: WeightSource = ParentSource(self._originals, parents, lora, n_layers)

    @property
    def base_point(self) -> tuple[str, M.Params]:
        """The point that is the base model: alpha 0 of one tuned model, weight 0 on several."""
        return ("linear", {"alpha": 0.0}) if len(self.parents) == 1 else ("task_arithmetic", {"weight": 0.0})

    def set(self, method: str, params: M.Params) -> None:
        if self.scaler is not None:
            self._restore()
            if self.lora_only and M.method(method).lora is not None:
                self.scaler.set(method, params)
                return
            self.scaler.silence()
        with torch.no_grad():
            for name, merged in merged_tensors(self.source, method, params, self._only):
                self.targets[name].copy_(merged)
                self._written.add(name)

    def _restore(self) -> None:
        """Put the base weights of a LoRA model back (after a non-exact point wrote merged ones)."""
        with torch.no_grad():
            for name in self._written:
                self.targets[name].copy_(self._originals[name])
        self._written.clear()
