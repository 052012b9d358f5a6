"""The averaging math, apart from any I/O.

**Convention (used everywhere in medtune):** ``alpha`` is the weight on the *tuned* model,
``theta = (1 - alpha) * theta_base + alpha * theta_tuned``: alpha = 0 is the base model, alpha = 1
the tuned one. (The code of Lin et al., "Mitigating the Alignment Tax of RLHF", uses the opposite
convention: its ratio weighs the *base* model.)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from medtune.errors import MedtuneError


def interpolate(base: torch.Tensor, tuned: torch.Tensor, alpha: float) -> torch.Tensor:
    """WiSE-FT: ``(1 - alpha) * base + alpha * tuned``, computed in fp32 and returned in base's dtype.

    alpha = 0 and alpha = 1 return exact copies of the inputs."""
    if base.shape != tuned.shape:
        raise MedtuneError(f"shape mismatch {tuple(base.shape)} vs {tuple(tuned.shape)}")
    if alpha == 0:
        return base.clone()
    if alpha == 1:
        return tuned.to(base.dtype).clone()
    return torch.lerp(base.float(), tuned.float(), alpha).to(base.dtype)


def interpolate_(base: torch.Tensor, tuned: torch.Tensor, alpha: float) -> torch.Tensor:
    """:func:`interpolate` written into ``base`` when it is fp32 (no third tensor): for streaming."""
    if alpha in (0, 1) or base.dtype != torch.float32 or base.shape != tuned.shape:
        return interpolate(base, tuned, alpha)
    return base.lerp_(tuned.float(), alpha)


def uniform_soup(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean of several tuned models' tensors (a uniform model soup)."""
    if not tensors:
        raise MedtuneError("a soup needs at least one model")
    acc = torch.zeros_like(tensors[0], dtype=torch.float32)
    for t in tensors:
        acc += t.float()
    return (acc / len(tensors)).to(tensors[0].dtype)


def greedy_soup(names: Sequence[str], score: Callable[[list[str]], float]) -> tuple[list[str], list[dict[str, object]]]:
    """Greedy soup (Wortsman et al.): sort by held-out score, add a model only if the soup's held-out
    score strictly improves. ``score(ingredients)`` evaluates the uniform soup of those models.

    Returns the chosen ingredients and the log of every decision."""
    singles = {n: score([n]) for n in names}
    order = sorted(names, key=lambda n: -singles[n])
    soup = [order[0]]
    best = singles[order[0]]
    log: list[dict[str, object]] = [{"model": order[0], "score": best, "kept": True}]
    for n in order[1:]:
        s = score(soup + [n])
        kept = s > best
        log.append({"model": n, "score": s, "kept": kept})
        if kept:
            soup.append(n)
            best = s
    return soup, log


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


@dataclass(frozen=True)
class Point:
    """One averaged model's scores: higher is better on both axes."""

    label: str
    medical: float
    general: float


def pareto_front(points: Sequence[Point]) -> list[bool]:
    """For each point: True if no other point is at least as good on both axes and better on one."""
    flags = []
    for p in points:
        dominated = any((q.medical >= p.medical and q.general >= p.general) and (q.medical > p.medical or q.general > p.general)
                        for q in points)
        flags.append(not dominated)
    return flags


def select(points: Sequence[Point], base_general: float, *, rule: str = "retain", retain: float = 0.98,
           weight: float = 0.5) -> int:
    """Index of the chosen point.

    ``retain``: the best medical score among points whose general score is at least ``retain`` x
    the base model's (falls back to the best general score if none qualifies).
    ``weighted``: the best ``weight * medical + (1 - weight) * general``.
    Ties: ``retain`` prefers the higher general score among equal medical scores (the point that
    dominates), then the earlier point (the smaller alpha in a sweep); ``weighted`` the earlier point."""
    if not points:
        raise MedtuneError("nothing to select from")
    if rule == "weighted":
        return max(range(len(points)), key=lambda i: (weight * points[i].medical + (1 - weight) * points[i].general, -i))
    if rule != "retain":
        raise MedtuneError(f"unknown selection rule '{rule}' (valid: retain, weighted)")
    ok = [i for i, p in enumerate(points) if p.general >= retain * base_general]
    if not ok:
        return max(range(len(points)), key=lambda i: (points[i].general, -i))
    return max(ok, key=lambda i: (points[i].medical, points[i].general, -i))
