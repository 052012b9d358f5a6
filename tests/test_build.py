"""The data stage end to end on fixtures: guard, rejects, realised mix, artifact contents."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from medtune.data.build import DataConfig, build_command, open_blocks, prepare, stats_command
from medtune.errors import DataError, LeakageError

FIXTURES = Path(__file__).parent / "fixtures"


def cfg(tiny_llama: Path, tmp_path: Path, **kw) -> DataConfig:
    base = {
        "data_root": str(FIXTURES),
        "tokenizer": str(tiny_llama),
        "train": [{"adapter": "pubmedqa", "path": "pubmedqa/ori_pqal.json", "split": "all"},
                  {"adapter": "medmcqa", "path": "medmcqa/dev.json"}],
        "eval": [{"adapter": "pubmedqa", "name": "pubmedqa_test", "path": "pubmedqa/test_set.json"}],
        "block_size": 16,
        "out": str(tmp_path / "out"),
    }
    return DataConfig.model_validate({**base, **kw})


def test_leakage_is_refused_by_default(tiny_llama, tmp_path):
    with pytest.raises(LeakageError, match="3 training item"):
        prepare(cfg(tiny_llama, tmp_path))


def test_leaked_items_dropped_and_reported(tiny_llama, tmp_path):
    prep = prepare(cfg(tiny_llama, tmp_path, drop_leaked=True))
    assert prep.guard.n_dropped == 3 and prep.guard.counts == {"pubmedqa_test": 3}
    train = {s.name: s for s in prep.sources if s.role == "train"}
    assert train["pubmedqa_all"].items == 2  # 5 PQA-L fixture items minus the 3 test PMIDs
    kept = {r.id for r in prep.guard.kept}
    assert not kept & set(json.loads((FIXTURES / "pubmedqa/test_ground_truth.json").read_text()))


def test_invalid_row_stops_or_goes_to_rejects(tiny_llama, tmp_path):
    bad = tmp_path / "medmcqa_bad.jsonl"
    lines = (FIXTURES / "medmcqa/dev.json").read_text().splitlines()
    row = json.loads(lines[1])
    row["cop"] = 7
    lines[1] = json.dumps(row)
    bad.write_text("\n".join(lines) + "\n")
    c = cfg(tiny_llama, tmp_path, drop_leaked=True, train=[{"adapter": "medmcqa", "path": str(bad)}])
    with pytest.raises(DataError) as err:
        prepare(c)
    assert "medmcqa_bad.jsonl, line 2, field 'cop'" in str(err.value)
    c.skip_invalid = True
    out = build_command(c)
    rejects = [json.loads(l) for l in (out / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 1 and rejects[0]["location"] == "line 2" and rejects[0]["raw"]["cop"] == 7
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rejected_rows"] == 1
    assert next(s for s in manifest["sources"] if s["role"] == "train")["items"] == len(lines) - 1


def test_replay_share_realised_on_packed_blocks(tiny_llama, tmp_path):
    # Many synthetic domain items so the 20 % target is measurable to a percent.
    rng = random.Random(0)
    words = "heart lung blood cell drug dose fever pain nerve bone".split()
    items = [{"question": " ".join(rng.choices(words, k=rng.randint(5, 40))) + "?", "exp": None, "cop": 1 + i % 4,
              "opa": "alpha", "opb": "beta", "opc": "gamma", "opd": "delta", "subject_name": "Physiology",
              "topic_name": None, "id": f"synthetic-{i}", "choice_type": "single"} for i in range(400)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(i) + "\n" for i in items))
    for strategy in ("fixed_share", "temperature", "concat"):
        c = cfg(tiny_llama, tmp_path, eval=[], train=[{"adapter": "medmcqa", "path": str(train)}],
                replay=[{"adapter": "text", "path": "text/replay.txt"}, {"adapter": "text", "path": "text/replay.jsonl"}],
                general_share=0.2, mix_strategy=strategy, block_size=64)
        prep = prepare(c)
        share = prep.packed.realised_share("general")
        if strategy == "concat":  # no repetition: the small replay fixture cannot reach 20 %
            assert share < 0.2 and prep.mix.report.warnings
        else:
            assert abs(share - 0.2) <= 0.01, (strategy, share)


def test_build_writes_blocks_and_provenance(tiny_llama, tmp_path):
    c = cfg(tiny_llama, tmp_path, drop_leaked=True, replay=[{"adapter": "text", "path": "text/replay.txt"}], general_share=0.3)
    out = build_command(c)
    for name in ("shards/index.json", "manifest.json", "config.yaml", "templates.json", "rejects.jsonl"):
        assert (out / name).is_file(), name
    blocks = open_blocks(out).all()
    assert blocks["input_ids"].shape[1] == 16
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["packing"]["blocks"] == blocks["input_ids"].shape[0]
    assert manifest["leakage"]["dropped_items"] == 3
    assert all(s["sha256"] and len(s["sha256"]) == 64 for s in manifest["sources"])
    # Every domain and general token is in the blocks: nothing was cut silently.
    p = manifest["packing"]
    assert sum(p["source_tokens"].values()) == sum(manifest["mix"]["tokens"].values())
    assert json.loads((out / "templates.json").read_text())[0]["name"] == "qa_text"
    # Same seed, same blocks.
    again = open_blocks(build_command(c)).all()
    assert (again["input_ids"] == blocks["input_ids"]).all()


def test_stats_summary_counts(tiny_llama, tmp_path):
    s = stats_command(cfg(tiny_llama, tmp_path, drop_leaked=True))
    by_name = {x["name"]: x for x in s["sources"]}
    assert by_name["pubmedqa_test"]["items"] == 3 and by_name["pubmedqa_test"]["tokens"] > 0
    assert by_name["pubmedqa_all"]["labels"] and s["leakage"]["dropped_items"] == 3


def test_shared_data_counts_and_leakage(tiny_llama, shared_data):
    """configs/data/shared.yaml on ../shared/data: the counts the benchmark files are known to have."""
    from medtune.config import load_config

    repo = Path(__file__).resolve().parents[1]
    c = load_config(DataConfig, repo / "configs/data/shared.yaml", {"tokenizer": str(tiny_llama)})
    c.base_dir = str(repo / "configs/data")
    prep = prepare(c)
    by_name = {s.name: s for s in prep.sources}
    assert (by_name["pubmedqa_test"].items, by_name["pubmedqa_test"].labels) == (500, {"yes": 276, "no": 169, "maybe": 55})
    assert by_name["medmcqa_dev"].items == 4183
    assert by_name["medqa4_test"].items == 1273
    assert prep.guard.counts["pubmedqa_test"] == 500 and prep.guard.n_dropped == 500
    assert by_name["pubmedqa_pqal"].items == 500
    assert abs(prep.packed.realised_share("general") - 0.2) <= 0.01
