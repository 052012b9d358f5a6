"""The averaging methods: one table, ``MERGE_METHODS``, of pure functions on tensors, apart from any I/O.

Every method is ``fn(base, tuned: list[Tensor], **params) -> Tensor`` on one tensor (computed in
fp32, returned in base's dtype), in the style of peft's ``utils/merge_utils.py``; TIES and DARE use
peft's own ``prune`` / ``calculate_majority_sign_mask`` / ``disjoint_merge`` / ``dare_linear``.
Each :class:`MergeMethod` entry also says

* which parameters it takes: a pydantic model (:class:`ParamsModel`) with each parameter's type,
  default and allowed range, checked once by :func:`resolve_params` wherever parameters enter (a
  merge config, a sweep's or a study's ``methods`` grid);
* whether it is **exact in LoRA space** (``lora``): a method whose result is
  ``base + sum_i c_i * delta_i`` with coefficients that do not depend on the tensor values (linear
  interpolation, HMA, task arithmetic, soups) is applied to a LoRA adapter by scaling its ``lora_B``
  by ``c_i`` -- no full copy of the weights; TIES, DARE and SLERP look at the merged delta's values
  and are applied to ``base + s * B @ A``;
* whether it needs **whole-tensor statistics** (TIES's top-k, DARE's per-tensor seed, SLERP's
  norms), so that a streamed merge must read whole tensors for it, not row chunks;
* its **mergekit** ``merge_method`` name and parameters, from which ``mergekit.yaml`` is written.

**Adding a method is one table entry plus its function**: write ``fn(base, tuned, **params)``, add
``MERGE_METHODS["name"] = MergeMethod(fn, params=..., mergekit="...", kit=...)``. ``medtune merge``,
``medtune sweep``, the study's ``averaging.methods`` grids, the report labels and the mergekit export
all read the table; nothing else names a method.

**Convention (used everywhere in medtune):** ``alpha`` is the weight on the *tuned* model,
``theta = (1 - alpha) * theta_base + alpha * theta_tuned``: alpha = 0 is the base model, alpha = 1
the tuned one (also SLERP's ``t``). (The code of Lin et al., "Mitigating the Alignment Tax of RLHF",
uses the opposite convention: its ratio weighs the *base* model.)
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from peft.utils import merge_utils as peft_merge
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medtune.errors import MedtuneError

Params = dict[str, Any]
Tensor = torch.Tensor


def _delta(base: Tensor, tuned: Sequence[Tensor]) -> list[Tensor]:
    """Task vectors ``tuned_i - base`` in fp32."""
    b = base.float()
    return [t.float() - b for t in tuned]


def _out(base: Tensor, value: Tensor) -> Tensor:
    return value.to(base.dtype)


def _check(base: Tensor, tuned: Sequence[Tensor]) -> None:
    if not tuned:
        raise MedtuneError("averaging needs at least one tuned tensor")
    for t in tuned:
        if t.shape != base.shape:
            raise MedtuneError(f"shape mismatch {tuple(base.shape)} vs {tuple(t.shape)}")


def interpolate(base: Tensor, tuned: Tensor, alpha: float) -> Tensor:
    """WiSE-FT: ``(1 - alpha) * base + alpha * tuned``, computed in fp32 and returned in base's dtype.

    alpha = 0 and alpha = 1 return exact copies of the inputs."""
    _check(base, [tuned])
    if alpha == 0:
        return base.clone()
    if alpha == 1:
        return tuned.to(base.dtype).clone()
    return torch.lerp(base.float(), tuned.float(), alpha).to(base.dtype)


def linear(base: Tensor, tuned: list[Tensor], *, alpha: float) -> Tensor:
    """WiSE-FT interpolation with the one tuned model."""
    return interpolate(base, tuned[0], alpha)


def _per_model(tuned: Sequence[Tensor], weights: Sequence[float] | None) -> list[float]:
    """Each tuned model's own weight (``weights``, one per model; unset: 1 each)."""
    if weights is None:
        return [1.0] * len(tuned)
    if len(weights) != len(tuned):
        raise MedtuneError(f"weights: give one per tuned model ({len(tuned)}), got {len(weights)}")
    return [float(w) for w in weights]


