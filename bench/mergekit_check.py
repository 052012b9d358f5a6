#!/usr/bin/env python
"""Check ``medtune merge`` against mergekit's own implementation, through the ``mergekit.yaml`` it writes.

On a tiny random LLaMA saved to disk, with tuned models made by perturbing it (full checkpoints, so
that mergekit reads them directly), each case runs ``medtune merge`` and then mergekit's
``run_merge`` on the ``mergekit.yaml`` that merge wrote, and compares every tensor. Also imported by
``tests/test_mergekit.py`` (skipped when mergekit is not installed).

    PYTHONPATH=src python bench/mergekit_check.py   # with a Python that has mergekit
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CASES: list[tuple[str, dict[str, Any], int]] = [
    ("task_arithmetic", {"weight": 0.7}, 2),
    ("ties", {"density": 0.4, "weight": 1.0}, 2),
    ("ties", {"density": 0.6, "weight": 0.5}, 3),
    ("slerp", {"alpha": 0.3}, 1),
    ("linear", {"alpha": 0.25}, 1),
]
"""(method, params, number of tuned models): what is compared."""


def make_models(root: Path, n_tuned: int, make_base: Any) -> tuple[Path, list[Path]]:
    """A tiny LLaMA (``make_base(dir)``) and ``n_tuned`` copies with seeded random deltas of varied signs."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    base = root / "base"
    if not base.is_dir():
        make_base(base)
    weights = load_file(str(base / "model.safetensors"))
    tuned = []
    for i in range(n_tuned):
        d = root / f"tuned{i}"
        if not d.is_dir():
            shutil.copytree(base, d)
            g = torch.Generator().manual_seed(100 + i)
            save_file({k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in weights.items()},
                      str(d / "model.safetensors"), metadata={"format": "pt"})
        tuned.append(d)
    return base, tuned


def run_mergekit(config_yaml: Path, out: Path) -> None:
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    doc = yaml.safe_load(config_yaml.read_text())
    run_merge(MergeConfiguration.model_validate(doc), str(out),
              options=MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))


def compare(a: Path, b: Path) -> dict[str, float]:
    """Largest absolute and relative (to the tensor's max magnitude) difference over all tensors."""
    from medtune.merge.sources import load_state

    x, y = load_state(a), load_state(b)
    missing = sorted(set(x) ^ set(y))
    if missing:
        raise AssertionError(f"tensor {missing[0]} is in one output only")
    worst_abs = worst_rel = 0.0
    for k in x:
        diff = (x[k].float() - y[k].float()).abs().max().item()
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / max(y[k].float().abs().max().item(), 1e-12))
    return {"max_abs": worst_abs, "max_rel": worst_rel, "tensors": len(x)}


def check(root: Path, make_base: Any, cases: list[tuple[str, dict[str, Any], int]] = CASES) -> list[dict[str, Any]]:
    """Every case: medtune's merge vs mergekit's on the written mergekit.yaml."""
    from medtune.config import ModelConfig
    from medtune.merge.run import MergeConfig, merge

    rows = []
    for i, (method, params, n) in enumerate(cases):
        base, tuned = make_models(root / "models", n, make_base)
        ours = merge(MergeConfig(base=ModelConfig(spec=str(base)), tuned=[str(t) for t in tuned], method=method,
                                 params=params, out=str(root / f"medtune-{i}")))
        theirs = root / f"mergekit-{i}"
        run_mergekit(ours / "mergekit.yaml", theirs)
        moved = compare(ours, base)["max_abs"]  # how far the merge is from the base: the check is not vacuous
        rows.append({"method": method, "params": params, "tuned": n, **compare(ours, theirs), "moved": moved,
                     "yaml": json.dumps((ours / "mergekit.yaml").read_text())})
    return rows


def main() -> None:
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_tiny_llama

    import mergekit

    from importlib.metadata import version

    with tempfile.TemporaryDirectory() as tmp:
        rows = check(Path(tmp), make_tiny_llama)
    print(f"mergekit {version('mergekit')} ({Path(mergekit.__file__).parent}), torch {version('torch')}")
    print(f"{'method':<16} {'params':<32} {'tuned':>5} {'tensors':>7} {'max |diff|':>11} {'max rel':>9} "
          f"{'max |merged - base|':>20}")
    for r in rows:
        print(f"{r['method']:<16} {json.dumps(r['params']):<32} {r['tuned']:>5} {r['tensors']:>7} "
              f"{r['max_abs']:>11.2e} {r['max_rel']:>9.2e} {r['moved']:>20.2e}")
    bad = [r for r in rows if r["max_rel"] > 1e-5]
    if bad:
        raise SystemExit(f"{len(bad)} case(s) differ beyond fp32 rounding")


if __name__ == "__main__":
    main()
