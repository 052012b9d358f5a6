"""``medtune sweep``: evaluate a grid of averaged models and pick the best trade-off.

Every point (an alpha, optionally with HMA ratios) is scored on the medical and the general tasks;
each point is appended to ``results.json`` as soon as it is scored, and a point already there (same
tasks, limit and sources) is not scored again. The Pareto-optimal points are marked, one is
selected by a documented rule, and the frontier is drawn to ``frontier.png``.

HMA search: for each alpha in ``hma_alphas``, every combination of per-block ratios from
``hma_grid`` whose mean equals alpha is scored, and the best by the selection objective is kept
(a grid search on the held-out medical + general score, in place of the paper's likelihood
objective).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from medtune import atomic
from medtune.config import ModelConfig, StrictModel
from medtune.data.spec import SourceConfig
from medtune.merge import methods


class SweepConfig(StrictModel):
    """An averaging sweep between a base model and one tuned model."""

    base: ModelConfig = Field(default_factory=ModelConfig)
    """The base model (alpha = 0)."""
    tuned: str = ""
    """The tuned model: a LoRA adapter dir, a training run dir, or a full checkpoint."""
    alphas: list[float] = Field(default_factory=lambda: [round(i / 10, 1) for i in range(11)])
    """Weights on the tuned model to evaluate (0 = base, 1 = tuned)."""
    hma_alphas: list[float] = Field(default_factory=list)
    """Alphas at which to search heterogeneous (per-block) ratios; empty: no HMA search."""
    hma_blocks: int = Field(3, ge=2)
    """Layer blocks for HMA (input, middle, output)."""
    hma_grid: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    """Candidate per-block ratios for the HMA grid search."""
    medical_tasks: str = "pubmedqa,medqa4"
    """Tasks whose mean accuracy is the medical score."""
    general_tasks: str = "arc_easy,mmlu_general"
    """Tasks whose mean accuracy is the general score."""
    task_sources: dict[str, SourceConfig] = Field(default_factory=dict)
    """Per task, the split to select on (validation splits, e.g. MedQA dev) instead of the test split."""
    data_root: str = "../shared/data"
    """Data root of the tasks."""
    limit: int | None = Field(200, ge=1)
    """Items per task per point (the first N), to keep a sweep affordable."""
    rule: Literal["retain", "weighted"] = "retain"
    """retain: best medical score with general >= retain x base's; weighted: best weight*medical + (1-weight)*general."""
    retain: float = Field(0.98, gt=0, le=1)
    """retain rule: share of the base model's general score to keep."""
    weight: float = Field(0.5, ge=0, le=1)
    """weighted rule: weight of the medical score."""
    out: str = "runs/sweep"
    """Output directory: results.json, frontier.png."""
    progress: bool = True
    """Show progress bars."""


def _key(cfg: SweepConfig) -> str:
    """What a point's scores depend on besides alpha/ratios: reuse only scores made the same way."""
    basis = json.dumps([cfg.base.spec, cfg.tuned, cfg.medical_tasks, cfg.general_tasks, cfg.limit, cfg.data_root,
                        {k: v.model_dump() for k, v in sorted(cfg.task_sources.items())}], sort_keys=True)
    return hashlib.sha256(basis.encode()).hexdigest()[:16]


def hma_candidates(alpha: float, grid: list[float], blocks: int) -> list[list[float]]:
    """Ratio vectors from ``grid`` whose mean is alpha (within 1e-9), excluding the uniform one."""
    out = []
    for combo in itertools.product(grid, repeat=blocks):
        if abs(sum(combo) / blocks - alpha) < 1e-9 and len(set(combo)) > 1:
            out.append(list(combo))
    return out


