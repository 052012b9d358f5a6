"""The report's figures: the medical-vs-general frontier and the training curves (PNG, matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def frontier(data: dict[str, Any], path: Path) -> Path | None:
    """Left: every sweep point on validation (what selection saw); right: test scores with 95 % intervals."""
    # rows that only repeat another model (an averaged model at alpha 0 or 1) are drawn once
    rows = [r for r in data["rows"] if r["medical_avg"] and r["general_avg"] and not (r.get("note") or "").startswith("= ")]
    if not rows and not data["sweeps"]:
        return None
    plt = _pyplot()
    fig, (val, test) = plt.subplots(1, 2, figsize=(12, 5))
    color = {v: COLORS[i % len(COLORS)] for i, v in enumerate(data["sweeps"] | data["train"])}
    base_general = (data.get("ship") or {}).get("base_general")
    from medtune.merge.records import SweepPoint, SweepResult
    from medtune.merge.sweep import draw_points

    for v, sw in data["sweeps"].items():
        result = SweepResult(points=[SweepPoint.from_json(p) for p in sw["points"]], selected=sw.get("selected"))
        draw_points(val, result, color=color[v], prefix=f"{v}: ")
        s = result.selected_point
        if s is not None:
            val.scatter([100 * s.general], [100 * s.medical], marker="*", s=220, color=color[v],
                        edgecolors="black", zorder=4, label=f"{v}: selected {s.label}")
    if base_general is not None and data["ship"]["rule_name"] == "retain":
        retain = data["ship"]["retain"]
        val.axvline(100 * base_general * retain, color="grey", ls="--", lw=1, label=f"keeps {retain:.0%} of base general")
    val.set_title("validation: the averaging sweep (selects)")
    markers = {"base": ("o", 90), "tuned": ("s", 70), "averaged": ("*", 220), "compared": ("D", 60)}
    ship_label = (data.get("ship") or {}).get("row")
    ship_step = next((r["step"] for r in data["rows"] if r["label"] == ship_label), None)  # a repeat is drawn as its model
    for r in rows:
        m, size = markers[r["kind"]]
        c = "black" if r["kind"] == "base" else color.get(r.get("variant"), "grey")
        x, y = r["general_avg"], r["medical_avg"]
        test.errorbar(100 * x["value"], 100 * y["value"], xerr=[[100 * (x["value"] - x["ci95"][0])], [100 * (x["ci95"][1] - x["value"])]],
                      yerr=[[100 * (y["value"] - y["ci95"][0])], [100 * (y["ci95"][1] - y["value"])]], fmt="none",
                      ecolor=c, alpha=0.35, lw=1)
        test.scatter([100 * x["value"]], [100 * y["value"]], marker=m, s=size, color=c, zorder=3,
                     edgecolors="gold" if r["step"] == ship_step else "none", linewidths=2.5, label=r["label"])
    test.set_title("test: reported scores with 95 % intervals (gold edge: shipped)")
    for ax in (val, test):
        ax.set_xlabel("general score (mean accuracy, %)")
        ax.set_ylabel("medical score (mean accuracy, %)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{data['name']}: medical vs general ability", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def curves(data: dict[str, Any], path: Path) -> Path | None:
    """Training loss per optimizer step, one line per variant."""
    if not data["curves"]:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (v, pts) in enumerate(data["curves"].items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=COLORS[i % len(COLORS)], lw=1.5, label=v)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats / token)")
    ax.set_title("training curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
