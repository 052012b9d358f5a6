"""Held-out folds: deterministic, order-independent, complementary, stratified."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from medtune.data.registry import fold_mask, load_source
from medtune.data.rejects import Rejects
from medtune.data.spec import SourceConfig
from medtune.demo import demo_data_dir


def src(**fold) -> SourceConfig:
    return SourceConfig.model_validate({"adapter": "medmcqa", "path": "medmcqa_demo.jsonl", "fold": fold or None})


def ids(records) -> list[str]:
    return [r.id for r in records]


def test_fold_mask_counts_per_stratum_and_ignores_order():
    keys = [f"item{i}" for i in range(10)]
    strata = ["a"] * 6 + ["b"] * 4
    held = fold_mask(keys, strata, 0.5, "s")
    assert sum(held[:6]) == 3 and sum(held[6:]) == 2
    rev = fold_mask(keys[::-1], strata[::-1], 0.5, "s")[::-1]
    assert rev == held
    assert fold_mask(keys, strata, 0.5, "other salt") != held  # the salt picks another fold


def test_held_out_and_rest_partition_the_source():
    root = demo_data_dir()
    every = load_source(src(), root, Rejects())
    held = load_source(src(share=0.5, take="held_out", stratify="subject"), root, Rejects())
    rest = load_source(src(share=0.5, take="rest", stratify="subject"), root, Rejects())
    assert not set(ids(held)) & set(ids(rest))
    assert sorted(ids(held) + ids(rest)) == sorted(ids(every))
    # Stratified: each subject split in half (rounded), so the subject mix is kept.
    per = Counter(r.meta["subject"] for r in every)
    got = Counter(r.meta["subject"] for r in held)
    assert all(got[s] == round(n / 2) for s, n in per.items()), (per, got)
    # Records keep the file order.
    assert ids(held) == [i for i in ids(every) if i in set(ids(held))]


def test_fold_with_repeated_ids_is_refused(tmp_path):
    line = Path(demo_data_dir() / "medmcqa_demo.jsonl").read_text().splitlines()[0]
    (tmp_path / "dup.jsonl").write_text(line + "\n" + line + "\n")
    bad = SourceConfig.model_validate({"adapter": "medmcqa", "path": "dup.jsonl", "fold": {"share": 0.5, "take": "rest"}})
    with pytest.raises(Exception, match="duplicate id .*, first seen at line 1"):
        load_source(bad, tmp_path, Rejects())