def task_arithmetic(base: Tensor, tuned: list[Tensor], *, weight: float, weights: list[float] | None = None) -> Tensor:
    """``base + weight * sum_i w_i (tuned_i - base)`` (Ilharco et al.; ``w_i``: ``weights``, 1 each unless
    given), peft's ``task_arithmetic``."""
    _check(base, tuned)
    deltas = _delta(base, tuned)
    mixed = peft_merge.task_arithmetic(deltas, torch.tensor([weight * w for w in _per_model(tuned, weights)]))
    return _out(base, base.float() + mixed)


def ties(base: Tensor, tuned: list[Tensor], *, density: float, weight: float,
         weights: list[float] | None = None) -> Tensor:
    """TIES (Yadav et al.): keep each delta's top ``density`` share by magnitude, elect each entry's
    sign by the sum of the kept deltas, average the deltas that agree with it (disjoint mean), add
    ``weight`` x that to base. peft's ``ties`` (weights are multiplied in after the sign election).

    With per-model ``weights`` ``w_i``, mergekit's TIES (``normalize: true``, ``lambda: weight``): the
    sign is elected on the weighted kept deltas and the mean is weighted, ``sum w_i d_i / sum w_i`` over
    the models that agree -- peft's for equal weights, and what ``mergekit.yaml`` reproduces."""
    _check(base, tuned)
    deltas = _delta(base, tuned)
    if weights is None:
        mixed = peft_merge.ties(deltas, torch.full((len(deltas),), float(weight)), density)
        return _out(base, base.float() + mixed)
    w = torch.tensor(_per_model(tuned, weights)).reshape(-1, *([1] * base.dim()))  # (models, 1, ..)
    kept = torch.stack([peft_merge.prune(d, density, method="magnitude") for d in deltas]) * w
    agree = peft_merge.calculate_majority_sign_mask(kept, method="total")
    divisor = (w * agree).sum(dim=0)
    mixed = (kept * agree).sum(dim=0) / torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    return _out(base, base.float() + weight * mixed)


def _dare(peft_fn: Callable[..., Tensor], base: Tensor, tuned: list[Tensor], density: float, weight: float,
          seed: int) -> Tensor:
    """peft's DARE under a forked global RNG seeded with ``seed`` (peft's random pruning draws from
    torch's global RNG; forking leaves the caller's RNG state as it was)."""
    _check(base, tuned)
    deltas = _delta(base, tuned)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mixed = peft_fn(deltas, torch.full((len(deltas),), float(weight)), density)
    return _out(base, base.float() + mixed)


def dare_linear(base: Tensor, tuned: list[Tensor], *, density: float, weight: float, seed: int) -> Tensor:
    """DARE (Yu et al.): drop each delta entry with probability ``1 - density`` (seeded), rescale the
    kept ones by ``1 / density``, add ``weight`` x their sum to base. peft's ``dare_linear``."""
    return _dare(peft_merge.dare_linear, base, tuned, density, weight, seed)


def dare_ties(base: Tensor, tuned: list[Tensor], *, density: float, weight: float, seed: int) -> Tensor:
    """DARE's seeded random drop and rescale, then TIES's sign election and disjoint mean (peft's ``dare_ties``)."""
    return _dare(peft_merge.dare_ties, base, tuned, density, weight, seed)


SLERP_DOT_THRESHOLD = 0.9995
"""|cos angle| above which SLERP falls back to linear interpolation (mergekit's value)."""


