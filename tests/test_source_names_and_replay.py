"""Source names, the leakage guard and replay up-sampling.

Every fixture is written by its test: small PubMedQA files (one JSON object keyed by PMID) and
plain-text replay files, so each test shows the sources it is about.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from medtune.data.build import DataConfig, build_command, open_blocks, prepare, stats_command
from medtune.data.leakage import guard
from medtune.data.mixing import REPLAY_EPOCHS_WARN, mix_plan
from medtune.data.records import QARecord
from medtune.errors import LeakageError


def pubmedqa_file(path: Path, first_pmid: int, n: int, topic: str) -> Path:
    """An official-format PubMedQA file of ``n`` distinct items."""
    items = {str(first_pmid + i): {
        "QUESTION": f"Does {topic} number {i} change the outcome?", "CONTEXTS": [f"We studied {topic} {i}."],
        "LABELS": ["METHODS"], "MESHES": ["Tea"], "YEAR": "2011", "final_decision": "yes",
        "LONG_ANSWER": f"{topic} {i} did."} for i in range(n)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items))
    return path


def text_file(path: Path, docs: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(docs) + "\n")
    return path


def config(tiny_llama: Path, tmp_path: Path, **kw: Any) -> DataConfig:
    return DataConfig.model_validate({"data_root": str(tmp_path), "tokenizer": str(tiny_llama), "block_size": 16,
                                      "out": str(tmp_path / "out"), **kw})


def two_of_each(tmp_path: Path) -> dict[str, Any]:
    """Two unnamed PubMedQA training files and two unnamed text replay files of different sizes."""
    pubmedqa_file(tmp_path / "a.json", 10000001, 3, "tea")
    pubmedqa_file(tmp_path / "b.json", 20000001, 5, "coffee")
    text_file(tmp_path / "x.txt", ["The river flows north through a wide valley."] * 2)
    text_file(tmp_path / "y.txt", ["A bicycle has two wheels and is powered by pedals."] * 4)
    return {"train": [{"adapter": "pubmedqa", "path": "a.json"}, {"adapter": "pubmedqa", "path": "b.json"}],
            "replay": [{"adapter": "text", "path": "x.txt"}, {"adapter": "text", "path": "y.txt"}],
            "general_share": 0.3}


def test_unnamed_sources_of_one_adapter_get_distinct_names_from_their_paths(tiny_llama, tmp_path):
    """Two unnamed sources of one adapter are both read, packed and listed, each under a name from its path."""
    out = build_command(config(tiny_llama, tmp_path, **two_of_each(tmp_path)))
    manifest = json.loads((out / "manifest.json").read_text())
    rows = {s["name"]: s for s in manifest["sources"]}
    assert set(rows) == {"pubmedqa_a", "pubmedqa_b", "text_x", "text_y"}
    assert (rows["pubmedqa_a"]["items"], rows["pubmedqa_b"]["items"]) == (3, 5)
    assert (rows["text_x"]["items"], rows["text_y"]["items"]) == (2, 4)
    assert rows["pubmedqa_a"]["location"].endswith("a.json") and rows["pubmedqa_b"]["location"].endswith("b.json")
    assert set(manifest["mix"]["available_tokens"]) == set(rows)
    assert all(manifest["packing"]["source_tokens"][name] > 0 for name in rows)  # every source is in the blocks
    blocks = open_blocks(out)
    assert blocks.sources == ["pubmedqa_a", "pubmedqa_b", "text_x", "text_y"]
    assert {0, 1, 2, 3} <= set(np.unique(blocks.all()["token_source"]).tolist())


def test_stats_show_the_derived_source_names(tiny_llama, tmp_path, capsys):
    """data stats lists each colliding source under its own derived name, with its own counts."""
    result = stats_command(config(tiny_llama, tmp_path, **two_of_each(tmp_path)))
    items = {s["name"]: s["items"] for s in result["sources"]}
    assert items == {"pubmedqa_a": 3, "pubmedqa_b": 5, "text_x": 2, "text_y": 4}
    assert "pubmedqa_a" in capsys.readouterr().out


def test_equal_file_names_in_different_folders_are_named_by_their_folders(tiny_llama, tmp_path):
    """Unnamed sources whose files share a name are told apart by the folders above them; at one location, by position."""
    pubmedqa_file(tmp_path / "one" / "train.json", 10000001, 2, "tea")
    pubmedqa_file(tmp_path / "two" / "train.json", 20000001, 2, "coffee")
    prep = prepare(config(tiny_llama, tmp_path, train=[
        {"adapter": "pubmedqa", "path": "one/train.json"}, {"adapter": "pubmedqa", "path": "two/train.json"},
        {"adapter": "pubmedqa", "path": "two/train.json", "limit": 1}]))
    assert [s.name for s in prep.sources] == ["pubmedqa_one_train", "pubmedqa_two_train_1", "pubmedqa_two_train_2"]


def test_a_unique_default_name_is_kept(tiny_llama, tmp_path):
    """A source whose default name (adapter plus split) is unique keeps it: only collisions are renamed."""
    pubmedqa_file(tmp_path / "a.json", 10000001, 2, "tea")
    text_file(tmp_path / "x.txt", ["Some general text for replay."])
    prep = prepare(config(tiny_llama, tmp_path, train=[{"adapter": "pubmedqa", "path": "a.json", "split": "all"}],
                          replay=[{"adapter": "text", "path": "x.txt"}]))
    assert [s.name for s in prep.sources] == ["pubmedqa_all", "text"]


@pytest.mark.parametrize("second", [
    {"role": "train", "src": {"adapter": "pubmedqa", "path": "b.json", "name": "mine"}},
    {"role": "replay", "src": {"adapter": "text", "path": "x.txt", "name": "mine"}},
])
def test_a_name_given_to_two_sources_is_refused_naming_both(tmp_path, second):
    """An explicit name repeated among the training and replay sources is refused, naming both sources."""
    first = {"adapter": "pubmedqa", "path": "a.json", "name": "mine"}
    train = [first] + ([second["src"]] if second["role"] == "train" else [])
    replay = [second["src"]] if second["role"] == "replay" else []
    with pytest.raises(ValidationError) as err:
        DataConfig.model_validate({"train": train, "replay": replay})
    msg = str(err.value)
    assert "'mine'" in msg and "train 0 (a.json)" in msg
    assert (f"{second['role']} {1 if second['role'] == 'train' else 0} ({second['src']['path']})") in msg


@pytest.mark.parametrize("sources, message", [
    ([{"adapter": "pubmedqa_hub", "hub": "qiaojin/PubMedQA", "name": "pubmedqa"}, {"adapter": "pubmedqa", "path": "b.json"}],
     r"'pubmedqa' is given to eval 0 \(hub:qiaojin/PubMedQA\) and is the default name .* of eval 1 \(b.json\)"),
    ([{"adapter": "pubmedqa", "path": "a.json"}, {"adapter": "pubmedqa", "path": "b.json"},
      {"adapter": "medmcqa", "path": "m.json", "name": "pubmedqa_b"}],
     r"'pubmedqa_b' is given to eval 2 \(m.json\) and is the name derived from the location of eval 1 \(b.json\)"),
])
def test_a_name_equal_to_another_sources_default_or_derived_name_is_refused(sources, message):
    """An explicit name equal to an unnamed source's default or path-derived name is refused, naming both."""
    with pytest.raises(ValidationError, match=message):
        DataConfig.model_validate({"eval": sources})


