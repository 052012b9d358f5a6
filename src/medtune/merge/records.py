"""What a sweep writes and the study and report read: typed records with their load/save.

``results.json`` of ``medtune sweep`` is a :class:`SweepResult`; nobody else parses it. A point is
identified by its method and parameters (``SweepPoint.identity``), labelled by the method table's
:func:`~medtune.merge.methods.label`, and the selection rule is applied by
:meth:`SweepResult.best` through :class:`~medtune.merge.selection.SelectionRule` only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from medtune import atomic
from medtune.merge import methods as M
from medtune.merge.selection import Point, SelectionRule, pareto_front


class SweepPoint(BaseModel):
    """One averaged model scored on the validation tasks."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    method: str
    params: dict[str, Any]
    label: str
    medical: float
    """Mean validation accuracy of the medical tasks."""
    general: float
    """Mean validation accuracy of the general tasks."""
    tasks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per task, its accuracy metric (value, stderr, ci95, n)."""
    seconds: float = 0.0
    key: str = ""
    """What the scores depend on besides the point (the weights, tasks, limit, sources): reused only if equal."""
    pareto: bool = False

    @property
    def identity(self) -> tuple[str, str]:
        return self.method, json.dumps(self.params, sort_keys=True)

    @property
    def alpha(self) -> float | None:
        return self.params.get("alpha")

    @property
    def ratios(self) -> list[float] | None:
        return self.params.get("ratios")

    def is_endpoint(self) -> float | None:
        """0.0 for the base model, 1.0 for the tuned model itself (linear at alpha 0 / 1), else None."""
        if self.method == "linear" and self.alpha in (0.0, 1.0):
            return self.alpha
        return None

    def point(self) -> Point:
        return Point(self.label, self.medical, self.general)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "SweepPoint":
        """A point as saved; points saved before methods had names (alpha / ratios only) read as linear / hma."""
        if "method" not in raw:
            ratios = raw.get("ratios")
            raw = {**raw, "method": "hma" if ratios else "linear",
                   "params": {"alpha": raw["alpha"], **({"ratios": ratios} if ratios else {})}}
        return cls.model_validate(raw)


class SweepResult(BaseModel):
    """Every scored point of one sweep, the Pareto marks, and the selected point."""

    model_config = ConfigDict(extra="ignore")

    config: dict[str, Any] = Field(default_factory=dict)
    key: str = ""
    base_identity: str = ""
    """The base model's identity when the points were scored (:func:`medtune.merge.sweep.base_identity`)."""
    tuned_identity: str = ""
    """The tuned model's weights when the points were scored (sha256, :mod:`medtune.weights_hash`)."""
    points: list[SweepPoint] = Field(default_factory=list)
    selected: int | None = None
    base_general: float | None = None
    rule: SelectionRule | None = None
    convention: str = "alpha is the weight on the tuned model"

    @classmethod
    def load(cls, path: str | Path) -> "SweepResult | None":
        """The sweep's ``results.json``, or None when there is none yet."""
        path = Path(path)
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        rule = raw.get("rule")
        return cls(config=raw.get("config", {}), key=raw.get("key", ""), base_identity=raw.get("base_identity", ""),
                   tuned_identity=raw.get("tuned_identity", ""),
                   points=[SweepPoint.from_json(p) for p in raw.get("points", [])], selected=raw.get("selected"),
                   base_general=raw.get("base_general"), rule=SelectionRule(**rule) if isinstance(rule, dict) else None)

    def save(self, path: str | Path) -> None:
        atomic.write_json(path, self.model_dump(mode="json"))

    def find(self, method: str, params: M.Params) -> SweepPoint | None:
        ident = (method, json.dumps(params, sort_keys=True))
        return next((p for p in self.points if p.identity == ident), None)

    def mark(self, rule: SelectionRule | None = None, base_general: float | None = None) -> None:
        """Mark the Pareto front and, given the rule and the base model's general score, select."""
        flags = pareto_front([p.point() for p in self.points])
        self.points = [p.model_copy(update={"pareto": f}) for p, f in zip(self.points, flags)]
        if rule is not None and base_general is not None:
            self.rule, self.base_general = rule, base_general
            self.selected = rule.pick([p.point() for p in self.points], base_general)

    @property
    def selected_point(self) -> SweepPoint | None:
        return self.points[self.selected] if self.selected is not None else None

    def best(self, kind: str) -> SweepPoint | None:
        """The point of ``kind`` (a method; "uniform" is "linear") the sweep's rule picks among that
        method's points (linear: only 0 < alpha < 1, the endpoints being the base and tuned models);
        None when there is none."""
        method = "linear" if kind == "uniform" else kind
        if self.rule is None or self.base_general is None:
            return None
        pts = [p for p in self.points if p.method == method and p.is_endpoint() is None]
        if not pts:
            return None
        return pts[self.rule.pick([p.point() for p in pts], self.base_general)]