class _Averager:
    """Sets a loaded model to any averaging point without reloading it."""

    def __init__(self, cfg: SweepConfig):
        from medtune import models
        from medtune.merge.run import adapter_dir, full_dir

        self.resolved = models.resolve(cfg.base.spec, allow_pickle=cfg.base.allow_pickle)
        model = models.load_model(self.resolved)
        self.tokenizer = models.load_tokenizer(self.resolved)
        adapter = adapter_dir(cfg.tuned)
        self.n_layers = model.config.num_hidden_layers
        if adapter is not None:
            from medtune.merge.lora import LoraInterpolator

            self.model = models.load_with_adapter(model, adapter)
            self.interp = LoraInterpolator(self.model)
            self.base_state = self.tuned_state = None
        else:
            from safetensors.torch import load_file

            from medtune.finite import check_finite

            self.model, self.interp = model, None
            self.base_state = {k: v.clone() for k, v in model.state_dict().items()}
            tuned = full_dir(cfg.tuned)
            self.tuned_state = {k: v for f in sorted(tuned.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
            check_finite(self.tuned_state, str(tuned))

    def set(self, alpha: float, ratios: list[float] | None) -> None:
        import torch

        if self.interp is not None:
            self.interp.set(alpha, ratios)
            return
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                r = methods.tensor_ratio(name, self.n_layers, ratios, alpha) if ratios else alpha
                p.copy_(methods.interpolate(self.base_state[name], self.tuned_state.get(name, self.base_state[name]), r))


def _score(avg: _Averager, cfg: SweepConfig, alpha: float, ratios: list[float] | None) -> dict[str, Any]:
    from medtune.evaluate.run import EvalConfig, score_model

    avg.set(alpha, ratios)
    tasks = f"{cfg.medical_tasks},{cfg.general_tasks}"
    ecfg = EvalConfig(tasks=tasks, data_root=cfg.data_root, limit=cfg.limit, task_sources=cfg.task_sources,
                      progress=cfg.progress)
    started = time.perf_counter()
    res, _ = score_model(avg.model, avg.tokenizer, ecfg)
    per = {t: r["acc"] for t, r in res.items() if "acc" in r}
    mean = lambda names: sum(per[t]["value"] for t in names.split(",")) / len(names.split(","))
    return {"alpha": alpha, "ratios": ratios, "medical": mean(cfg.medical_tasks), "general": mean(cfg.general_tasks),
            "tasks": per, "seconds": round(time.perf_counter() - started, 1)}


def sweep(cfg: SweepConfig) -> dict[str, Any]:
    from rich.console import Console

    console = Console()
    out = Path(cfg.out)
    path = out / "results.json"
    key = _key(cfg)
    old = json.loads(path.read_text()) if path.is_file() else {}
    points: list[dict[str, Any]] = [p for p in old.get("points", []) if p.get("key") == key]
    have = {(p["alpha"], tuple(p["ratios"] or ())) for p in points}
    avg: _Averager | None = None

    def run(alpha: float, ratios: list[float] | None) -> dict[str, Any]:
        nonlocal avg
        found = next((p for p in points if (p["alpha"], tuple(p["ratios"] or ())) == (alpha, tuple(ratios or ()))), None)
        if found is not None:
            return found
        avg = avg or _Averager(cfg)
        point = {**_score(avg, cfg, alpha, ratios), "key": key,
                 "label": f"α={alpha:g}" + (f" HMA {ratios}" if ratios else "")}
        points.append(point)
        _write(path, cfg, points, key)  # every point is saved as soon as it is scored
        console.print(f"{point['label']}: medical {100 * point['medical']:.1f}, general {100 * point['general']:.1f}")
        return point

    for a in cfg.alphas:
        run(a, None)
    base_general = next((p["general"] for p in points if p["alpha"] == 0 and not p["ratios"]), None)
    if base_general is None:
        base_general = run(0.0, None)["general"]
    for a in cfg.hma_alphas:
        cands = hma_candidates(a, cfg.hma_grid, cfg.hma_blocks)
        for ratios in cands:
            run(a, ratios)
    del have
    report = _write(path, cfg, points, key, base_general)
    plot_frontier(report, out / "frontier.png")
    sel = report["points"][report["selected"]]
    console.print(f"selected {sel['label']} by rule '{cfg.rule}': medical {100 * sel['medical']:.1f}, "
                  f"general {100 * sel['general']:.1f} (base general {100 * base_general:.1f}); {path}")
    return report


def _write(path: Path, cfg: SweepConfig, points: list[dict[str, Any]], key: str, base_general: float | None = None) -> dict[str, Any]:
    pts = [methods.Point(p["label"], p["medical"], p["general"]) for p in points]
    flags = methods.pareto_front(pts)
    for p, f in zip(points, flags):
        p["pareto"] = f
    report: dict[str, Any] = {"config": cfg.model_dump(mode="json"), "key": key, "points": points,
                              "convention": "alpha is the weight on the tuned model"}
    if base_general is not None:
        report["selected"] = methods.select(pts, base_general, rule=cfg.rule, retain=cfg.retain, weight=cfg.weight)
        report["base_general"] = base_general
        report["rule"] = ({"rule": "retain", "retain": cfg.retain} if cfg.rule == "retain"
                          else {"rule": "weighted", "weight": cfg.weight})
    atomic.write_json(path, report)
    return report


def plot_frontier(report: dict[str, Any], path: Path, title: str = "medical vs general ability") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = report["points"]
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    plain = sorted([p for p in pts if not p["ratios"]], key=lambda p: p["alpha"])
    ax.plot([100 * p["general"] for p in plain], [100 * p["medical"] for p in plain], "-o", color="#1f77b4",
            ms=5, label="α sweep (WiSE-FT)", zorder=2)
    for p in plain:
        ax.annotate(f"{p['alpha']:g}", (100 * p["general"], 100 * p["medical"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8, color="#1f77b4")
    hma = [p for p in pts if p["ratios"]]
    if hma:
        ax.scatter([100 * p["general"] for p in hma], [100 * p["medical"] for p in hma], marker="^", color="#2ca02c",
                   s=30, label="HMA ratios", zorder=2)
    front = sorted([p for p in pts if p.get("pareto")], key=lambda p: p["general"])
    ax.plot([100 * p["general"] for p in front], [100 * p["medical"] for p in front], ":", color="grey", lw=1,
            label="Pareto front", zorder=1)
    for alpha, name, color in ((0.0, "base", "black"), (1.0, "tuned", "#d62728")):
        p = next((q for q in plain if q["alpha"] == alpha), None)
        if p:
            ax.scatter([100 * p["general"]], [100 * p["medical"]], s=120, facecolors="none", edgecolors=color, lw=2,
                       label=name, zorder=3)
    if "selected" in report:
        s = pts[report["selected"]]
        ax.scatter([100 * s["general"]], [100 * s["medical"]], marker="*", s=260, color="#ff7f0e", label=f"selected ({s['label']})",
                   zorder=4)
        if report.get("rule", {}).get("rule") == "retain":
            ax.axvline(100 * report["rule"]["retain"] * report["base_general"],
                       color="#ff7f0e", ls="--", lw=1, alpha=0.6)
    ax.set_xlabel("general score (mean accuracy, %)")
    ax.set_ylabel("medical score (mean accuracy, %)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)