def test_an_eval_source_may_share_a_training_sources_name(tmp_path):
    """Eval sources are a separate set of names: a held-out fold and its training rest may both be 'medmcqa'."""
    fold = {"share": 0.2}
    DataConfig.model_validate({"train": [{"adapter": "medmcqa", "path": "m.json", "fold": fold | {"take": "rest"}}],
                               "eval": [{"adapter": "medmcqa", "path": "m.json", "fold": fold | {"take": "held_out"}}]})


@pytest.mark.parametrize("named", [False, True])
def test_leakage_is_refused_with_two_eval_sources_however_named(tiny_llama, tmp_path, named):
    """Training on a.json with eval sources a.json and b.json is refused, named or unnamed."""
    pubmedqa_file(tmp_path / "a.json", 10000001, 3, "tea")
    pubmedqa_file(tmp_path / "b.json", 20000001, 3, "coffee")
    evals = [{"adapter": "pubmedqa", "path": p} | ({"name": f"ev_{p[0]}"} if named else {}) for p in ("a.json", "b.json")]
    c = config(tiny_llama, tmp_path, train=[{"adapter": "pubmedqa", "path": "a.json"}], eval=evals)
    with pytest.raises(LeakageError, match="3 training item"):
        prepare(c)
    c.drop_leaked = True
    counts = prepare(c, mix_and_pack=False).guard.counts
    assert counts == ({"ev_a": 3, "ev_b": 0} if named else {"pubmedqa_a": 3, "pubmedqa_b": 0})


