"""`medtune merge` equals mergekit's own task arithmetic, TIES and SLERP (and linear) through the written
mergekit.yaml, to fp32 rounding. Skipped when mergekit is not installed (bench/mergekit_check.py runs
the same check and prints the differences)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("mergekit")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from conftest import make_tiny_llama  # noqa: E402
from mergekit_check import check  # noqa: E402


def test_medtune_merge_equals_mergekit_on_the_written_yaml(tmp_path):
    rows = check(tmp_path, make_tiny_llama)
    assert {r["method"] for r in rows} >= {"task_arithmetic", "ties", "slerp"}
    for r in rows:
        assert r["tensors"] > 10 and r["max_rel"] <= 1e-5 and r["moved"] > 1e-3, r
