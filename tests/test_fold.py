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


def _pubmedqa_sorted_by_label(tmp_path: Path) -> Path:
    """A PubMedQA test file in the official layout whose items are listed by label, as the real one is
    (its "yes" items first, then "no", then "maybe")."""
    import json

    labels = ["yes"] * 30 + ["no"] * 18 + ["maybe"] * 6
    items = {str(20000000 + i): {"QUESTION": f"Does treatment {i} help?", "CONTEXTS": [f"Trial {i} ran."],
                                 "LABELS": ["RESULTS"], "MESHES": [], "YEAR": "2020", "final_decision": lab,
                                 "LONG_ANSWER": f"Trial {i} says {lab}."} for i, lab in enumerate(labels)}
    path = tmp_path / "test_set.json"
    path.write_text(json.dumps(items))
    return path


def test_limit_after_a_stratified_fold_warns_when_it_changes_the_mix(tmp_path):
    from medtune.data.registry import SubsampleWarning

    path = _pubmedqa_sorted_by_label(tmp_path)
    fold = {"share": 0.5, "take": "held_out", "stratify": "answer", "salt": "s"}
    every = load_source(SourceConfig.model_validate({"adapter": "pubmedqa", "path": str(path), "fold": fold}), None, Rejects())
    assert Counter(r.options[r.answer] for r in every) == {"yes": 15, "no": 9, "maybe": 3}
    limited = SourceConfig.model_validate({"adapter": "pubmedqa", "path": str(path), "fold": fold, "limit": 12})
    with pytest.warns(SubsampleWarning, match=r"limit 12 keeps the first 12 of the 27 fold items.*answer mix \(yes 12\)"
                                              r".*use fold share 0.222 without limit"):
        kept = load_source(limited, None, Rejects())
    assert ids(kept) == ids(every)[:12]  # warned about, not changed: the same items as before
    # the share the warning suggests gives a stratified subset of about that size
    smaller = load_source(SourceConfig.model_validate({"adapter": "pubmedqa", "path": str(path),
                                                       "fold": {**fold, "share": 0.222}}), None, Rejects())
    assert Counter(r.options[r.answer] for r in smaller) == {"yes": 7, "no": 4, "maybe": 1}


def test_limit_that_keeps_the_mix_or_needs_no_cut_does_not_warn(tmp_path, recwarn):
    import json

    path = _pubmedqa_sorted_by_label(tmp_path)
    items = json.loads(path.read_text())
    order = sorted(items, key=lambda k: (int(k) % 9, k))  # interleaved labels
    path.write_text(json.dumps({k: items[k] for k in order}))
    fold = {"share": 0.5, "take": "held_out", "stratify": "answer", "salt": "s"}
    for limit in (20, 27, 100):
        load_source(SourceConfig.model_validate({"adapter": "pubmedqa", "path": str(path), "fold": fold, "limit": limit}),
                    None, Rejects())
    load_source(SourceConfig.model_validate({"adapter": "pubmedqa", "path": str(path), "limit": 5}), None, Rejects())
    assert not [w for w in recwarn if w.category.__name__ == "SubsampleWarning"]
