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


class SearchMark(BaseModel):
    """Where a point found by a search (:mod:`medtune.merge.search`) stands in it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    order: int
    """Proposal number: the search order."""
    items: int
    """Validation items it was scored on (all of them when complete)."""
    complete: bool
    """Scored on every item: selectable; False: stopped early by successive halving or the budget, its
    scores on a subsample only (kept for the search's record, never selected or on the front)."""
    mergekit: str = ""
    """Its ``mergekit.yaml``, relative to the sweep directory ("": none written)."""
    mergekit_note: str = ""
    """Why mergekit's merge from that file is not this point bit for bit ("": it is)."""


class SearchSummary(BaseModel):
    """What a sweep's search spent and found, next to what its grid spent and found (validation)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    space: str
    sampler: str
    parents: list[str] = Field(default_factory=list)
    """The tuned models a multi-parent search averaged (empty: the sweep's one tuned model)."""
    seed: int
    budget: int
    scored: int
    """(point, item) pairs the search scored, the base's counted whether or not the grid scored it first."""
    grid_scored: int
    """(point, item) pairs the grid scored: its points x the validation items."""
    items: int
    """Validation items per fully scored point."""
    proposed: int
    complete: int


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
    device: str = ""
    """Where the point was scored (``cpu``, ``cuda:0``; empty: scored before sweeps recorded it)."""
    dtype: str = ""
    """The model's dtype when it was scored (``float32``, ``bfloat16``, ``float16``)."""
    search: SearchMark | None = None
    """Set on the points a search proposed; None on the grid's."""
    parents: list[str] = Field(default_factory=list)
    """The tuned models the point averages, in the order of its ``weights``, when it is not the sweep's one tuned
    model (a multi-parent search's points); merge it with ``tuned: parents``."""

    @property
    def selectable(self) -> bool:
        """Scored on every validation item (a grid point, or a search point that was not stopped early)."""
        return self.search is None or self.search.complete

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
    """The base model's identity when the points were scored (:func:`medtune.weights_hash.model_identity`)."""
    tuned_identity: str = ""
    """The tuned model's weights when the points were scored (sha256, :mod:`medtune.weights_hash`)."""
    points: list[SweepPoint] = Field(default_factory=list)
    selected: int | None = None
    base_general: float | None = None
    rule: SelectionRule | None = None
    search: SearchSummary | None = None
    """The search's spend next to the grid's, when the sweep had a search."""
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
                   base_general=raw.get("base_general"), rule=SelectionRule(**rule) if isinstance(rule, dict) else None,
                   search=raw.get("search"))

    def save(self, path: str | Path) -> None:
        atomic.write_json(path, self.model_dump(mode="json"))

    def find(self, method: str, params: M.Params) -> SweepPoint | None:
        ident = (method, json.dumps(params, sort_keys=True))
        return next((p for p in self.points if p.identity == ident), None)

    def mark(self, rule: SelectionRule | None = None, base_general: float | None = None) -> None:
        """Mark the Pareto front and, given the rule and the base model's general score, select; both among
        the points scored on every item (:attr:`SweepPoint.selectable`)."""
        ok = [i for i, p in enumerate(self.points) if p.selectable]
        flags = dict(zip(ok, pareto_front([self.points[i].point() for i in ok])))
        self.points = [p.model_copy(update={"pareto": flags.get(i, False)}) for i, p in enumerate(self.points)]
        if rule is not None and base_general is not None:
            self.rule, self.base_general = rule, base_general
            self.selected = ok[rule.pick([self.points[i].point() for i in ok], base_general)]

    @property
    def selected_point(self) -> SweepPoint | None:
        return self.points[self.selected] if self.selected is not None else None

    def best(self, kind: str) -> SweepPoint | None:
        """The point of ``kind`` (a method; "uniform" is "linear"; "search": the base model or a point the
        search scored fully -- the search scores the base too, within its budget; "grid": any point of the
        grid) the sweep's rule picks among those points (a method: linear only 0 < alpha < 1, the endpoints
        being the base and tuned models); None when there is none."""
        method = "linear" if kind == "uniform" else kind
        if self.rule is None or self.base_general is None:
            return None
        if kind in ("search", "grid"):
            pts = [p for p in self.points if p.selectable and ((p.search is not None) == (kind == "search")
                                                               or (kind == "search" and p.is_endpoint() == 0.0))]
        else:
            pts = [p for p in self.points if p.method == method and p.is_endpoint() is None and p.selectable]
        if not pts:
            return None
        return pts[self.rule.pick([p.point() for p in pts], self.base_general)]