def slerp(base: Tensor, tuned: list[Tensor], *, alpha: float, eps: float = 1e-8) -> Tensor:
    """Spherical interpolation of the whole tensor (flattened) from base (alpha 0) to tuned (alpha 1):
    ``sin((1-a) theta)/sin theta * base + sin(a theta)/sin theta * tuned``, theta the angle between
    them; nearly parallel (or antiparallel) tensors fall back to linear interpolation, as mergekit's
    ``slerp`` does. peft has no SLERP; this follows mergekit's ``merge_methods/slerp.py``."""
    _check(base, tuned)
    if len(tuned) != 1:
        raise MedtuneError(f"slerp interpolates with exactly one tuned model (got {len(tuned)})")
    a, b = base.float().reshape(-1), tuned[0].float().reshape(-1)
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    na = na if na > eps else torch.ones_like(na)
    nb = nb if nb > eps else torch.ones_like(nb)
    dot = ((a / na) * (b / nb)).sum().clamp(-1, 1)
    if dot.abs() > SLERP_DOT_THRESHOLD:
        return _out(base, ((1 - alpha) * a + alpha * b).reshape(base.shape))
    theta = torch.acos(dot)
    s = torch.sin(theta)
    mixed = torch.sin((1 - alpha) * theta) / s * a + torch.sin(alpha * theta) / s * b
    return _out(base, mixed.reshape(base.shape))


def uniform_soup(tensors: Sequence[Tensor]) -> Tensor:
    """Mean of several tuned models' tensors (a uniform model soup)."""
    if not tensors:
        raise MedtuneError("a soup needs at least one model")
    acc = torch.zeros_like(tensors[0], dtype=torch.float32)
    for t in tensors:
        acc += t.float()
    return (acc / len(tensors)).to(tensors[0].dtype)


def soup(base: Tensor, tuned: list[Tensor]) -> Tensor:
    """The uniform soup of the tuned models (the base is not an ingredient)."""
    return uniform_soup(tuned)


def weighted_soup(base: Tensor, tuned: list[Tensor], *, weights: list[float] | None = None) -> Tensor:
    """A linear soup of the tuned models: ``sum_i w_i tuned_i / sum_i w_i`` (the base is not an ingredient;
    mergekit's ``linear`` with ``normalize: true``)."""
    _check(base, tuned)
    w = _per_model(tuned, weights)
    acc = torch.zeros_like(base, dtype=torch.float32)
    for wi, t in zip(w, tuned):
        acc += wi * t.float()
    return _out(base, acc / sum(w))


# --- heterogeneous averaging: per-tensor ratios --------------------------------------------------------

def hma_ratios(alpha: float, k: int = 3, given: Sequence[float] | None = None) -> list[float]:
    """Per-block ratios for heterogeneous model averaging whose mean is ``alpha``.

    ``given`` ratios are checked (length k, each in [0, 1], mean alpha within 1e-6); without them
    every block gets alpha (plain interpolation)."""
    if given is None:
        return [alpha] * k
    if len(given) != k:
        raise MedtuneError(f"HMA needs {k} ratios (one per block), got {len(given)}")
    if any(not 0 <= r <= 1 for r in given):
        raise MedtuneError(f"HMA ratios must lie in [0, 1], got {list(given)}")
    mean = sum(given) / k
    if abs(mean - alpha) > 1e-6:
        raise MedtuneError(f"HMA ratios {list(given)} average {mean:.6f}, not alpha = {alpha}")
    return list(given)


def block_of_layer(layer: int, n_layers: int, k: int) -> int:
    """Contiguous split of ``n_layers`` transformer layers into ``k`` blocks (input, ..., output);
    earlier blocks take the extra layers when n_layers is not a multiple of k."""
    base, extra = divmod(n_layers, k)
    edge = 0
    for b in range(k):
        edge += base + (1 if b < extra else 0)
        if layer < edge:
            return b
    raise MedtuneError(f"layer {layer} out of range for {n_layers} layers")


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def tensor_ratio(name: str, n_layers: int, ratios: Sequence[float], alpha: float) -> float:
    """The ratio a tensor gets: its block's ratio inside transformer layer i, alpha elsewhere
    (embeddings, final norm, LM head), as in the HMA paper."""
    m = _LAYER.search(name)
    if m is None:
        return alpha
    return ratios[block_of_layer(int(m.group(1)), n_layers, len(ratios))]


def hma(base: Tensor, tuned: list[Tensor], *, alpha: float, ratios: list[float] | None = None) -> Tensor:
    """Linear interpolation at this tensor's ratio; :func:`merge_tensor` puts the tensor's block ratio
    into ``alpha`` (see ``per_tensor`` of the table entry)."""
    return linear(base, tuned, alpha=alpha)


