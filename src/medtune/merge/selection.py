"""The selection rule: which averaged model a sweep (and the study) picks, and the Pareto front.

Applied in one place: :func:`select` (and :func:`pareto_front`) are called by the sweep, by the
study's comparison points and by the shipped-model choice, all on validation scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from medtune.errors import MedtuneError

Rule = Literal["retain", "weighted"]


@dataclass(frozen=True)
class Point:
    """One averaged model's scores: higher is better on both axes."""

    label: str
    medical: float
    general: float


@dataclass(frozen=True)
class SelectionRule:
    """The rule with its parameters (``retain``: share of the base's general score to keep;
    ``weighted``: weight of the medical score)."""

    rule: Rule = "retain"
    retain: float = 0.98
    weight: float = 0.5

    def describe(self) -> str:
        if self.rule == "retain":
            return (f"best validation medical score whose validation general score is at least {self.retain:.0%} of the "
                    "base model's")
        return f"best {self.weight:g} x medical + {1 - self.weight:g} x general (validation)"

    def pick(self, points: Sequence[Point], base_general: float) -> int:
        return select(points, base_general, rule=self.rule, retain=self.retain, weight=self.weight)


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