def test_guard_checks_every_eval_set_even_under_a_repeated_name():
    """The guard takes eval sets as (name, records) pairs: two sets under one name are both checked."""
    def qa(i: str, q: str) -> QARecord:
        return QARecord(id=i, dataset="medqa", question=q, context=None, options=("a", "b"), answer=0)

    sets = [("pubmedqa", [qa("e1", "First question?")]), ("pubmedqa", [qa("e2", "Second question?")])]
    with pytest.raises(LeakageError, match="1 training item"):
        guard([qa("t", "First question?")], sets, drop=False)
    assert guard([qa("t", "First question?")], sets, drop=True).counts == {"pubmedqa": 1}


def tiny_replay(tmp_path: Path, share: float, strategy: str = "fixed_share") -> dict[str, Any]:
    pubmedqa_file(tmp_path / "a.json", 10000001, 20, "tea")
    text_file(tmp_path / "tiny.txt", ["Short replay text."])
    return {"train": [{"adapter": "pubmedqa", "path": "a.json"}], "replay": [{"adapter": "text", "path": "tiny.txt"}],
            "general_share": share, "mix_strategy": strategy}


def test_replay_repeated_many_times_is_warned_about(tiny_llama, tmp_path, capsys):
    """A replay source repeated more than REPLAY_EPOCHS_WARN times is named with its epochs, in stats and build."""
    c = config(tiny_llama, tmp_path, **tiny_replay(tmp_path, 0.3))
    prep = prepare(c)
    epochs = prep.mix.report.epochs["text"]
    assert epochs > REPLAY_EPOCHS_WARN
    [warning] = prep.mix.report.warnings
    assert "text" in warning and "tiny.txt" not in warning and f"{epochs:.1f}" in warning
    build_command(c)
    manifest = json.loads((Path(c.out) / "manifest.json").read_text())
    assert manifest["mix"]["warnings"] == [warning]
    assert "repeated" in capsys.readouterr().err


def test_replay_repeated_a_few_times_is_not_warned_about():
    """Up-sampling below the threshold is ordinary and stays quiet."""
    lengths = {"med": np.full(10, 10, np.int64), "web": np.full(10, 10, np.int64)}
    plan = mix_plan(lengths, {"med": "domain", "web": "general"}, 0.5, "fixed_share", 0)
    assert plan.report.epochs["web"] == 1.0 and plan.report.warnings == []


@pytest.mark.parametrize("strategy", ["fixed_share", "temperature", "concat"])
def test_replay_unused_at_general_share_zero_is_noted(tiny_llama, tmp_path, strategy, capsys):
    """Replay sources given with general_share 0 are reported as unused, not silently ignored."""
    c = config(tiny_llama, tmp_path, **tiny_replay(tmp_path, 0.0, strategy))
    [warning] = prepare(c).mix.report.warnings
    assert "general_share" in warning and "text" in warning and "not used" in warning
    stats_command(c)
    assert "not used" in capsys.readouterr().out