def _hma_tensor(name: str, n_layers: int, p: Params) -> Params:
    return {"alpha": tensor_ratio(name, n_layers, p["ratios"], p["alpha"])}


def _block_values(name: str, n_layers: int, p: Params) -> Params:
    """TIES / DARE with per-block density and weight: the tensor's block's values inside transformer layer i,
    the scalar ones elsewhere (embeddings, final norm, LM head), as HMA's ratios."""
    out = {k: v for k, v in p.items() if k not in ("block_density", "block_weight")}
    m = _LAYER.search(name)
    if p.get("block_density") is not None and m is not None:
        b = block_of_layer(int(m.group(1)), n_layers, len(p["block_density"]))
        out["density"], out["weight"] = p["block_density"][b], p["block_weight"][b]
    return out


def _dare_tensor(name: str, n_layers: int, p: Params) -> Params:
    return _name_seed(name, n_layers, _block_values(name, n_layers, p))


def _name_seed(name: str, n_layers: int, p: Params) -> Params:
    """A per-tensor seed: the same tensor gets the same drop mask however the merge is ordered or streamed."""
    return {**p, "seed": (int(p["seed"]) * 1_000_003 + zlib.crc32(name.encode())) % (2**63)}


def greedy_soup(names: Sequence[str], score: Callable[[list[str]], float]) -> tuple[list[str], list[dict[str, object]]]:
    """Greedy soup (Wortsman et al.): sort by held-out score, add a model only if the soup's held-out
    score strictly improves. ``score(ingredients)`` evaluates the uniform soup of those models.

    Returns the chosen ingredients and the log of every decision."""
    singles = {n: score([n]) for n in names}
    order = sorted(names, key=lambda n: -singles[n])
    chosen = [order[0]]
    best = singles[order[0]]
    log: list[dict[str, object]] = [{"model": order[0], "score": best, "kept": True}]
    for n in order[1:]:
        s = score(chosen + [n])
        kept = s > best
        log.append({"model": n, "score": s, "kept": kept})
        if kept:
            chosen.append(n)
            best = s
    return chosen, log


# --- the parameters of each method ---------------------------------------------------------------------

Unit = Annotated[float, Field(ge=0, le=1)]
"""A weight on the tuned model (alpha, an HMA ratio): 0 = base, 1 = tuned."""
Density = Annotated[float, Field(gt=0, le=1)]
"""The share of each delta TIES / DARE keep."""
Weight = Annotated[float, Field(ge=0, le=10)]
"""The factor on the (summed) task vectors."""


