"""Decontamination: training and replay documents checked against the evaluation splits by 13-gram
overlap on normalised text, in every data build."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medtune.data.build import DataConfig, build_command, prepare
from medtune.data.decontam import DecontamConfig, Screen, ngram_hashes, words
from medtune.data.records import QARecord, TextDoc
from medtune.errors import LeakageError

ABSTRACT = ("Ninety adults with type 2 diabetes were randomised to a ten minute walk after each meal or to one "
            "thirty minute walk each day for twelve weeks. Post-prandial glucose, measured by continuous monitors, "
            "fell by 22 percent more after the short walks than after the single long walk, while fasting glucose "
            "and HbA1c did not differ between the groups.")
"""A PubMedQA-style test context (written for this test)."""
CONTEXT_WORDS = words(ABSTRACT)
FILLER = " ".join(f"Filler sentence number {i} talks about rivers, towns and the weather in spring." for i in range(200))


def pubmedqa_test(tmp_path: Path) -> Path:
    """An official-format PubMedQA file with one test item whose context is :data:`ABSTRACT`."""
    item = {"QUESTION": "Do short walks after meals lower glucose more than one long walk?",
            "CONTEXTS": [ABSTRACT], "final_decision": "yes", "LONG_ANSWER": "Yes."}
    path = tmp_path / "pubmedqa_test.json"
    path.write_text(json.dumps({"90000001": item}), encoding="utf-8")
    return path


def replay_with(tmp_path: Path, planted: str, name: str = "replay.jsonl") -> Path:
    """A replay file: clean documents, then a long one with ``planted`` in its middle, then more clean ones."""
    docs = [f"Clean document {i}. " + FILLER[: 300 + i] for i in range(5)]
    docs.insert(3, FILLER[:4000] + " " + planted + " " + FILLER[4000:8000])
    path = tmp_path / name
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def config(tiny_llama: Path, tmp_path: Path, replay: Path, **kw: Any) -> DataConfig:
    return DataConfig.model_validate({
        "data_root": str(tmp_path), "tokenizer": str(tiny_llama), "block_size": 16, "out": str(tmp_path / "out"),
        "train": [{"adapter": "qa", "name": "bank", "path": str(tmp_path / "bank.jsonl" if (tmp_path / "bank.jsonl").exists() else train_bank(tmp_path)), "fields": {"question": "q", "options": "o", "answer": "a"}}],
        "replay": [{"adapter": "text", "name": "web", "path": str(replay)}],
        "eval": [{"adapter": "pubmedqa", "name": "pubmedqa_test", "path": str(pubmedqa_test(tmp_path))}],
        "general_share": 0.5, **kw})


def train_bank(tmp_path: Path, extra: list[dict[str, Any]] = ()) -> Path:  # type: ignore[assignment]
    rows = [{"q": f"Which organ number {i} filters blood?", "o": ["kidney", "lung"], "a": "A"} for i in range(4)]
    path = tmp_path / "bank.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, *extra]), encoding="utf-8")
    return path


def planted(start: int, n: int) -> str:
    return " ".join(CONTEXT_WORDS[start : start + n])


def test_an_exact_13_gram_of_a_test_context_in_a_long_replay_document_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    """13 words of a test abstract inside an 8,000-character replay document: the build stops, naming the
    source, the document, the evaluation item and the shared words."""
    cfg = config(tiny_llama, tmp_path, replay_with(tmp_path, planted(20, 13)))
    with pytest.raises(LeakageError) as exc:
        prepare(cfg)
    msg = str(exc.value)
    assert "1 of 6 documents of source web share a 13-gram" in msg and "pubmedqa_test: 1" in msg
    assert f'replay:4 ~ pubmedqa_test:90000001 "{planted(20, 13)}"' in msg and "drop_leaked" in msg


def test_case_and_punctuation_changes_still_match_and_the_document_is_dropped(tiny_llama: Path, tmp_path: Path) -> None:
    """The same 13 words upper-cased with punctuation moved are caught; with drop_leaked the document is
    dropped, and the manifest reports it per source with the example."""
    text = planted(20, 13).upper().replace(" ", ", ", 3).replace("POSTPRANDIAL", "Post-Prandial") + "!!"
    cfg = config(tiny_llama, tmp_path, replay_with(tmp_path, "«" + text + "»"), drop_leaked=True)
    build_command(cfg)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    web = manifest["decontamination"]["sources"]["web"]
    assert (web["checked"], web["contaminated"], web["per_eval_set"]) == (6, 1, {"pubmedqa_test": 1})
    assert web["examples"][0]["doc_id"] == "replay:4" and web["examples"][0]["eval_id"] == "90000001"
    replay = next(s for s in manifest["sources"] if s["role"] == "replay")
    assert replay["items"] == 5  # the contaminated document is not in the build
    assert manifest["decontamination"]["sources"]["bank"]["contaminated"] == 0


def test_a_12_gram_does_not_match(tiny_llama: Path, tmp_path: Path) -> None:
    """12 consecutive words of the abstract (one short of the n-gram) are not contamination."""
    prep = prepare(config(tiny_llama, tmp_path, replay_with(tmp_path, planted(20, 12))))
    assert prep.decontam is not None and prep.decontam.sources["web"].contaminated == 0
    assert prep.decontam.sources["web"].checked == 6


def test_a_training_item_quoting_a_test_context_is_caught(tiny_llama: Path, tmp_path: Path) -> None:
    """A QA training item whose question quotes the test abstract (its question string differs, so the
    question guard passes it) is refused, or dropped with drop_leaked."""
    quoting = {"q": f"Read this: {planted(0, 20)}. What was randomised?", "o": ["walks", "diet"], "a": "A"}
    train_bank(tmp_path, [quoting])
    replay = replay_with(tmp_path, "nothing planted")
    with pytest.raises(LeakageError, match="1 of 5 documents of source bank"):
        prepare(config(tiny_llama, tmp_path, replay))
    prep = prepare(config(tiny_llama, tmp_path, replay, drop_leaked=True))
    assert next(s for s in prep.sources if s.name == "bank").items == 4


def test_n_and_threshold_are_configurable(tiny_llama: Path, tmp_path: Path) -> None:
    """With n = 8 a planted 12-gram matches (5 of its 8-grams); a threshold of 6 shared n-grams lets it pass;
    enabled: false skips the check."""
    replay = replay_with(tmp_path, planted(20, 12))
    prep = prepare(config(tiny_llama, tmp_path, replay, drop_leaked=True, decontamination={"ngram": 8}))
    assert prep.decontam is not None and prep.decontam.sources["web"].examples[0].matches == 5
    prep = prepare(config(tiny_llama, tmp_path, replay, decontamination={"ngram": 8, "threshold": 6}))
    assert prep.decontam is not None and prep.decontam.sources["web"].contaminated == 0
    assert prepare(config(tiny_llama, tmp_path, replay, decontamination={"enabled": False})).decontam is None


def doc(i: int, text: str) -> TextDoc:
    return TextDoc(id=f"d{i}", dataset="t", text=text)


def test_the_hashed_check_equals_a_set_of_word_tuples() -> None:
    """On random texts over a small vocabulary (many shared n-grams), the documents the hashed index flags
    are exactly those sharing a word 5-gram with an eval text by plain tuple comparison, and an n-gram
    across two documents of a batch is no match."""
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(6)]
    evals = [QARecord(id=f"e{i}", dataset="qa", question=" ".join(rng.choice(vocab, 12)), context=None,
                      options=("x", "y"), answer=0) for i in range(10)]
    screen = Screen(DecontamConfig(ngram=5), [("ev", evals)], drop=True)
    grams = {tuple(ws[i : i + 5]) for r in evals for ws in [words(r.question + " x y")] for i in range(len(ws) - 4)}
    docs = [doc(i, " ".join(rng.choice(vocab, int(rng.integers(1, 12))))) for i in range(300)]
    kept = screen.check("s", docs)
    flagged = {d.id for d in docs} - {d.id for d in kept}
    want = {d.id for d in docs for ws in [words(d.text)] if any(tuple(ws[i : i + 5]) in grams for i in range(len(ws) - 4))}
    assert flagged == want and 0 < len(flagged) < 300
    assert len(screen.keys) == len(grams)  # the index: one hash per distinct eval n-gram, nothing per document


def test_ngram_hashes_are_order_sensitive() -> None:
    """Rolling hashes of the same words in another order differ (no bag-of-words collisions)."""
    h = np.array([1, 2, 3, 4], np.uint64)
    a, b = ngram_hashes(h, 3), ngram_hashes(h[::-1].copy(), 3)
    assert len(a) == 2 and not set(a.tolist()) & set(b.tolist())
    assert len(ngram_hashes(h, 5)) == 0


def test_replay_is_checked_as_it_streams(tiny_llama: Path, tmp_path: Path) -> None:
    """The check runs on each batch as the replay source is read (a max_tokens cap still stops reading early),
    and holds the evaluation index only."""
    from medtune.data.adapters import rows
    from medtune.data.reading import stream_replay
    from medtune.data.registry import load_source
    from medtune.data.rejects import Rejects
    from medtune.data.spec import SourceConfig
    from transformers import AutoTokenizer

    path = tmp_path / "big.txt"
    path.write_text("".join(f"Line {i} of a long corpus about rivers and towns in spring.\n" for i in range(3000)))
    evals = load_source(SourceConfig(adapter="pubmedqa", path=str(pubmedqa_test(tmp_path))), None, Rejects())
    screen = Screen(DecontamConfig(), [("pubmedqa_test", evals)], drop=True)  # type: ignore[list-item]
    read = 0
    real = rows.iter_lines

    def counting(p: Path):  # type: ignore[no-untyped-def]
        nonlocal read
        for item in real(p):
            read += 1
            yield item

    rows.iter_lines = counting  # type: ignore[assignment]
    try:
        class Bar:
            def update(self, k: int) -> None: ...

        cache = stream_replay(SourceConfig(adapter="text", path=str(path), max_tokens=200), tmp_path, Rejects(),
                              AutoTokenizer.from_pretrained(str(tiny_llama)), tmp_path / "c.ids", Bar(), screen)
    finally:
        rows.iter_lines = real  # type: ignore[assignment]
    assert int(cache.offsets[-1]) == 200 and 0 < read < 3000 // 4
    assert 0 < screen.report.sources["text"].checked <= read
    question = words("Do short walks after meals lower glucose more than one long walk? yes no maybe")
    assert len(screen.keys) == (len(CONTEXT_WORDS) - 12) + (len(question) - 12)  # the evaluation n-grams only