class ParamsModel(BaseModel):
    """Base of every method's parameters: unknown keys are errors, and types are strict -- a quoted
    ``'0.5'`` or a ``true`` is not taken for a number (a parameter grid is a free-form YAML mapping,
    where quotes are the only sign of what was meant); a whole number is a valid float."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class NoParams(ParamsModel):
    """Soups: nothing to set."""


class AlphaParams(ParamsModel):
    alpha: Unit = 0.5


class HmaParams(AlphaParams):
    ratios: list[Unit] = Field(min_length=1)
    """One ratio per layer block (input .. output), averaging to alpha."""

    @model_validator(mode="after")
    def _mean_is_alpha(self) -> "HmaParams":
        try:
            hma_ratios(self.alpha, len(self.ratios), self.ratios)
        except MedtuneError as err:
            raise ValueError(str(err)) from None
        return self


PerModel = Annotated[list[Weight], Field(min_length=1)]
"""One weight per tuned model, in the order given (several parents); unset: 1 each."""


class WeightParams(ParamsModel):
    weight: Weight = 1.0
    weights: PerModel | None = None
    """Per tuned model, the factor on its task vector (times ``weight``)."""


class SoupParams(ParamsModel):
    weights: PerModel | None = None
    """Per tuned model, its share of the soup (normalised by their sum; unset: equal shares)."""

    @model_validator(mode="after")
    def _some_weight(self) -> "SoupParams":
        if self.weights is not None and not sum(self.weights) > 0:
            raise ValueError(f"weights {self.weights}: give at least one positive weight")
        return self


class _PrunedParams(ParamsModel):
    density: Density = 0.5
    weight: Weight = 1.0
    block_density: list[Density] | None = None
    """Per contiguous layer block (input .. output), the density inside its layers (``density``: outside them)."""
    block_weight: list[Weight] | None = None
    """Per layer block, the weight inside its layers (``weight``: outside them); as many as block_density."""

    @model_validator(mode="after")
    def _blocks_pair(self) -> "_PrunedParams":
        d, w = self.block_density, self.block_weight
        if (d is None) != (w is None) or (d is not None and w is not None and (len(d) != len(w) or not d)):
            raise ValueError("block_density and block_weight: give both, one value per layer block each")
        return self


class TiesParams(_PrunedParams):
    weights: PerModel | None = None
    """Per tuned model, the weight of its kept delta in the sign election and the (weighted) disjoint mean."""


class DareParams(_PrunedParams):
    seed: int = 0
    """Seeds each tensor's random drop mask (with the tensor's name)."""


def _param_problem(e: Any, model: type[ParamsModel]) -> str:
    """One pydantic error as ``key: what is wrong`` in the words of a merge parameter."""
    key = ".".join(str(p) for p in e["loc"])
    value, kind = e.get("input"), e["type"]
    if kind == "extra_forbidden":
        return f"unknown parameter {key!r} (valid: {', '.join(model.model_fields) or 'none'})"
    if kind == "missing":
        return f"parameter {key!r} is required"
    if kind in ("float_type", "int_type") and isinstance(value, str):
        number = "an integer" if kind == "int_type" else "a number"
        return (f"{key}: {value!r} is text, not {number}" +
                (": write it without quotes" if _is_number(value) else ""))
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{key} = {value} is outside the allowed range ({e['msg'].removeprefix('Input ').lower()})"
    if kind == "too_short":
        return f"{key}: give at least {e['ctx']['min_length']} value (got {value!r})"
    if kind == "value_error":
        return e["msg"].removeprefix("Value error, ")
    return f"{key}: {e['msg'].removeprefix('Input ').lower()} (got {value!r})"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- the table ------------------------------------------------------------------------------------------

Kit = dict[str, Any]
"""mergekit parameters: ``base`` (the base model's own entry in ``models``, or None when the base is
only ``base_model``), ``model`` (each tuned model's parameters), ``models`` (optional: one dict per tuned
model, in order, added to ``model``'s: per-model weights), ``parameters`` (global)."""


@dataclass(frozen=True)
class MergeMethod:
    fn: Callable[..., Tensor]
    """``(base, tuned: list[Tensor], **params) -> Tensor`` on one tensor."""
    params_model: type[ParamsModel]
    """The parameters: their types, defaults and ranges (checked by :func:`resolve_params`)."""
    mergekit: str
    """mergekit's ``merge_method`` name."""
    kit: Callable[[Params, int], Kit]
    """(params, number of transformer layers) -> the mergekit parameters (see :data:`Kit`)."""
    lora: Callable[[Params, int], list[float]] | None = None
    """Exact in LoRA space: (params of one tensor, number of tuned models) -> coefficient of each
    tuned model's delta. None: the method acts on the merged delta's values."""
    whole_tensor: bool = False
    """Needs whole-tensor statistics: a streamed merge reads whole tensors, not row chunks."""
    n_tuned: int | None = None
    """Exactly this many tuned models (None: one or more)."""
    uses_base: bool = True
    """False for soups: the result is made of the tuned models only."""
    per_tensor: Callable[[str, int, Params], Params] | None = None
    """(tensor name, number of layers, params) -> the params for that tensor (HMA's block ratios, DARE's seed)."""
    search: str | None = None
    """A search run on held-out scores before merging (``greedy``: the greedy soup)."""
    kit_note: str = ""
    """Why mergekit's merge from ``mergekit.yaml`` is not this one bit for bit ("": it is)."""

    @property
    def params(self) -> dict[str, Any]:
        """Parameter names and defaults (None: required)."""
        return {k: None if f.is_required() else f.default for k, f in self.params_model.model_fields.items()}


def _hma_kit(p: Params, n_layers: int) -> Kit:
    def weights(of_tuned: bool) -> list[dict[str, Any]]:
        side = (lambda r: round(r, 6)) if of_tuned else (lambda r: round(1 - r, 6))
        conds: list[dict[str, Any]] = [
            {"filter": f"model.layers.{i}.", "value": side(p["ratios"][block_of_layer(i, n_layers, len(p["ratios"]))])}
            for i in range(n_layers)]
        return conds + [{"value": side(p["alpha"])}]

    return {"base": {"weight": weights(False)}, "model": {"weight": weights(True)}, "parameters": {"normalize": False}}


def _layered(p: Params, n_layers: int, key: str) -> Any:
    """A TIES / DARE parameter for mergekit: the scalar, or with per-block values one ``filter`` per layer
    (mergekit's conditional parameters) and the scalar for the other tensors."""
    blocks = p.get(f"block_{key}")
    if blocks is None:
        return p[key]
    return [{"filter": f"model.layers.{i}.", "value": blocks[block_of_layer(i, n_layers, len(blocks))]}
            for i in range(n_layers)] + [{"value": p[key]}]


_SOUP_KIT = lambda p, n: {"base": None, "model": {"weight": 1.0}, "parameters": {"normalize": True}}  # noqa: E731


def _models_kit(p: Params, key: str, times: float = 1.0) -> list[Params] | None:
    """Per-model mergekit parameters from per-model ``weights`` (each times ``times``); None without them."""
    if p.get("weights") is None:
        return None
    return [{key: round(times * w, 6)} for w in p["weights"]]


def _weighted(p: Params, k: int) -> list[float]:
    """LoRA coefficients of task arithmetic: ``weight`` x each model's own weight."""
    return [p["weight"] * w for w in p["weights"]] if p.get("weights") is not None else [p["weight"]] * k


_DARE_NOTE = ("mergekit draws its own random drop mask and rescales to keep each delta's L1 norm: its merge "
              "matches this one in distribution, not bit for bit")

MERGE_METHODS: dict[str, MergeMethod] = {
    "linear": MergeMethod(
        linear, AlphaParams, "linear", n_tuned=1,
        kit=lambda p, n: {"base": {"weight": round(1 - p["alpha"], 6)}, "model": {"weight": round(p["alpha"], 6)},
                          "parameters": {"normalize": False}},
        lora=lambda p, k: [p["alpha"]]),
    "hma": MergeMethod(
        hma, HmaParams, "linear", n_tuned=1, kit=_hma_kit, lora=lambda p, k: [p["alpha"]], per_tensor=_hma_tensor),
    "task_arithmetic": MergeMethod(
        task_arithmetic, WeightParams, "task_arithmetic",
        kit=lambda p, n: {"base": None, "model": {"weight": p["weight"]},
                          "models": _models_kit(p, "weight", p["weight"]), "parameters": {"normalize": False}},
        lora=_weighted),
    # peft's TIES divides by the number of agreeing models and multiplies by the weight; mergekit's
    # normalize divides by the agreeing weights' sum: equal for weight 1 per model and lambda = weight.
    "ties": MergeMethod(
        ties, TiesParams, "ties", whole_tensor=True, per_tensor=_block_values,
        kit=lambda p, n: {"base": None, "model": {"weight": 1.0, "density": _layered(p, n, "density")},
                          "models": _models_kit(p, "weight"),
                          "parameters": {"normalize": True, "lambda": _layered(p, n, "weight")}}),
    "dare_ties": MergeMethod(
        dare_ties, DareParams, "dare_ties", whole_tensor=True, per_tensor=_dare_tensor,
        kit=lambda p, n: {"base": None, "model": {"weight": 1.0, "density": _layered(p, n, "density")},
                          "parameters": {"normalize": True, "lambda": _layered(p, n, "weight"), "rescale": True}},
        kit_note=_DARE_NOTE),
    "dare_linear": MergeMethod(
        dare_linear, DareParams, "dare_linear", whole_tensor=True, per_tensor=_dare_tensor,
        kit=lambda p, n: {"base": None, "model": {"weight": _layered(p, n, "weight"), "density": _layered(p, n, "density")},
                          "parameters": {"normalize": False, "rescale": True}}, kit_note=_DARE_NOTE),
    "slerp": MergeMethod(
        slerp, AlphaParams, "slerp", n_tuned=1, whole_tensor=True,
        kit=lambda p, n: {"base": {}, "model": {}, "parameters": {"t": p["alpha"]}}),
    "soup_uniform": MergeMethod(soup, NoParams, "linear", uses_base=False, kit=_SOUP_KIT,
                                lora=lambda p, k: [1.0 / k] * k),
    "soup_greedy": MergeMethod(soup, NoParams, "linear", uses_base=False, kit=_SOUP_KIT,
                               lora=lambda p, k: [1.0 / k] * k, search="greedy"),
    "soup_weighted": MergeMethod(
        weighted_soup, SoupParams, "linear", uses_base=False,
        kit=lambda p, n: {**_SOUP_KIT(p, n), "models": _models_kit(p, "weight")},
        lora=lambda p, k: [w / sum(p["weights"]) for w in p["weights"]] if p.get("weights") else [1.0 / k] * k),
}
"""Method name -> :class:`MergeMethod`. The one place a method is defined."""


def method(name: str) -> MergeMethod:
    if name not in MERGE_METHODS:
        raise MedtuneError(f"unknown averaging method {name!r} (valid: {', '.join(MERGE_METHODS)})")
    return MERGE_METHODS[name]


def resolve_params(name: str, params: Params | None = None, n_tuned: int | None = None) -> Params:
    """``params`` checked against the method's parameter model and completed with its defaults.

    The values given are kept as given (a whole number stays one), so a sweep point's identity does
    not change with the check; HMA's ratios become floats."""
    m = method(name)
    given = dict(params or {})
    try:
        typed = m.params_model.model_validate(given)
    except ValidationError as err:
        problems = [_param_problem(e, m.params_model) for e in err.errors()]
        raise MedtuneError(f"method {name}: {'; '.join(problems)}") from None
    out = {**typed.model_dump(exclude_none=True), **given}  # unset optional ones (per-block values) left out
    if isinstance(typed, HmaParams):
        out["ratios"] = list(typed.ratios)
    if n_tuned is not None and m.n_tuned is not None and n_tuned != m.n_tuned:
        raise MedtuneError(f"method {name} averages the base with exactly {m.n_tuned} tuned model (got {n_tuned})")
    if n_tuned is not None and out.get("weights") is not None and len(out["weights"]) != n_tuned:
        raise MedtuneError(f"method {name}: weights: give one per tuned model ({n_tuned}), got {len(out['weights'])}")
    return out


def tensor_params(name: str, params: Params, tensor: str, n_layers: int) -> Params:
    """The parameters ``tensor`` is merged with (per-tensor ratios and seeds applied)."""
    m = method(name)
    return m.per_tensor(tensor, n_layers, params) if m.per_tensor else params


def merge_tensor(name: str, params: Params, tensor: str, n_layers: int, base: Tensor, tuned: list[Tensor]) -> Tensor:
    """One tensor merged by method ``name``; non-float tensors (integer buffers) are the base's."""
    if not base.is_floating_point():
        return base.clone()
    return method(name).fn(base, tuned, **tensor_params(name, params, tensor, n_layers))


def label(name: str, params: Params) -> str:
    """How a point is named in sweeps and reports: ``α=0.5`` for linear, else ``ties density=0.5 weight=1``."""
    p = {k: v for k, v in params.items() if k != "seed" or v != 0}
    if name == "linear":
        return f"α={p['alpha']:g}"
    if name == "hma":
        return f"α={p['alpha']:g} HMA {list(p['ratios'])}"
    text = " ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in p.items())
    return f"{name} {text}".strip()
